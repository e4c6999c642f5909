"""A real multi-node Ray cluster on loopback: `ray start --head` plus two worker nodes (each with its own custom
resource, so placement is visible), a real `mlflow server`, and sweeps submitted with `ray job submit`.

Everything started here is stopped here, by process group (every node runs `ray start --block` in its own
session, so its raylet, GCS and workers die with it). Budgets are small: the whole module takes minutes. The
dashboard, job API and MLflow listen on 127.0.0.1; Ray itself registers the nodes under the host's own address
(it resolves a loopback node address to it), which never leaves this machine either.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 300
JOB_TIMEOUT_S = 900


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never the same one twice in this module (Ray refuses duplicate assignments)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def wait_for(condition, timeout_s: float, what: str, every_s: float = 1.0):
    deadline = time.time() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.time() < deadline, f"{what} did not happen within {timeout_s:.0f} s"
        time.sleep(every_s)


class LoopbackCluster:
    """Head (no CPUs: trials must go to the workers) and named worker nodes, all on 127.0.0.1."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        # token auth off: the dashboard's job and state APIs answer this test's plain HTTP calls (loopback only)
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}"}
        self.processes: dict[str, subprocess.Popen] = {}
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="lsray-", dir="/tmp"))
        """Ray's temp dirs: short, because Ray's unix socket paths under them must stay below 108 bytes."""
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str]) -> None:
        ports = ["--node-manager-port", "--object-manager-port", "--metrics-export-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port"]
        argv = [str(BIN / "ray"), "start", "--block", "--object-store-memory", str(200 * 2**20),
                "--disable-usage-stats", *[part for flag in ports for part in (flag, str(free_port()))], *args]
        log = open(self.tmp / f"{name}.log", "w")
        self.processes[name] = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        self._start("head", ["--head", "--port", str(self.gcs_port), "--num-cpus", "0", "--include-dashboard", "true",
                             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                             "--ray-client-server-port", str(free_port()), "--temp-dir", str(self.ray_tmp / "head")])
        wait_for(self._dashboard_up, START_TIMEOUT_S, "the head's dashboard")
        for name in ("node_a", "node_b"):  # one at a time: two `ray start` at once on one host can stall each other
            # each node its own temp dir, as on separate machines: a shared one would let a worker node's runtime-env
            # GC delete the job's working dir under the driver on the head
            self._start(name, ["--address", f"127.0.0.1:{self.gcs_port}", "--num-cpus", "1", "--resources", json.dumps({name: 1}),
                               "--temp-dir", str(self.ray_tmp / name)])
            wait_for(lambda: self.alive() and name in self.node_ids(), START_TIMEOUT_S, f"worker {name} joining")

    def alive(self) -> bool:
        for name, process in self.processes.items():
            assert process.poll() is None, f"ray node {name} exited: {(self.tmp / f'{name}.log').read_text()[-2000:]}"
        return True

    def _dashboard_up(self) -> bool:
        self.alive()
        try:
            return requests.get(f"{self.dashboard}/api/version", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def node_ids(self) -> dict[str, str]:
        """worker name -> Ray node id, for alive nodes, from the dashboard's state API."""
        from ray.util.state import list_nodes

        nodes = list_nodes(address=self.dashboard, filters=[("state", "=", "ALIVE")], detail=True, raise_on_missing_output=False)
        return {name: node.node_id for node in nodes for name in ("node_a", "node_b") if name in node.resources_total}

    def kill(self, name: str) -> None:
        """SIGKILL the node: its process group (ray start, raylet, agents) and every other process whose command line
        names the node's own temp dir (its worker processes), so no trial of that node runs on after the raylet."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        marker = str(self.ray_tmp / name).encode()
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue

    def stop(self) -> None:
        for name in list(self.processes):
            process = self.processes.pop(name)
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    ray_cluster = LoopbackCluster(tmp)
    mlflow_port = free_port()
    mlflow_server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--artifacts-destination",
         str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
        stdout=open(tmp / "mlflow.log", "w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp)
    try:
        ray_cluster.start()
        uri = f"http://127.0.0.1:{mlflow_port}"
        wait_for(lambda: _health(uri, mlflow_server, tmp), START_TIMEOUT_S, "the MLflow server")
        yield ray_cluster, uri, tmp
    finally:
        ray_cluster.stop()
        os.killpg(mlflow_server.pid, signal.SIGTERM)
        mlflow_server.wait(timeout=60)


def _health(uri: str, server: subprocess.Popen, tmp: Path) -> bool:
    assert server.poll() is None, f"mlflow server exited: {(tmp / 'mlflow.log').read_text()[-2000:]}"
    try:
        return requests.get(f"{uri}/health", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def submit(cluster: LoopbackCluster, job_id: str, out: Path, uri: str, *overrides: str) -> None:
    """`ray job submit --no-wait` of a tiny sweep from an upload of this checkout (no .venv, no .git)."""
    runtime_env = {
        "excludes": [".venv*", ".git", "runs", "mlruns", "*.png", "tests/fixtures", "tests/kuberay_schemas"],
        "env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "LAYERSWEEP_CACHE": str(out.parent / "cache")},
    }
    sets = [f"output_dir={out}", f"tracking.tracking_uri={uri}", f"tracking.experiment={job_id}", *overrides]
    entrypoint = [sys.executable, "-m", "orchestrator.cli", "-v", "run", "configs/tiny-test.yaml", "--no-dashboard",
                  *[part for item in sets for part in ("--set", item)]]
    command = [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--submission-id", job_id, "--no-wait",
               "--working-dir", str(ROOT), "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint]
    done = subprocess.run(command, env=cluster.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def job_status(cluster: LoopbackCluster, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return str(JobSubmissionClient(cluster.dashboard).get_job_status(job_id).value)


def wait_for_job(cluster: LoopbackCluster, job_id: str) -> str:
    return wait_for(lambda: (s := job_status(cluster, job_id)) in ("SUCCEEDED", "FAILED", "STOPPED") and s,
                    JOB_TIMEOUT_S, f"job {job_id} ending", every_s=2)


def job_logs(cluster: LoopbackCluster, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.dashboard).get_job_logs(job_id)


def step_history(client: MlflowClient, experiment: str) -> tuple[dict, dict[str, list[int]]]:
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parent = next(r for r in runs if r.data.tags.get("layersweep.kind") == "sweep")
    children = {r.data.tags["layersweep.trial"]: r for r in runs if "layersweep.trial" in r.data.tags}
    history = {name: sorted(m.step for m in client.get_metric_history(run.info.run_id, "reward_mean"))
               for name, run in children.items()}
    return {"parent": parent, "children": children}, history


def test_job_runs_trials_on_both_worker_nodes_and_tracks_them_on_the_mlflow_server(cluster):
    ray_cluster, uri, tmp = cluster
    out = tmp / "runs-placement"
    # Every trial in a new actor: with warm actors (the default) Tune gives a pending trial the first actor that
    # frees up and cancels the one still starting on the other node, so trials lasting seconds can all run on one.
    submit(ray_cluster, "placement", out, uri, "budget.steps=6", "budget.prompts_per_step=64", "rollout.group_size=8",
           "resources.reuse_actors=false")
    status = wait_for_job(ray_cluster, "placement")
    logs = job_logs(ray_cluster, "placement")
    assert status == "SUCCEEDED", logs[-3000:]
    table = pd.read_parquet(out / "tiny-test" / "results.parquet")
    assert sorted(table["trial"]) == ["base-s0", "full-s0", "layer00-s0", "layer01-s0", "layer02-s0"]
    assert (table["status"] == "done").all()
    names = {node: name for name, node in ray_cluster.node_ids().items()}
    placement = {row.trial: names[row.node] for row in table.itertuples()}
    assert set(placement.values()) == {"node_a", "node_b"}, placement  # both workers ran trials (the head has no CPU)
    for name in ("ranking.md", "ranking.csv", "contribution.png", "config.yaml", "plan.json"):
        assert (out / "tiny-test" / name).stat().st_size > 0

    client = MlflowClient(tracking_uri=uri)
    runs, history = step_history(client, "placement")
    assert runs["parent"].info.status == "FINISHED" and set(runs["children"]) == set(table["trial"])
    for row in table.itertuples():
        child = runs["children"][row.trial]
        assert child.data.tags["mlflow.parentRunId"] == runs["parent"].info.run_id
        assert child.data.tags["node"] == row.node
        assert history[row.trial] == list(range(1, row.steps + 1))
    print("placement:", placement)


def test_losing_a_worker_node_mid_sweep_resumes_its_trial_and_logs_every_step_once(cluster):
    ray_cluster, uri, tmp = cluster
    out = tmp / "runs-node-loss"
    steps = 40
    # 64 prompts x G = 8 per step: a tiny-model trial then lasts tens of seconds, not one, so a trial is still
    # running on node_a when it is killed
    submit(ray_cluster, "node-loss", out, uri, f"budget.steps={steps}", "checkpoint_every=4", "max_failures=3",
           "include_base=false", "layers=[0,1]", "budget.prompts_per_step=64", "rollout.group_size=8")
    trials_dir = out / "tiny-test" / "trials"

    def both_running_trials_past_step_8() -> bool:
        """One trial per worker node runs at a time; once both passed step 8, the one on node_a has a checkpoint
        to resume from (under load the second trial can start well after the first)."""
        logs = list(trials_dir.glob("*/metrics.jsonl")) if trials_dir.exists() else []
        return sum(8 <= len(path.read_text().splitlines()) < steps for path in logs) >= 2

    wait_for(both_running_trials_past_step_8, JOB_TIMEOUT_S, "two running trials reaching step 8", every_s=0.2)
    killed_at = time.time()
    ray_cluster.kill("node_a")
    status = wait_for_job(ray_cluster, "node-loss")
    logs = job_logs(ray_cluster, "node-loss")
    assert status == "SUCCEEDED", logs[-3000:]
    table = pd.read_parquet(out / "tiny-test" / "results.parquet")
    assert sorted(table["trial"]) == ["full-s0", "layer00-s0", "layer01-s0"] and (table["status"] == "done").all()
    resumed = table[table["restored_at_step"].notna()]
    assert len(resumed) >= 1, table[["trial", "node", "restored_at_step"]]  # the trial on node_a restarted from a checkpoint
    assert (resumed["restored_at_step"] % 4 == 0).all() and (resumed["restored_at_step"] >= 4).all()
    survivor = ray_cluster.node_ids()["node_b"]
    assert (resumed["node"] == survivor).all()
    _, history = step_history(MlflowClient(tracking_uri=uri), "node-loss")
    assert all(history[trial] == list(range(1, steps + 1)) for trial in table["trial"]), history  # each step exactly once
    for trial in table["trial"]:
        logged = [json.loads(line)["step"] for line in (trials_dir / trial / "metrics.jsonl").read_text().splitlines()]
        assert logged == list(range(1, steps + 1))
    print(f"node loss: resumed {resumed[['trial', 'restored_at_step']].to_dict('records')}; "
          f"job finished {time.time() - killed_at:.0f} s after the kill")


def test_a_failed_full_reference_fails_the_job(cluster):
    ray_cluster, uri, tmp = cluster
    out = tmp / "runs-failing-full"
    # a learning rate that overflows the weights: the full trial's loss turns non-finite at its second step
    submit(ray_cluster, "failing-full", out, uri, "optim.lr_full=1.0e+30", "max_failures=0", "layers=[0]", "budget.steps=3")
    assert wait_for_job(ray_cluster, "failing-full") == "FAILED"
    logs = job_logs(ray_cluster, "failing-full")
    assert "layersweep: error: 1 reference or trained-set trial(s) did not finish (full-s0: " in logs
    table = pd.read_parquet(out / "tiny-test" / "results.parquet")
    assert dict(zip(table["trial"], table["status"])) == {"base-s0": "done", "full-s0": "failed", "layer00-s0": "done"}
    assert "FAILED full-s0: " in logs
