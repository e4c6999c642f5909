"""Tune callbacks run in the driver: MLflow forwarding and terminal progress.

They are pickled with the Tuner's state (Tune restores them on `layersweep resume`), so they keep only
plain settings and rebuild their clients lazily.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from ray import tune

from orchestrator.report import progress_line
from orchestrator.results import finished_status, results_frame, spec_from_config, trial_dir, trial_row
from orchestrator.tracking import SweepTracker
from workers.config import OptimConfig
from workers.trial_files import METRICS_FILE, SCORE_FILE

log = logging.getLogger(__name__)


def _spec(trial: Any) -> dict[str, Any]:
    return spec_from_config(trial.config).to_dict()


def _name(trial: Any) -> str:
    return spec_from_config(trial.config).name


def trial_params(config: dict[str, Any]) -> dict[str, str]:
    """What a trial's MLflow run shows beside kind / layers / seed: its learning rate and RL steps."""
    spec, trial_config = spec_from_config(config), config["trial"]["trial_config"]
    if spec.kind == "base":
        return {"steps": "0"}
    optim = OptimConfig.model_validate(trial_config["optim"])
    return {"lr": str(optim.lr_for(spec.kind)), "steps": str(trial_config["budget"]["steps"])}


class MlflowForwarder(tune.Callback):
    """Trials' results into their nested MLflow runs. Step metrics are written in batches (`flush_every_s`,
    `SweepTracker.log_step`), and through each trial checkpoint before Tune records it."""

    def __init__(self, tracking_uri: str, experiment: str, sweep_dir: str, flush_every_s: float = 0.0) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_dir = sweep_dir
        self.flush_every_s = flush_every_s
        self._tracker: SweepTracker | None = None
        self._finished: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "experiment": self.experiment, "sweep_dir": self.sweep_dir,
                "flush_every_s": self.flush_every_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    @property
    def tracker(self) -> SweepTracker:
        if self._tracker is None:
            self._tracker = SweepTracker(self.tracking_uri, self.experiment, Path(self.sweep_dir), self.flush_every_s)
        return self._tracker

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        """Before Tune records the checkpoint (it saves its state after its callbacks): a resumed trial restarts
        from it and relogs only the steps after it, so every step up to it must be in MLflow."""
        self.tracker.flush(_name(trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.tracker.flush()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.trial_run(_name(trial), _spec(trial), trial_params(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        name = _name(trial)
        if "reward_mean" in result:
            self.tracker.log_step(name, _spec(trial), result)
        if result.get("done") and "score" in result and name not in self._finished:
            where = trial_dir(Path(self.sweep_dir), name)
            self.tracker.finish_trial(name, _spec(trial), result, files=[where / METRICS_FILE, where / SCORE_FILE])
            self._finished.add(name)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name = _name(trial)
        if name not in self._finished:
            self.tracker.finish_trial(name, _spec(trial), {}, status="FAILED")
            self._finished.add(name)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial that ended without its final result: stopped early by the scheduler."""
        name = _name(trial)
        if name not in self._finished:
            self.tracker.finish_trial(name, _spec(trial), {}, status="KILLED")
            self._finished.add(name)


class ProgressPrinter(tune.Callback):
    """One line per finished or failed trial, and every `every_s` seconds one line with the steps done over all
    trials, trial counts, elapsed time, an ETA and the best layer so far (the CLI passes `print`).

    On `resume` Tune restores this callback without `emit`; it then logs instead of printing.
    """

    def __init__(self, sweep: str, total: int, num_layers: int, steps_per_trial: int = 0, every_s: float = 30.0,
                 emit: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic) -> None:
        self.sweep, self.total, self.num_layers, self.emit = sweep, total, num_layers, emit
        self.steps_per_trial, self.every_s, self.clock = steps_per_trial, every_s, clock
        self.finals: dict[str, dict[str, Any]] = {}
        self.failed: set[str] = set()
        self.stopped: set[str] = set()
        self.steps: dict[str, int] = {}
        """Last step reported by each trial."""
        self.started = self.last_line = clock()

    def __getstate__(self) -> dict[str, Any]:
        return {"sweep": self.sweep, "total": self.total, "num_layers": self.num_layers,
                "steps_per_trial": self.steps_per_trial, "every_s": self.every_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state, emit=log.warning)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = self.clock()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            self.emit(self.periodic_line(trials, now))

    def periodic_line(self, trials: list, now: float) -> str:
        training = sum(spec_from_config(t.config).kind != "base" for t in trials)
        total_steps = training * self.steps_per_trial
        done_steps = min(sum(self.steps.values()), total_steps)
        elapsed = now - self.started
        eta = f"ETA {elapsed * (total_steps - done_steps) / done_steps:.0f} s" if done_steps else "ETA unknown"
        return f"progress: {done_steps}/{total_steps} steps, {elapsed:.0f} s elapsed, {eta} | {self.line(trials)}"

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "step" in result:
            self.steps[_name(trial)] = int(result["step"])
        if result.get("done") and "score" in result:
            self.finals[_name(trial)] = result
            self.emit(f"{_name(trial)} score {result['score']:.3f} | {self.line(trials)}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.failed.add(_name(trial))
        self.emit(f"{_name(trial)} FAILED | {self.line(trials)}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if _name(trial) not in self.finals:
            self.stopped.add(_name(trial))
            self.emit(f"{_name(trial)} stopped early at step {self.steps.get(_name(trial), 0)} | {self.line(trials)}")

    def line(self, trials: list) -> str:
        rows = []
        for trial in trials:
            spec = spec_from_config(trial.config)
            name = spec.name
            if name in self.finals:
                rows.append(trial_row(self.sweep, spec, self.num_layers, self.finals[name], finished_status(self.finals[name])))
            elif name in self.failed:
                rows.append(trial_row(self.sweep, spec, self.num_layers, {}, "failed"))
            elif name in self.stopped:
                rows.append(trial_row(self.sweep, spec, self.num_layers, {}, "stopped"))
            elif trial.status == "RUNNING":
                rows.append(trial_row(self.sweep, spec, self.num_layers, {}, "running"))
        return progress_line(results_frame(rows), total=self.total)
