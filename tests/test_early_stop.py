"""Early-stopped sweeps: ASHA stops weak layer trials only; stopped trials are reported, never ranked."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from orchestrator.config import EarlyStopConfig, load_sweep_config
from orchestrator.early_stop import SIGNAL, layer_scheduler
from orchestrator.results import spec_from_config

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny-test.yaml"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Stand-in trials keep their directories under `trials/` of the working directory: the test's tmp_path."""
    monkeypatch.chdir(tmp_path)


def trial(kind: str, layers: tuple[int, ...], trial_id: str, seed: int = 0) -> SimpleNamespace:
    """What the schedulers read of a Tune trial: its config (spec, trials directory) and last result."""
    config = {"trial": {"spec": {"kind": kind, "layers": list(layers), "seed": seed}}, "trials_dir": "trials"}
    return SimpleNamespace(config=config, trial_id=trial_id, last_result={})


def test_asha_stops_a_weak_layer_trial_but_never_base_or_full():
    scheduler = layer_scheduler(EarlyStopConfig(grace_steps=2, reduction_factor=2), steps=8)
    strong, weak, full, base = trial("layers", (0,), "a"), trial("layers", (1,), "b"), trial("full", (), "f"), trial("base", (), "z")
    for t in (strong, weak, full, base):
        scheduler.on_trial_add(None, t)
    assert scheduler.on_trial_result(None, strong, {"step": 1, SIGNAL: 0.9}) == "CONTINUE"  # before the grace step
    assert scheduler.on_trial_result(None, strong, {"step": 2, SIGNAL: 0.9}) == "CONTINUE"  # first at the rung
    assert scheduler.on_trial_result(None, weak, {"step": 2, SIGNAL: 0.1}) == "STOP"  # below the top half there
    assert scheduler.on_trial_result(None, full, {"step": 2, SIGNAL: 0.0}) == "CONTINUE"  # weaker still, never stopped
    assert scheduler.on_trial_result(None, base, {"step": 2, SIGNAL: 0.0}) == "CONTINUE"


def _early_stopped_tiny_sweep(tmp_path, capsys, early_stop: str) -> Path:
    """The tiny config over seeds 0 and 1, 8 steps, under `early_stop`, on a fresh 2-CPU local Ray; its directory."""
    import ray

    from orchestrator.cli import main

    overrides = ["--set", f"output_dir={tmp_path / 'runs'}", "--set", f"model.cache_dir={tmp_path / 'cache'}",
                 "--set", "seeds=[0,1]", "--set", "budget.steps=8", "--set", "checkpoint_every=4",
                 "--set", f"early_stop={early_stop}"]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code = main(["run", str(TINY), "--no-dashboard", *overrides])
    finally:
        ray.shutdown()
    assert code == 0, capsys.readouterr().err
    return tmp_path / "runs" / "tiny-test"


@pytest.mark.slow
def test_early_stopped_sweep_reports_stopped_trials_and_ranks_only_finished_ones(tmp_path, capsys):
    sweep_dir = _early_stopped_tiny_sweep(tmp_path, capsys, "{grace_steps: 2, reduction_factor: 100, smoothing_steps: 2}")
    table = pd.read_parquet(sweep_dir / "results.parquet")
    references = table[table["kind"] != "layers"]
    assert (references["status"] == "done").all() and (references["steps"] == references["kind"].map({"base": 0, "full": 8})).all()
    layers = table[table["kind"] == "layers"]
    assert set(layers["status"]) <= {"done", "stopped"} and (layers["status"] == "stopped").any()
    stopped = layers[layers["status"] == "stopped"]
    assert stopped["score"].isna().all() and (stopped["steps"] < 8).all() and (stopped["steps"] >= 2).all()
    finished = layers[layers["status"] == "done"]
    assert (finished["steps"] == 8).all() and finished["score"].notna().all()
    ranking = pd.read_csv(sweep_dir / "ranking.csv")
    assert sorted(ranking["layer"]) == sorted(finished["layer"].unique())  # stopped seeds are never ranked
    spent = int(table.loc[table["kind"] != "base", "steps"].sum())
    assert f"trial-steps spent {spent} of {8 * 8} " in (sweep_dir / "ranking.md").read_text()


@pytest.mark.slow
def test_a_synchronously_halved_sweep_finishes_one_layer_per_seed_and_spends_exactly_its_budget(tmp_path, capsys):
    """Three layers a seed, one check at step 2 keeping ceil(3 / 100) = 1: the paused trials wait for their seed's
    last one, the best resumes from its checkpoint. Steps: full 2 x 8, and per seed 3 x 2 + the survivor's 6."""
    sweep_dir = _early_stopped_tiny_sweep(tmp_path, capsys,
                                          "{grace_steps: 2, reduction_factor: 100, smoothing_steps: 2, synchronous: true}")
    table = pd.read_parquet(sweep_dir / "results.parquet")
    layers = table[table["kind"] == "layers"]
    finished = layers[layers["status"] == "done"]
    assert sorted(finished["seed"]) == [0, 1] and (finished["steps"] == 8).all() and finished["score"].notna().all()
    stopped = layers[layers["status"] == "stopped"]
    assert len(stopped) == 4 and (stopped["steps"] == 2).all() and stopped["score"].isna().all()
    assert f"trial-steps spent {2 * 8 + 2 * (3 * 2 + 6)} of {8 * 8} " in (sweep_dir / "ranking.md").read_text()


class _Controller:
    """What the scheduler asks of Tune's controller: the trials, and stopping one (as Tune's stop_trial does, it
    tells the scheduler that a PENDING or PAUSED trial is removed)."""

    def __init__(self, trials, scheduler=None):
        self.trials, self.stopped, self.scheduler = trials, [], scheduler

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        self.stopped.append(trial.trial_id)
        if self.scheduler is not None and trial.status in ("PENDING", "PAUSED"):
            self.scheduler.on_trial_remove(self, trial)
        trial.status = "TERMINATED"


SYNC = EarlyStopConfig(grace_steps=2, reduction_factor=2, synchronous=True)


def _sync_scheduler(trials):
    """The scheduler for a plan of these trials."""
    return layer_scheduler(SYNC, 8, [spec_from_config(t.config) for t in trials])


def _all_running(scheduler, trials) -> _Controller:
    """A controller holding `trials`, each RUNNING and added to `scheduler`, as Tune starts them."""
    controller = _Controller(list(trials), scheduler)
    for t in controller.trials:
        t.status = "RUNNING"
        scheduler.on_trial_add(controller, t)
    return controller


def test_synchronous_halving_waits_for_every_layer_trial_then_keeps_the_best():
    first, second, third, full = (trial("layers", (0,), "a"), trial("layers", (1,), "b"), trial("layers", (2,), "c"),
                                  trial("full", (), "f"))
    scheduler = _sync_scheduler([first, second, third, full])
    assert scheduler.checks == [2, 4]
    controller = _all_running(scheduler, [first, second, third, full])
    assert scheduler.on_trial_result(controller, first, {"step": 1, SIGNAL: 0.2}) == "CONTINUE"  # before the check
    assert scheduler.on_trial_result(controller, first, {"step": 2, SIGNAL: 0.2}) == "PAUSE"  # waits for b and c
    first.status = "PAUSED"
    assert scheduler.on_trial_result(controller, full, {"step": 2, SIGNAL: 0.0}) == "CONTINUE"  # never waits
    assert scheduler.choose_trial_to_run(controller) is None  # a is still waiting
    assert scheduler.on_trial_result(controller, second, {"step": 2, SIGNAL: 0.9}) == "PAUSE"
    second.status = "PAUSED"
    # the last one to arrive is the weakest: ceil(3 / 2) = 2 go on (b, then a), c stops, nothing else is stopped
    assert scheduler.on_trial_result(controller, third, {"step": 2, SIGNAL: 0.1}) == "STOP"
    assert controller.stopped == []
    assert scheduler.choose_trial_to_run(controller) is first
    first.status = "RUNNING"
    assert scheduler.choose_trial_to_run(controller) is second
    second.status = "RUNNING"
    # at the next check, the later arrival wins: the paused earlier one is stopped
    assert scheduler.on_trial_result(controller, first, {"step": 4, SIGNAL: 0.3}) == "PAUSE"
    first.status = "PAUSED"
    assert scheduler.on_trial_result(controller, second, {"step": 4, SIGNAL: 0.8}) == "CONTINUE"
    assert controller.stopped == ["a"] and scheduler.choose_trial_to_run(controller) is None
    assert scheduler.on_trial_result(controller, second, {"step": 6, SIGNAL: 0.8}) == "CONTINUE"  # past the last check


def test_a_trial_that_fails_leaves_the_race_and_releases_the_waiting_ones():
    waiting, failing = trial("layers", (0,), "a"), trial("layers", (1,), "b")
    scheduler = _sync_scheduler([waiting, failing])
    controller = _all_running(scheduler, [waiting, failing])
    assert scheduler.on_trial_result(controller, waiting, {"step": 2, SIGNAL: 0.2}) == "PAUSE"
    waiting.status = "PAUSED"
    failing.status = "ERROR"
    scheduler.on_trial_error(controller, failing)
    assert scheduler.choose_trial_to_run(controller) is waiting and controller.stopped == []


def test_each_seed_races_on_its_own():
    seed0 = [trial("layers", (0,), "a0"), trial("layers", (1,), "b0")]
    seed1 = [trial("layers", (0,), "a1", seed=1), trial("layers", (1,), "b1", seed=1)]
    scheduler = _sync_scheduler(seed0 + seed1)
    controller = _all_running(scheduler, seed0 + seed1)
    assert scheduler.on_trial_result(controller, seed0[0], {"step": 2, SIGNAL: 0.9}) == "PAUSE"
    seed0[0].status = "PAUSED"
    # seed 0's race is complete without seed 1's trials, and its weaker layer stops however seed 1 is doing
    assert scheduler.on_trial_result(controller, seed0[1], {"step": 2, SIGNAL: 0.1}) == "STOP"
    assert scheduler.choose_trial_to_run(controller) is seed0[0]
    assert scheduler.on_trial_result(controller, seed1[0], {"step": 2, SIGNAL: 0.0}) == "PAUSE"
    seed1[0].status = "PAUSED"
    assert scheduler.on_trial_result(controller, seed1[1], {"step": 2, SIGNAL: 0.5}) == "CONTINUE"
    assert controller.stopped == ["a1"]


def test_a_check_waits_for_a_planned_trial_tune_has_not_created_yet():
    """Tune may create trials lazily: the first trial at a check waits for its seed's planned ones all the same."""
    created, later = trial("layers", (0,), "a"), trial("layers", (1,), "b")
    scheduler = _sync_scheduler([created, later])
    controller = _Controller([created])
    created.status = "RUNNING"
    scheduler.on_trial_add(controller, created)
    assert scheduler.on_trial_result(controller, created, {"step": 2, SIGNAL: 0.9}) == "PAUSE"
    created.status = "PAUSED"
    controller.trials.append(later)
    later.status = "RUNNING"
    scheduler.on_trial_add(controller, later)
    assert scheduler.on_trial_result(controller, later, {"step": 2, SIGNAL: 0.1}) == "STOP"
    assert scheduler.choose_trial_to_run(controller) is created


def test_synchronous_halving_refuses_a_cap_on_concurrent_trials():
    with pytest.raises(ValueError, match=r"early_stop.synchronous .* resources.max_concurrent_trials=2"):
        load_sweep_config(TINY, {"early_stop": {"synchronous": True}, "resources.max_concurrent_trials": 2})


def test_a_resumed_sweep_neither_waits_for_ended_trials_nor_rechecks_passed_steps():
    """On resume Tune adds every trial again: a trial stopped before is out of the race, and one restored past a
    check (it survived it) goes on without waiting there."""
    stopped, survivor, running = trial("layers", (0,), "a"), trial("layers", (1,), "b"), trial("layers", (2,), "c")
    scheduler = _sync_scheduler([stopped, survivor, running])
    controller = _Controller([stopped, survivor, running])
    stopped.status, survivor.status, running.status = "TERMINATED", "RUNNING", "RUNNING"
    for t in controller.trials:
        scheduler.on_trial_add(controller, t)
    # c waits at step 2 for b only (a ended before the resume) ...
    assert scheduler.on_trial_result(controller, running, {"step": 2, SIGNAL: 0.5}) == "PAUSE"
    running.status = "PAUSED"
    # ... and b, restored at step 3 past that check, is not compared there: c is released, and both go on
    assert scheduler.on_trial_result(controller, survivor, {"step": 3, SIGNAL: 0.1}) == "CONTINUE"
    assert scheduler.choose_trial_to_run(controller) is running and controller.stopped == []


def test_a_loser_still_saving_its_pause_is_stopped_once_the_pause_completes():
    saving, winner = trial("layers", (0,), "a"), trial("layers", (1,), "b")
    scheduler = _sync_scheduler([saving, winner])
    controller = _all_running(scheduler, [saving, winner])
    assert scheduler.on_trial_result(controller, saving, {"step": 2, SIGNAL: 0.1}) == "PAUSE"
    saving.is_saving = True  # Tune is still writing the pause's checkpoint
    assert scheduler.on_trial_result(controller, winner, {"step": 2, SIGNAL: 0.9}) == "CONTINUE"
    assert controller.stopped == [] and scheduler.choose_trial_to_run(controller) is None
    saving.status, saving.is_saving = "PAUSED", False
    assert scheduler.choose_trial_to_run(controller) is None and controller.stopped == ["a"]


def _lose_at_the_first_check(scheduler, loser, winner) -> _Controller:
    """Both reach step 2; `loser` pauses there first, then loses to `winner` and is stopped once paused."""
    controller = _all_running(scheduler, [loser, winner])
    assert scheduler.on_trial_result(controller, loser, {"step": 2, SIGNAL: 0.1}) == "PAUSE"
    loser.status = "PAUSED"
    assert scheduler.on_trial_result(controller, winner, {"step": 2, SIGNAL: 0.9}) == "CONTINUE"
    assert scheduler.choose_trial_to_run(controller) is None and controller.stopped == ["a"]
    return controller


def test_a_resumed_sweep_stops_a_trial_that_had_lost_at_a_check_before_it_runs_again():
    """Tune's experiment state may still hold a loser stopped while paused as unfinished, so `resume` requeues it
    (PENDING) with the rest; the scheduler Tune restores is the one from before the sweep ran, and its loss record
    is what stops it again."""
    loser, winner = trial("layers", (0,), "a"), trial("layers", (1,), "b")
    _lose_at_the_first_check(_sync_scheduler([loser, winner]), loser, winner)
    assert (Path("trials") / "layer00-s0" / "halving_loss.json").exists()

    loser.last_result, winner.last_result = {"step": 2}, {"step": 5}
    loser.status = winner.status = "PENDING"
    restored = _sync_scheduler([loser, winner])
    controller = _Controller([loser, winner], restored)
    for t in controller.trials:
        restored.on_trial_add(controller, t)
    assert restored.choose_trial_to_run(controller) is winner
    assert controller.stopped == ["a"] and loser.status == "TERMINATED"
    winner.status = "RUNNING"  # restored past the check: it goes on, waiting for nobody
    assert restored.on_trial_result(controller, winner, {"step": 6, SIGNAL: 0.9}) == "CONTINUE"


def test_a_fresh_sweep_ignores_a_loss_record_an_earlier_sweep_left_in_its_directory():
    loser, winner = trial("layers", (0,), "a"), trial("layers", (1,), "b")
    _lose_at_the_first_check(_sync_scheduler([loser, winner]), loser, winner)

    record = Path("trials") / "layer00-s0" / "halving_loss.json"
    assert record.exists()
    # A new Tuner: the same trial names, new Tune trial ids. Even a trial that has reported past the old check step
    # (a hard-killed fresh sweep, resumed) is not the trial that lost there.
    again, other = trial("layers", (0,), "a2"), trial("layers", (1,), "b2")
    again.status, other.status, again.last_result = "PENDING", "PENDING", {"step": 3}
    scheduler = _sync_scheduler([again, other])
    controller = _Controller([again, other], scheduler)
    for t in controller.trials:
        scheduler.on_trial_add(controller, t)
    assert scheduler.choose_trial_to_run(controller) is again and controller.stopped == []
    assert not record.exists()
