"""Early-stopped sweeps: successive halving (Ray Tune's ASHA) over the layer trials only.

Every layer trial reports a running signal each step (the moving mean of its training reward); at steps
grace, grace·η, grace·η², … ASHA stops the trials whose signal is below the top 1/η of those that reached
that step. The base evaluation and the full-parameter reference always run to the end: they are the two
ends of the contribution scale. A stopped trial has no held-out score; it is reported as `stopped`, never
ranked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from orchestrator.config import EarlyStopConfig
from orchestrator.results import spec_from_config
from workers.spec import TrialSpec

SIGNAL = "reward_moving_mean"
"""The result key ASHA compares (see workers.runner.TrialRunner.advance)."""
HALVING_LOSS_FILE = "halving_loss.json"
"""In a trial's directory: the check at which synchronous halving stopped the trial, written when it lost there.
A resumed sweep reads it because Tune's own record of the stop can be missing (see LayerTrialsSyncHalving)."""


class LayerTrialsASHA(AsyncHyperBandScheduler):
    """ASHA that never stops base or full-parameter trials (nor trained sets)."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if spec_from_config(trial.config).kind != "layers":
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def layer_scheduler(cfg: EarlyStopConfig, steps: int, specs: Iterable[TrialSpec] = ()) -> "LayerTrialsASHA | LayerTrialsSyncHalving":
    """The sweep's scheduler; `specs`: the planned trials (synchronous halving races each seed's layer trials)."""
    if cfg.synchronous:
        races: dict[int, list[str]] = {}
        for spec in specs:
            if spec.kind == "layers":
                races.setdefault(spec.seed, []).append(spec.name)
        return LayerTrialsSyncHalving(check_steps(cfg.grace_steps, cfg.reduction_factor, steps), cfg.reduction_factor, races)
    return LayerTrialsASHA(time_attr="step", metric=SIGNAL, mode="max", max_t=steps, grace_period=cfg.grace_steps,
                           reduction_factor=cfg.reduction_factor)


def check_steps(grace_steps: int, reduction_factor: float, max_steps: int) -> list[int]:
    """The steps at which trials are compared: grace, grace·η, grace·η², … below max_steps."""
    steps, step = [], float(grace_steps)
    while round(step) < max_steps:
        steps.append(round(step))
        step *= reduction_factor
    return steps


class LayerTrialsSyncHalving(FIFOScheduler):
    """Synchronous successive halving over the layer trials of each seed: a layer trial that reaches a check step
    pauses until every layer trial of its seed still in the race has reached it; then the best ceil(n / η) by the
    running signal go on and the others stop. Layers are compared within a seed (the same prompts each step), so
    every seed keeps its own best layers. Base, full and trained sets never wait and are never stopped. A trial
    that ends or fails leaves the race, so a check never waits on it.

    Each loser's directory gets HALVING_LOSS_FILE when it loses. Ray Tune (2.60) does not write the status of a
    trial stopped while paused into its experiment state (`TuneController._schedule_trial_stop` marks only trials
    with a live actor for the state file), so `layersweep resume` would restore such a loser as unfinished and run
    it to the end; the restored scheduler (Tune pickles it as it was before the sweep ran) stops it again instead."""

    def __init__(self, checks: list[int], reduction_factor: float, races: Mapping[int, Iterable[str]]) -> None:
        """`races`: the names of the planned layer trials of each seed. Tune may create trials lazily (a cap on
        pending trials), so a check waits for every planned trial of the seed, not only those created so far."""
        super().__init__()
        self.checks = checks
        self.reduction_factor = reduction_factor
        self.seed_of: dict[str, int] = {name: seed for seed, names in races.items() for name in names}
        """The seed (the race) of each layer trial, by trial name."""
        self.racing: set[str] = set(self.seed_of)
        """Layer trials not stopped, failed or finished."""
        self.next_check: dict[str, int] = {}
        """Index into `checks` of each layer trial's next check."""
        self.arrived: dict[tuple[int, int], dict[str, float]] = {}
        """Per (seed, check index): the signal of each trial that reached it."""
        self.trials: dict[str, Any] = {}
        self.to_resume: set[str] = set()
        """Paused trials that passed their check and may run again."""
        self.to_stop: set[str] = set()
        """Paused (or pausing) trials that lost at a check, stopped once their pause is complete."""

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        """Also called for every trial of a resumed sweep: one that had ended (stopped here, or finished) is out, and
        one that had lost at a check is stopped again before it runs."""
        name = spec_from_config(trial.config).name
        if name in self.seed_of:
            self.trials[name] = trial
            if trial.status in (Trial.TERMINATED, Trial.ERROR):
                self.racing.discard(name)
            elif _lost_before_resume(trial):
                self.racing.discard(name)
                self.to_stop.add(name)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        trial_id = spec_from_config(trial.config).name
        if trial_id not in self.racing:
            return TrialScheduler.CONTINUE
        index, step, seed = self.next_check.get(trial_id, 0), result.get("step", 0), self.seed_of[trial_id]
        skipped = []
        while index < len(self.checks) and self.checks[index] < step:  # passed before a restore (a resumed sweep)
            skipped.append(index)
            index += 1
        self.next_check[trial_id] = index
        for passed in skipped:  # the others at that check no longer wait for this trial
            self._decide(tune_controller, seed, passed)
        if index >= len(self.checks) or step < self.checks[index]:
            return TrialScheduler.CONTINUE
        self.next_check[trial_id] = index + 1
        self.arrived.setdefault((seed, index), {})[trial_id] = float(result.get(SIGNAL, float("-inf")))
        decision = self._decide(tune_controller, seed, index, current=trial_id)
        return decision if decision is not None else TrialScheduler.PAUSE

    def _decide(self, tune_controller: Any, seed: int, index: int, current: str | None = None) -> str | None:
        """Once every racing trial of `seed` reached check `index`: stop the weak, resume the strong. Returns the
        current trial's action (None: it waits, or it is not among them)."""
        arrived = {t: signal for t, signal in self.arrived.get((seed, index), {}).items() if t in self.racing}
        waiting_for = [t for t in self.racing if self.seed_of[t] == seed and self.next_check.get(t, 0) <= index]
        if waiting_for or not arrived:
            return None
        keep = max(1, math.ceil(len(arrived) / self.reduction_factor))
        ranked = sorted(arrived, key=lambda t: arrived[t], reverse=True)  # a tie keeps the first to arrive
        action = None
        for rank, trial_id in enumerate(ranked):
            good = rank < keep
            if not good:
                self.racing.discard(trial_id)
                _record_loss(self.trials[trial_id], self.checks[index], arrived[trial_id])
            if trial_id == current:
                action = TrialScheduler.CONTINUE if good else TrialScheduler.STOP
            elif good:
                self.to_resume.add(trial_id)
            else:
                self.to_stop.add(trial_id)
        self.arrived.pop((seed, index))
        self._stop_idle_losers(tune_controller)
        return action

    def _stop_idle_losers(self, tune_controller: Any) -> None:
        """Stop each trial that lost at a check once it is idle: once Tune has finished pausing it, or, in a resumed
        sweep, before it starts again (it is PENDING then). Stopped while its pause was still saving, the pause's
        completion would set it PAUSED again: it would end the sweep neither stopped nor done."""
        for name in list(self.to_stop):
            trial = self.trials.get(name)
            if trial is None or trial.status in (Trial.TERMINATED, Trial.ERROR):
                self.to_stop.discard(name)
            elif trial.status in (Trial.PAUSED, Trial.PENDING) and not getattr(trial, "is_saving", False):
                self.to_stop.discard(name)
                tune_controller.stop_trial(trial)

    def _left_the_race(self, tune_controller: Any, trial: Any) -> None:
        name = spec_from_config(trial.config).name
        if name not in self.racing:
            return
        self.racing.discard(name)
        seed = self.seed_of[name]
        for race, index in sorted(self.arrived):
            if race == seed:
                self._decide(tune_controller, seed, index)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._left_the_race(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._left_the_race(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._left_the_race(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        """Pending trials first (in plan order), then paused ones that passed their check; never one still waiting.
        Tune calls this on every turn of its loop, so it is also where losers whose pause has completed stop."""
        self._stop_idle_losers(tune_controller)
        for trial in tune_controller.get_trials():
            if trial.status == Trial.PENDING:
                return trial
        for trial in tune_controller.get_trials():
            name = spec_from_config(trial.config).name
            if trial.status == Trial.PAUSED and name in self.to_resume:
                self.to_resume.discard(name)
                return trial
        return None

    def debug_string(self) -> str:
        return f"Synchronous successive halving over layer trials at steps {self.checks}."


def _loss_record(trial: Any) -> Path:
    """Where HALVING_LOSS_FILE of this Tune trial lives: its layersweep trial directory."""
    return Path(trial.config["trials_dir"]) / spec_from_config(trial.config).name / HALVING_LOSS_FILE


def _lost_before_resume(trial: Any) -> bool:
    """Whether this restored trial had lost at a check: its HALVING_LOSS_FILE names this very Tune trial. Tune keeps
    a trial's id on resume and gives every trial of a new Tuner a new one, so a file that an earlier sweep over the
    same directory left names another trial; it is removed (its check steps may not even be this sweep's)."""
    path = _loss_record(trial)
    if not path.exists():
        return False
    if json.loads(path.read_text()).get("trial_id") == trial.trial_id:
        return True
    path.unlink()
    return False


def _record_loss(trial: Any, check_step: int, signal: float) -> None:
    """Written whole or not at all (a driver killed mid-write leaves no half file for every later resume to trip on)."""
    path = _loss_record(trial)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"trial_id": trial.trial_id, "stopped_at_check_step": check_step, SIGNAL: signal}))
    partial.replace(path)
