"""What a sweep does before its first trial: join or start Ray, and check the inputs beside it.

Starting Ray keeps ~1.4 of 2 cores busy for ~4 s, so the input checks (building the embedded model once,
loading the task's data) and, on a local CPU sweep, the probe run on a background thread meanwhile
(`in_background`, `inputs_while_ray_starts`); the driver module then only waits for their result.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, TypeVar

import pandas as pd
import ray

from orchestrator.config import SweepConfig
from orchestrator.plan import candidate_layers
from orchestrator.probe import run_probe
from orchestrator.resources import check_cluster_fits

T = TypeVar("T")


def start_ray(address: str | None, include_dashboard: bool = True) -> str | None:
    """Connect to (or start) Ray; returns the dashboard URL when a dashboard is up.

    Trial actors start cold (they import torch and transformers): Ray hands an actor only a worker started with
    the actor's runtime env, never one that already ran a task, and Tune gives every trial actor its own env, so
    neither the workers a local Ray prestarts nor warm-up tasks can become trial actors (measured in the raylet
    log; preloading them only spent 6-15 CPU-seconds of a 2-core machine at start-up)."""
    if ray.is_initialized():
        return None
    address = address or os.environ.get("RAY_ADDRESS")
    # Save Tune's experiment state every second (default: >= 10 s), so a driver killed right after a trial
    # finished does not make `layersweep resume` run that trial again.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # lets the local dashboard's /api answer without a token
    if address:
        context = ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)
    else:  # trials' own output (warnings, tracebacks) reaches this driver, hence `ray job logs`
        context = ray.init(include_dashboard=include_dashboard, ignore_reinit_error=True, log_to_driver=True)
    url = getattr(context, "dashboard_url", None)
    return f"http://{url}" if url and not url.startswith("http") else url


def start_checked_ray(cfg: SweepConfig, address: str | None, include_dashboard: bool) -> str | None:
    """Join or start Ray, then check that one trial fits on some node before anything else is spent."""
    dashboard = start_ray(address, include_dashboard)
    check_cluster_fits(cfg.resources)
    return dashboard


def model_num_layers(model_dir: Path | str) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    return int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0))


ProbeOutcome = tuple[pd.DataFrame, dict[str, Any]]
"""The probe's (table, info), as `orchestrator.probe.run_probe` returns them."""


def probe_threads(cfg: SweepConfig) -> int:
    return int(max(1, cfg.resources.cpus_per_trial))


def in_driver_probe_threads(cfg: SweepConfig) -> int:
    """Threads for the probe that runs beside Ray's start: `num_threads` when the config pins it, else every CPU
    this process may use (no trial runs before it ends, and the driver only waits for it once Ray is up; the
    default probe: 2.0 s on 2 threads, 3.1 s on 1, the same table to 6 digits), at least a trial's."""
    if cfg.num_threads:
        return cfg.num_threads
    return max(probe_threads(cfg), usable_cpus())


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a container's limit, which
    the mask does not show); the machine's count where neither is known (macOS)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def probe_runs_in_driver(cfg: SweepConfig, address: str | None) -> bool:
    """Whether the probe runs in this process, while Ray starts, rather than as a Ray task: only where a task would
    run it on this machine's CPUs anyway (this sweep starts its own local Ray, trials use no GPU), and only when
    it samples with HF `generate` (`probe_samples_with_hf`, decided once the model is known). A Ray task's worker
    starts cold and imports the trial stack (~6 s measured on the default sweep, for ~3 s of probing)."""
    starts_own_ray = not (address or os.environ.get("RAY_ADDRESS") or ray.is_initialized())
    return cfg.probe is not None and starts_own_ray and not cfg.resources.gpus_per_trial


@dataclass(frozen=True)
class CheckedInputs:
    resolved: dict[str, str]
    """Model dir, its revision and the task data's digest, as the plan records them."""
    num_layers: int
    candidates: list[int]
    probe: ProbeOutcome | None = None
    """The probe's result when it ran with the checks (`probe_runs_in_driver`)."""


def check_inputs(cfg: SweepConfig) -> CheckedInputs:
    """Build the embedded model once (trials then load it) and check that the task's data loads and is complete
    (a bad row fails here, not minutes into every trial). Needs no Ray, so `run_sweep` runs it while Ray starts."""
    from workers.base_model import check_task_loads, model_revision, resolve_model_dir

    model_dir = resolve_model_dir(cfg.trial_config())
    resolved = {"model_dir": str(model_dir), "model_revision": model_revision(model_dir),
                "task_digest": check_task_loads(cfg.trial_config(), model_dir)}
    num_layers = model_num_layers(model_dir)
    return CheckedInputs(resolved, num_layers, candidate_layers(cfg.layers, num_layers))


def inputs_while_ray_starts(cfg: SweepConfig, with_probe: bool) -> CheckedInputs:
    """What runs on the core that starting Ray leaves idle (measured: ray.init keeps ~1.4 of 2 cores busy for
    ~4 s): the input checks (~3.4 s, mostly importing transformers), importing MLflow's SQL store (~0.6 s),
    which opening the parent run would otherwise wait for, and the probe when `with_probe`."""
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    checked = check_inputs(cfg)
    if not with_probe or not probe_samples_with_hf(cfg, checked.resolved["model_dir"]):
        return checked
    assert cfg.probe is not None
    return replace(checked, probe=run_probe(cfg, checked.candidates, cfg.probe.batches, in_driver_probe_threads(cfg)))


def probe_samples_with_hf(cfg: SweepConfig, model_dir: str) -> bool:
    """Whether the probe's rollouts would use HF `generate` on a CPU, as a CPU trial's would: the in-driver probe
    is only for that engine (a vLLM engine would start inside the driver process and keep its memory there)."""
    from rollout.factory import resolve_engine_name
    from workers.base_model import count_parameters

    return resolve_engine_name(cfg.rollout, count_parameters(model_dir), on_gpu=False) == "hf"


def in_background(work: Callable[[], T]) -> Callable[[], T]:
    """Start `work` on a daemon thread; the returned call waits for its result or re-raises its error. Daemon:
    when the sweep fails first (Ray does not start, a trial does not fit), the process exits without waiting."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # handed to the waiting thread, which raises it
            outcome["error"] = error

    thread = threading.Thread(target=run, name="layersweep-background", daemon=True)
    thread.start()

    def result() -> T:
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    return result
