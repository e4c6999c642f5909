"""Tune callbacks run in the driver: MLflow forwarding and terminal progress.

They are pickled with the Tuner's state (Tune restores them on `layersweep resume`), so they keep only
plain settings and rebuild their clients lazily.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from ray import tune

from orchestrator.tracking import SweepTracker

log = logging.getLogger(__name__)


def _spec(trial: Any) -> dict[str, Any]:
    return trial.config["trial"]["spec"]


def _name(trial: Any) -> str:
    from workers.spec import TrialSpec

    return TrialSpec.from_dict(_spec(trial)).name


class MlflowForwarder(tune.Callback):
    def __init__(self, tracking_uri: str, experiment: str, sweep_dir: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.sweep_dir = sweep_dir
        self._tracker: SweepTracker | None = None
        self._finished: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "experiment": self.experiment, "sweep_dir": self.sweep_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    @property
    def tracker(self) -> SweepTracker:
        if self._tracker is None:
            self._tracker = SweepTracker(self.tracking_uri, self.experiment, Path(self.sweep_dir))
        return self._tracker

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.trial_run(_name(trial), _spec(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        name = _name(trial)
        if "reward_mean" in result:
            self.tracker.log_step(name, _spec(trial), result)
        if result.get("done") and "score" in result and name not in self._finished:
            self.tracker.finish_trial(name, _spec(trial), result)
            self._finished.add(name)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name = _name(trial)
        if name not in self._finished:
            self.tracker.finish_trial(name, _spec(trial), {}, status="FAILED")
            self._finished.add(name)


class ProgressPrinter(tune.Callback):
    """One line per finished/failed trial: counts and the best layer so far (the CLI passes `print`)."""

    def __init__(self, total: int, emit: Callable[[str], None] = print) -> None:
        self.total = total
        self.emit = emit
        self.scores: dict[str, dict[str, Any]] = {}
        self.failed: set[str] = set()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("done") and "score" in result:
            self.scores[_name(trial)] = {"spec": _spec(trial), "score": result["score"]}
            self.emit(self.line(trials, f"{_name(trial)} score {result['score']:.3f}"))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.failed.add(_name(trial))
        self.emit(self.line(trials, f"{_name(trial)} FAILED"))

    def line(self, trials: list, event: str) -> str:
        running = sum(1 for t in trials if t.status == "RUNNING")
        layer_scores = {n: s for n, s in self.scores.items() if s["spec"]["kind"] == "layers"}
        best = max(layer_scores.items(), key=lambda item: item[1]["score"], default=None)
        best_text = f"best layer so far {best[1]['spec']['layers']} ({best[1]['score']:.3f})" if best else "no layer finished yet"
        return f"[{len(self.scores)}/{self.total} done, {running} running, {len(self.failed)} failed] {event}; {best_text}"
