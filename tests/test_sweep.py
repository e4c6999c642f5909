"""End-to-end sweeps on real local Ray (2 CPUs) with a real MLflow sqlite store, tiny model, tiny budgets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.config import load_sweep_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny-test.yaml"


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _overrides(tmp_path: Path, **extra) -> dict:
    return {"output_dir": str(tmp_path / "runs"), "model.cache_dir": str(tmp_path / "cache"), "layers": [0, 2], **extra}


def _trial_runs(sweep_dir: Path, experiment: str = "layersweep"):
    client = MlflowClient(tracking_uri=f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("layersweep.kind") == "sweep"]
    children = {r.data.tags["layersweep.trial"]: r for r in runs if "layersweep.trial" in r.data.tags}
    return client, parent, children


def test_sweep_end_to_end_artifacts_and_mlflow_agree(local_ray, tmp_path):
    from orchestrator.driver import run_sweep
    from orchestrator.tracking import TUNE_BOOKKEEPING
    from workers.base_model import resolve_model_dir

    cfg = load_sweep_config(TINY, _overrides(tmp_path))
    table = run_sweep(cfg, emit=lambda line: None, include_dashboard=False)
    sweep_dir = tmp_path / "runs" / "tiny-test"
    assert sorted(table["trial"]) == ["base-s0", "full-s0", "layer00-s0", "layer02-s0"]
    assert (table["status"] == "done").all()
    stored = pd.read_parquet(sweep_dir / "results.parquet")
    assert stored["score"].tolist() == table["score"].tolist()
    for name in ("ranking.md", "ranking.csv", "contribution.png"):
        assert (sweep_dir / name).stat().st_size > 0
    ranking = pd.read_csv(sweep_dir / "ranking.csv")
    assert sorted(ranking["layer"].tolist()) == [0, 2]

    client, parent, children = _trial_runs(sweep_dir)
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    artifact_names = {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert {"results.parquet", "ranking.md", "ranking.csv", "contribution.png"} <= artifact_names
    assert set(children) == set(table["trial"])
    for _, row in table.iterrows():
        run = children[row["trial"]]
        assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert run.data.metrics["final_score"] == pytest.approx(row["score"])
        assert run.data.tags["trainable_checksum"] == row["trainable_checksum"]
        history = client.get_metric_history(run.info.run_id, "reward_mean")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, row["steps"] + 1))
        assert run.data.params["kind"] == row["kind"] and run.data.params["steps"] == ("0" if row["kind"] == "base" else "2")
        assert run.data.params.get("lr") == {"base": None, "full": str(cfg.optim.lr_full)}.get(row["kind"], str(cfg.optim.lr_layers))
        assert not TUNE_BOOKKEEPING & set(run.data.metrics)  # pid, timestamps, iteration counters stay out
        assert {"metrics.jsonl", "score.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    plan = json.loads((sweep_dir / "plan.json").read_text())
    assert parent[0].data.tags["resolved.task_digest"] == plan["resolved"]["task_digest"] and len(plan["resolved"]["task_digest"]) == 64
    assert parent[0].data.tags["resolved.model_dir"] == str(resolve_model_dir(cfg.trial_config()))
    # the base trial trains nothing; layer trials train one layer's tensors only
    params = dict(zip(table["trial"], table["trainable_parameters"]))
    assert params["base-s0"] == 0 and 0 < params["layer00-s0"] < params["full-s0"]


def test_trial_killed_at_a_step_resumes_from_its_checkpoint(local_ray, tmp_path):
    from orchestrator.driver import run_sweep

    cfg = load_sweep_config(
        TINY, _overrides(tmp_path, layers=[1], include_base=False, include_full=False, fail_at_step=3, checkpoint_every=2, **{"budget.steps": 5})
    )
    table = run_sweep(cfg, emit=lambda line: None, include_dashboard=False)
    sweep_dir = tmp_path / "runs" / "tiny-test"
    assert table["status"].tolist() == ["done"]
    trial_dir = sweep_dir / "trials" / "layer01-s0"
    assert (trial_dir / "fault_injected_at_3").exists()  # the process really died at step 3
    steps = [json.loads(line)["step"] for line in (trial_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    client, _, children = _trial_runs(sweep_dir)
    history = client.get_metric_history(children["layer01-s0"].info.run_id, "reward_mean")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]


def _run_cli(args: list[str], env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], env=env, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _kill_ray_under(ray_tmp: str) -> None:
    """Kill only the Ray processes of this test's cluster (their command lines name its temp dir)."""
    subprocess.run(["pkill", "-9", "-f", ray_tmp], capture_output=True, timeout=30)


def _resume_to_the_end(sweep_dir: Path, env: dict, ray_tmp: str) -> pd.DataFrame:
    """`layersweep resume` on the sweep, which must exit 0; its results table."""
    resumed = _run_cli(["resume", str(sweep_dir), "--no-dashboard"], env)
    try:
        output, _ = resumed.communicate(timeout=400)
    finally:
        _kill_ray_under(ray_tmp)
    assert resumed.returncode == 0, output[-3000:]
    return pd.read_parquet(sweep_dir / "results.parquet")


def _ctrl_c(driver: subprocess.Popen, ray_tmp: str) -> str:
    """SIGINT to the driver, which must end by it (after Tune saved the sweep's state); its output."""
    driver.send_signal(signal.SIGINT)
    try:
        output, _ = driver.communicate(timeout=120)
    finally:
        _kill_ray_under(ray_tmp)
    assert driver.returncode == -signal.SIGINT, output[-3000:]
    return output


def test_ctrl_c_ends_the_sweep_with_a_resume_hint_and_resume_finishes_it(tmp_path):
    """The first SIGINT lets Tune save its state and stop; the command then says how to continue, exits by SIGINT
    (status 130 in a shell) and writes no results table with unstarted trials in it; `resume` finishes the sweep."""
    ray_tmp = tempfile.mkdtemp(prefix="lsray-", dir="/tmp")
    env = {**os.environ, "LAYERSWEEP_CACHE": str(tmp_path / "cache"), "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmp}
    sets = ["--set", f"output_dir={tmp_path / 'runs'}", "--set", "layers=[0]", "--set", "budget.steps=40",
            "--set", "checkpoint_every=10", "--set", "resources.max_concurrent_trials=1"]
    sweep_dir = tmp_path / "runs" / "tiny-test"
    driver = _run_cli(["run", str(TINY), "--no-dashboard", *sets], env)
    deadline = time.time() + 600
    while time.time() < deadline and not list(sweep_dir.glob("trials/*/metrics.jsonl")):
        time.sleep(0.2)
    output = _ctrl_c(driver, ray_tmp)
    assert output.strip().splitlines()[-1] == f"layersweep: interrupted; Tune saved the sweep's state: `layersweep resume {sweep_dir}` continues it"
    assert not (sweep_dir / "results.parquet").exists()

    table = _resume_to_the_end(sweep_dir, env, ray_tmp)
    assert sorted(table["trial"]) == ["base-s0", "full-s0", "layer00-s0"] and (table["status"] == "done").all()


def test_driver_killed_mid_sweep_then_resume_skips_finished_trials(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="lsray-", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    env = {**os.environ, "LAYERSWEEP_CACHE": str(tmp_path / "cache"), "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmp}
    # One trial at a time in one warm actor; 32 prompts x G=4 a step make each layer trial last seconds, so the
    # three layer trials cannot all finish in the wait below.
    sets = ["--set", f"output_dir={tmp_path / 'runs'}", "--set", "layers=[0,1,2]", "--set", "budget.steps=80",
            "--set", "budget.prompts_per_step=32", "--set", "checkpoint_every=20", "--set", "resources.max_concurrent_trials=1"]
    sweep_dir = tmp_path / "runs" / "tiny-test"
    driver = _run_cli(["run", str(TINY), "--no-dashboard", *sets], env)
    deadline = time.time() + 600  # generous: a loaded CI machine starts Ray and trials slowly
    while time.time() < deadline and len(list(sweep_dir.glob("trials/*/score.json"))) < 2:
        time.sleep(0.2)
    # Trials finished by now must not run again; Tune persists its state every second (TUNE_GLOBAL_CHECKPOINT_S=1),
    # so wait 3 s before the kill. A trial finishing during that wait may legitimately run again.
    finished_before = {p.parent.name: p.stat().st_mtime for p in sweep_dir.glob("trials/*/score.json")}
    time.sleep(3)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    _kill_ray_under(ray_tmp)
    assert finished_before, "no trial finished before the kill; the test would prove nothing"
    assert not (sweep_dir / "results.parquet").exists()

    table = _resume_to_the_end(sweep_dir, env, ray_tmp)
    assert sorted(table["trial"]) == ["base-s0", "full-s0", "layer00-s0", "layer01-s0", "layer02-s0"]
    assert (table["status"] == "done").all()
    for name, mtime in finished_before.items():  # finished trials were not run again
        assert (sweep_dir / "trials" / name / "score.json").stat().st_mtime == mtime
    client, _, children = _trial_runs(sweep_dir)
    for name, run in children.items():
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "reward_mean"))
        expected = [] if name.startswith("base") else list(range(1, 81))
        assert steps == expected, name


def test_a_synchronously_halved_sweep_interrupted_after_a_check_resumes_without_running_its_losers(tmp_path):
    """Three layers race to step 10 and one goes on (reduction factor 100), so at least one loser was paused when it
    lost: Tune stops it without writing that into its experiment state. Ctrl-C right after the check, then
    `resume`: the losers stay stopped at step 10, only the winner and full run on."""
    ray_tmp = tempfile.mkdtemp(prefix="lsray-", dir="/tmp")
    env = {**os.environ, "LAYERSWEEP_CACHE": str(tmp_path / "cache"), "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmp}
    steps, check = 300, 10
    sets = ["--set", f"output_dir={tmp_path / 'runs'}", "--set", "layers=[0,1,2]", "--set", f"budget.steps={steps}",
            "--set", "budget.prompts_per_step=32", "--set", "checkpoint_every=100",
            "--set", f"early_stop={{grace_steps: {check}, reduction_factor: 100, smoothing_steps: 2, synchronous: true}}"]
    sweep_dir = tmp_path / "runs" / "tiny-test"
    driver = _run_cli(["run", str(TINY), "--no-dashboard", *sets], env)
    deadline = time.time() + 600
    while time.time() < deadline and driver.poll() is None and not list(sweep_dir.glob("trials/*/halving_loss.json")):
        time.sleep(0.1)
    assert driver.poll() is None, "the sweep ended before its check; the test would prove nothing"
    _ctrl_c(driver, ray_tmp)

    table = _resume_to_the_end(sweep_dir, env, ray_tmp).set_index("trial")
    layers = table[table["kind"] == "layers"]
    assert sorted(layers["status"]) == ["done", "stopped", "stopped"], layers[["status", "steps"]]
    stopped = layers[layers["status"] == "stopped"]
    assert (stopped["steps"] == check).all() and stopped["score"].isna().all()
    for name in stopped.index:  # not one step past the check, in either run
        assert len((sweep_dir / "trials" / name / "metrics.jsonl").read_text().splitlines()) == check, name
    assert table.loc["full-s0", "status"] == "done" and table.loc["full-s0", "steps"] == steps
    assert f"trial-steps spent {2 * steps + 2 * check} of {4 * steps} " in (sweep_dir / "ranking.md").read_text()
