"""Early-stopped sweeps: ASHA stops weak layer trials only; stopped trials are reported, never ranked."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from orchestrator.config import EarlyStopConfig, load_sweep_config
from orchestrator.early_stop import SIGNAL, layer_scheduler

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny-test.yaml"


def trial(kind: str, layers: tuple[int, ...], trial_id: str) -> SimpleNamespace:
    return SimpleNamespace(config={"trial": {"spec": {"kind": kind, "layers": list(layers), "seed": 0}}}, trial_id=trial_id)


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


@pytest.mark.slow
def test_early_stopped_sweep_reports_stopped_trials_and_ranks_only_finished_ones(tmp_path, capsys):
    import ray

    from orchestrator.cli import main

    overrides = ["--set", f"output_dir={tmp_path / 'runs'}", "--set", f"model.cache_dir={tmp_path / 'cache'}",
                 "--set", "seeds=[0,1]", "--set", "budget.steps=8", "--set", "checkpoint_every=4",
                 "--set", "early_stop={grace_steps: 2, reduction_factor: 100, smoothing_steps: 2}"]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code = main(["run", str(TINY), "--no-dashboard", *overrides])
    finally:
        ray.shutdown()
    assert code == 0, capsys.readouterr().err
    sweep_dir = tmp_path / "runs" / "tiny-test"
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
