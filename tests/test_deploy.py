"""deploy/: KubeRay manifests against the CRD schemas in tests/kuberay_schemas (KubeRay v1.7.0, see its README;
$LAYERSWEEP_KUBERAY_SCHEMAS points at another release's), the cross-references between manifests (PVCs, MLflow
Service, shared sweep dir), the Dockerfiles against constraints.txt, and the MLflow server command against the
installed mlflow. No cluster, no Docker: what a real API server adds (CEL rules, admission, the operator's own
checks) is not covered here.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
WORKING_DIR = "/home/ray/layersweep"  # the images' WORKDIR and the Ray containers' workingDir
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}


KUBERAY_SCHEMAS = Path(__file__).resolve().parent / "kuberay_schemas"  # in the repo: every clone runs the checks


def _schema_dir() -> Path:
    """tests/kuberay_schemas, or $LAYERSWEEP_KUBERAY_SCHEMAS to check against another KubeRay release's CRDs."""
    override = os.environ.get("LAYERSWEEP_KUBERAY_SCHEMAS")
    return Path(override) if override else KUBERAY_SCHEMAS


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if match:
            pins[match[1].lower().replace("_", "-")] = match[2]
    return pins


CONSTRAINTS = _pins(ROOT / "constraints.txt")


def _docs(kind: str | None = None) -> list[tuple[Path, dict]]:
    found = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and (kind is None or doc.get("kind") == kind):
                found.append((path, doc))
    return found


def _one(kind: str) -> dict:
    docs = [doc for _, doc in _docs(kind)]
    assert len(docs) == 1, f"expected one {kind} under deploy/, found {len(docs)}"
    return docs[0]


def _cluster_specs() -> list[tuple[str, dict]]:
    specs = [(f"RayCluster {d['metadata']['name']}", d["spec"]) for _, d in _docs("RayCluster")]
    specs += [(f"RayJob {d['metadata']['name']}", d["spec"]["rayClusterSpec"]) for _, d in _docs("RayJob")]
    assert specs, "no RayCluster / RayJob under deploy/"
    return specs


def _pod_specs(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec.get("workerGroupSpecs", [])]
    return [group["template"]["spec"] for group in groups]


# ---------------------------------------------------------------------------------------------- YAML + schemas


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_yaml_file_loads(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path.name} holds no document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path.name}: a document is a {type(doc).__name__}, not a mapping"
        if path.name.startswith("docker-compose"):
            assert "services" in doc, f"{path.name}: no services"
        else:
            assert doc.get("apiVersion") and doc.get("kind"), f"{path.name}: a document without apiVersion/kind"
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), doc["metadata"]


def _closed(schema):
    """Like the API server's strict field validation: an object schema with `properties` accepts no other
    field (jsonschema would allow them), and `nullable: true` admits null."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@functools.lru_cache(maxsize=None)
def _crd(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _validator(kind: str, api_version: str):
    jsonschema = pytest.importorskip("jsonschema")
    path = _schema_dir() / CRD_FILES[kind]
    assert path.is_file(), f"{kind}: KubeRay CRD {path} is missing (tests/kuberay_schemas, or $LAYERSWEEP_KUBERAY_SCHEMAS)"
    crd = _crd(path)
    group, _, version = api_version.partition("/")
    assert group == crd["spec"]["group"], f"{kind}: apiVersion {api_version} is not in group {crd['spec']['group']}"
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    assert version in served, f"{kind}: version {version} is not served (served: {sorted(served)})"
    assert not served[version].get("deprecated"), f"{kind}: {api_version} is deprecated"
    assert "schema" in served[version], f"{kind}: {path} holds no schema for {version} (see tests/kuberay_schemas/trim.py)"
    return jsonschema.Draft7Validator(_closed(served[version]["schema"]["openAPIV3Schema"]))


def _errors(validator, doc) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_kuberay_manifests_match_the_crd_schema(kind):
    docs = _docs(kind)
    assert docs, f"no {kind} manifest under deploy/"
    for path, doc in docs:
        errors = _errors(_validator(kind, doc["apiVersion"]), doc)
        assert not errors, f"{path.name} ({kind} {doc['metadata']['name']}):\n" + "\n".join(errors)


def test_schema_check_rejects_unknown_fields_wrong_types_and_missing_required():
    job = _one("RayJob")
    validator = _validator("RayJob", job["apiVersion"])
    typo = copy.deepcopy(job)
    typo["spec"]["shutdownAfterJobFinish"] = typo["spec"].pop("shutdownAfterJobFinishes")
    assert any("shutdownAfterJobFinish" in e for e in _errors(validator, typo))
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "four"
    assert _errors(validator, wrong_type)
    no_head = copy.deepcopy(job)
    del no_head["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert any("headGroupSpec" in e for e in _errors(validator, no_head))
    bad_container = copy.deepcopy(job)
    bad_container["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    assert _errors(validator, bad_container)


def test_derived_kuberay_names_stay_dns_labels():
    # KubeRay names the head Service <cluster>-head-svc and a RayJob's cluster <job>-<5 chars>.
    for _, doc in _docs("RayCluster"):
        assert len(doc["metadata"]["name"] + "-head-svc") <= 63
    for _, doc in _docs("RayJob"):
        assert len(doc["metadata"]["name"] + "-xxxxx" + "-head-svc") <= 63


# -------------------------------------------------------------------------------------- what the manifests say


def test_rayjob_cluster_is_the_raycluster_shape():
    assert _one("RayJob")["spec"]["rayClusterSpec"] == _one("RayCluster")["spec"], (
        "rayjob-sweep.yaml's rayClusterSpec drifted from raycluster.yaml's spec")


def test_rayjob_lifecycle_fields():
    spec = _one("RayJob")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec.get("backoffLimit", 0) == 0, "a retry would restart the sweep; continue with `layersweep resume`"


def test_ray_versions_equal_the_constraints_pin():
    for name, spec in _cluster_specs():
        assert spec.get("rayVersion") == CONSTRAINTS["ray"], f"{name}: rayVersion {spec.get('rayVersion')}"


def test_ray_clusters_use_token_auth():
    for name, spec in _cluster_specs():
        assert spec.get("authOptions", {}).get("mode") == "token", f"{name}: dashboard/job API open to anyone"


def test_gpu_workers_ask_for_gpus_and_pods_run_as_non_root():
    for name, spec in _cluster_specs():
        workers = spec["workerGroupSpecs"]
        assert workers, f"{name}: no worker group"
        for group in workers:
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert int(limits.get("nvidia.com/gpu", 0)) >= 1, f"{name}/{group['groupName']}: no nvidia.com/gpu limit"
        for pod in _pod_specs(spec):
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0


def _entrypoints() -> list[tuple[str, list[str]]]:
    try:  # runs at collection: a broken file is reported by test_every_yaml_file_loads, not as a collection error
        return [(doc["metadata"]["name"], shlex.split(doc["spec"]["entrypoint"])) for _, doc in _docs("RayJob")]
    except (yaml.YAMLError, KeyError, TypeError):
        return []


@pytest.mark.parametrize("name,argv", _entrypoints(), ids=[n for n, _ in _entrypoints()])
def test_rayjob_entrypoint_runs_an_existing_valid_config(name, argv):
    from orchestrator.cli import build_parser
    from orchestrator.config import load_sweep_config, parse_override

    assert argv[:2] == ["layersweep", "run"], f"{name}: entrypoint {argv}"
    args = build_parser().parse_args(argv[1:])
    assert re.fullmatch(r"configs/[\w.\-]+\.ya?ml", args.config), f"{name}: {args.config} is not a file in configs/"
    if not (ROOT / args.config).exists():
        pytest.skip(f"{args.config} does not exist in configs/ yet: skipped until it lands (entrypoint of RayJob {name})")
    cfg = load_sweep_config(ROOT / args.config, dict(parse_override(text) for text in args.set or []))
    assert cfg.resources.gpus_per_trial > 0, f"{args.config} asks for no GPU but runs on the GPU workers"


def _mounted_claims(pod: dict, path: str) -> set[str]:
    """PVC claim names whose mount covers `path` in the pod's first container."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = set()
    for mount in pod["containers"][0].get("volumeMounts", []):
        if (path + "/").startswith(mount["mountPath"].rstrip("/") + "/"):
            claim = volumes[mount["name"]].get("persistentVolumeClaim", {}).get("claimName")
            if claim:
                claims.add(claim)
    return claims


def test_sweep_output_dir_is_one_shared_claim_in_every_ray_pod():
    claims_rwx = {d["metadata"]["name"] for _, d in _docs("PersistentVolumeClaim") if "ReadWriteMany" in d["spec"]["accessModes"]}
    for _, job in _docs("RayJob"):
        argv = shlex.split(job["spec"]["entrypoint"])
        overrides = dict(value.split("=", 1) for flag, value in zip(argv, argv[1:]) if flag == "--set")
        output_dir = overrides.get("output_dir", "")
        assert output_dir.startswith("/"), f"{job['metadata']['name']}: no absolute --set output_dir in {argv}"
        claims = [_mounted_claims(pod, output_dir) for pod in _pod_specs(job["spec"]["rayClusterSpec"])]
        assert all(c == claims[0] for c in claims) and len(claims[0]) == 1, f"{output_dir} is not on one PVC: {claims}"
        assert claims[0] <= claims_rwx, f"{claims[0]} is not a ReadWriteMany PVC defined under deploy/"


def test_every_referenced_claim_is_defined():
    defined = {d["metadata"]["name"] for _, d in _docs("PersistentVolumeClaim")}
    pods = [pod for _, spec in _cluster_specs() for pod in _pod_specs(spec)]
    pods += [d["spec"]["template"]["spec"] for _, d in _docs("Deployment")]
    volumes = [v for pod in pods for v in pod.get("volumes", [])]
    used = {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v}
    assert used and used <= defined, f"claims used but not defined under deploy/: {used - defined}"


def _mlflow_deployment() -> dict:
    found = [d for _, d in _docs("Deployment") if d["spec"]["template"]["spec"]["containers"][0].get("command", [""])[:1] == ["mlflow"]]
    assert len(found) == 1, "expected one MLflow Deployment"
    return found[0]


def _mlflow_argv_k8s() -> list[str]:
    container = _mlflow_deployment()["spec"]["template"]["spec"]["containers"][0]
    return [*container["command"], *container.get("args", [])]


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _mlflow_argv_compose() -> list[str]:
    command = _compose()["services"]["mlflow"]["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def _option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def test_mlflow_service_matches_deployment_and_the_ray_pods_point_at_it():
    deployment = _mlflow_deployment()
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"].items()
    services = [d for _, d in _docs("Service") if d["spec"]["selector"].items() <= pod_labels]
    assert len(services) == 1, "expected one Service selecting the MLflow pods"
    service = services[0]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels
    port = service["spec"]["ports"][0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    target = named.get(port["targetPort"], port["targetPort"])
    assert str(target) == _option(_mlflow_argv_k8s(), "--port"), "Service targets another port than mlflow listens on"
    patterns = _option(_mlflow_argv_k8s(), "--allowed-hosts").split(",")
    from mlflow.server.security_utils import is_allowed_host_header

    for name, spec in _cluster_specs():
        for pod in _pod_specs(spec):
            env = {e["name"]: e.get("value") for e in pod["containers"][0].get("env", [])}
            uri = urlparse(env.get("MLFLOW_TRACKING_URI", ""))
            expected = ("http", service["metadata"]["name"], port["port"])
            assert (uri.scheme, uri.hostname, uri.port) == expected, f"{name}: MLFLOW_TRACKING_URI {uri.geturl()!r}"
            assert is_allowed_host_header(patterns, uri.netloc), f"mlflow would answer 403 to Host {uri.netloc}"


def test_compose_ray_head_reaches_the_compose_mlflow():
    services = _compose()["services"]
    uri = urlparse(services["ray-head"]["environment"]["MLFLOW_TRACKING_URI"])
    from mlflow.server.security_utils import is_allowed_host_header

    assert uri.hostname == "mlflow" and str(uri.port) == _option(_mlflow_argv_compose(), "--port")
    assert is_allowed_host_header(_option(_mlflow_argv_compose(), "--allowed-hosts").split(","), uri.netloc)
    assert services["ray-head"]["image"] == services["mlflow"]["image"]


# -------------------------------------------------------------------------------------------- MLflow command


@pytest.fixture(scope="module")
def mlflow_server_options() -> set[str]:
    script = Path(sys.executable).with_name("mlflow")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mlflow"]
    help_text = subprocess.run([*command, "server", "--help"], capture_output=True, text=True, timeout=120, check=True).stdout
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", help_text))
    assert "--backend-store-uri" in options, help_text[:500]
    return options


@pytest.mark.parametrize("source", ["mlflow-server.yaml", "docker-compose.yml"])
def test_mlflow_server_flags_exist_in_installed_mlflow(source, mlflow_server_options):
    argv = _mlflow_argv_k8s() if source == "mlflow-server.yaml" else _mlflow_argv_compose()
    assert argv[:2] == ["mlflow", "server"], argv
    flags = {token.split("=", 1)[0] for token in argv[2:] if token.startswith("-")}
    assert flags, argv
    assert not flags - mlflow_server_options, f"{source}: not options of `mlflow server`: {sorted(flags - mlflow_server_options)}"
    assert _option(argv, "--backend-store-uri") == "sqlite:////mlflow/mlflow.db"
    assert _option(argv, "--artifacts-destination") == "/mlflow/artifacts"
    assert _option(argv, "--host") == "0.0.0.0"


def test_mlflow_data_lives_on_the_mlflow_claim():
    pod = _mlflow_deployment()["spec"]["template"]["spec"]
    for flag in ("--backend-store-uri", "--artifacts-destination"):
        path = "/" + _option(_mlflow_argv_k8s(), flag).removeprefix("sqlite:").lstrip("/")
        assert _mounted_claims(pod, path), f"{flag} {path} is not on a PVC: lost when the pod restarts"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_mlflow_server_command_serves_the_in_cluster_host_and_proxies_artifacts(tmp_path):
    """The manifest's own arguments (paths moved under tmp_path, bound to loopback) start a server that answers
    the Host header the Ray pods send, refuses a foreign one, and stores uploaded artifacts."""
    import requests
    from mlflow.tracking import MlflowClient

    port = _free_port()
    argv = [a.replace("/mlflow/", f"{tmp_path}/") for a in _mlflow_argv_k8s()]
    argv[argv.index("--host") + 1], argv[argv.index("--port") + 1] = "127.0.0.1", str(port)
    script = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(script), *argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            assert server.poll() is None, f"mlflow server exited with {server.returncode}"
            try:
                if requests.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.time() < deadline, "mlflow server did not come up in 300 s"
            time.sleep(1)
        cluster_host = urlparse(next(e["value"] for e in _pod_specs(_one("RayCluster")["spec"])[0]["containers"][0]["env"]
                                     if e["name"] == "MLFLOW_TRACKING_URI")).netloc
        search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        assert requests.get(search, headers={"Host": cluster_host}, timeout=10).status_code == 200
        assert requests.get(search, headers={"Host": "attacker.example:5000"}, timeout=10).status_code == 403

        client = MlflowClient(tracking_uri=base)
        run = client.create_run(client.create_experiment("deploy-check"))
        client.log_metric(run.info.run_id, "score", 0.5)
        (tmp_path / "note.txt").write_text("layer 3")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
        assert [p.read_text() for p in (tmp_path / "artifacts").rglob("note.txt")] == ["layer 3"]
        assert (tmp_path / "mlflow.db").exists()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


# ------------------------------------------------------------------------------------------------ Dockerfiles


def _dockerfile(name: str) -> list[str]:
    """Instructions, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / name).read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("name,flavor", [("Dockerfile", "gpu"), ("Dockerfile.cpu", "cpu")])
def test_dockerfile_base_is_the_official_ray_image_of_the_pinned_version(name, flavor):
    froms = [line for line in _dockerfile(name) if line.upper().startswith("FROM ")]
    assert len(froms) == 1, f"{name}: {froms}"
    match = re.fullmatch(r"FROM\s+rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(\w+)", froms[0])
    assert match, f"{name}: {froms[0]} is not rayproject/ray:<version>-py3XX-{flavor}"
    assert match[1] == CONSTRAINTS["ray"], f"{name}: Ray {match[1]} in FROM, ray=={CONSTRAINTS['ray']} in constraints.txt"
    assert match[4] == flavor


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfile_runs_as_non_root_without_secrets_and_copies_every_package(name):
    lines = _dockerfile(name)
    users = [line.split()[1] for line in lines if line.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0"), f"{name}: last USER is {users[-1:] or 'unset'}"
    declared = [line.split(None, 1)[1] for line in lines if re.match(r"(ENV|ARG)\s", line, re.I)]
    names = [key for text in declared for key in re.findall(r"(?:^|\s)([A-Za-z_]\w*)(?==|\s|$)", text)]
    secret = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|CREDENTIALS?)($|_)", re.I)
    assert names and not [n for n in names if secret.search(n)], f"{name}: secret-looking ENV/ARG in {names}"
    assert any(line.startswith("WORKDIR " + WORKING_DIR) for line in lines), f"{name}: WORKDIR is not {WORKING_DIR}"
    packages = yaml.safe_load(re.search(r"include = (\[.*\])", (ROOT / "pyproject.toml").read_text())[1])
    copied = {part.rstrip("/").removeprefix("./") for line in lines if line.startswith("COPY ") for part in line.split()[1:]}
    for package in [p.rstrip("*") for p in packages] + ["configs", "pyproject.toml", "README.md", "constraints.txt"]:
        assert package in copied, f"{name} does not COPY {package}"


def test_cpu_image_installs_the_pinned_cpu_torch_and_the_constraints():
    lines = _dockerfile("Dockerfile.cpu")
    torch_line = next(line for line in lines if line.startswith("RUN ") and "torch==" in line)
    requirement = next(token for token in shlex.split(torch_line, posix=False) if "torch==" in token)
    # the shell's expansion of the requirement, as the build's RUN does it
    shell = subprocess.run(["bash", "-c", f"echo {requirement}"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert shell.stdout.strip() == f"torch=={CONSTRAINTS['torch']}+cpu", shell.stdout
    installs = [line for line in lines if "pip install" in line]
    assert any("-c constraints.txt ." in line for line in installs), "layersweep is not installed under constraints.txt"


def test_setup_script_asks_for_the_image_s_cpu_torch_from_the_image_s_index():
    """scripts/setup.sh installs the same torch X+cpu as Dockerfile.cpu. Its fallback index is the image's default
    TORCH_INDEX_URL, and LAYERSWEEP_TORCH_INDEX overrides it (the Linux lines, evaluated as the script does)."""
    script = [line for line in (ROOT / "scripts" / "setup.sh").read_text().splitlines()
              if line.startswith(("torch_version=", "torch_req=", "torch_index="))]
    assert len(script) == 3, script
    image_index = next(line.split("=", 1)[1] for line in _dockerfile("Dockerfile.cpu") if line.startswith("ARG TORCH_INDEX_URL="))
    env = {k: v for k, v in os.environ.items() if k != "LAYERSWEEP_TORCH_INDEX"}
    for override, index in [(None, image_index), ("https://mirror.example/whl/cpu", "https://mirror.example/whl/cpu")]:
        run_env = env if override is None else {**env, "LAYERSWEEP_TORCH_INDEX": override}
        shell = subprocess.run(["bash", "-euc", "\n".join(script) + '\necho "$torch_req $torch_index"'], cwd=ROOT,
                               env=run_env, capture_output=True, text=True, check=True)
        assert shell.stdout.split() == [f"torch=={CONSTRAINTS['torch']}+cpu", index], shell.stdout


def test_gpu_lock_keeps_the_cpu_stack_anchors_and_the_image_uses_it():
    gpu = _pins(DEPLOY / "constraints-gpu.txt")
    for name in ("ray", "mlflow", "mlflow-skinny", "mlflow-tracing", "transformers", "torch"):
        assert gpu.get(name) == CONSTRAINTS[name], (
            f"constraints-gpu.txt has {name}=={gpu.get(name)}, constraints.txt {CONSTRAINTS[name]}: rerun deploy/lock-gpu.sh")
    assert "vllm" in gpu and "+cpu" not in gpu["torch"]
    lines = _dockerfile("Dockerfile")
    installs = [line for line in lines if "pip install" in line]
    assert installs and all("constraints-gpu.txt" in line for line in installs), installs
    assert any("'.[vllm-gpu]'" in line or '".[vllm-gpu]"' in line for line in installs), "no vllm-gpu extra"
