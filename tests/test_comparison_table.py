"""benchmarks/comparison_table.py, table.py's multi-seed bookkeeping: how per-seed results become one row and one
top-1 layer, and how a pruned sweep is judged against the exhaustive one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

MODULE = Path(__file__).resolve().parent.parent / "benchmarks" / "comparison_table.py"


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("comparison_table", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_merge_seeds_means_scores_and_sums_steps(table):
    merged = table.merge_seeds([
        {"trial": "1", "seed": 0, "score": 0.60, "step_s": 0.10, "steps": 100},
        {"trial": "1", "seed": 1, "score": 0.70, "step_s": 0.30, "steps": 100},
        {"trial": "1", "seed": 2, "score": None, "step_s": 0.20, "steps": 40},  # early-stopped: no score
    ])
    assert merged["score"] == pytest.approx(0.65)
    assert merged["step_s"] == pytest.approx(0.20)
    assert merged["steps"] == 240
    assert merged["scores"] == {0: 0.60, 1: 0.70, 2: None}


def test_top1_is_taken_on_the_mean_not_on_one_seed(table):
    # Seed 0 alone puts layer 0 first (0.655 vs 0.650); over both seeds layer 1 leads (0.640 vs 0.600).
    per_seed = [
        {"trial": "base", "seed": 0, "score": 0.44}, {"trial": "base", "seed": 1, "score": 0.44},
        {"trial": "0", "seed": 0, "score": 0.655}, {"trial": "0", "seed": 1, "score": 0.545},
        {"trial": "1", "seed": 0, "score": 0.650}, {"trial": "1", "seed": 1, "score": 0.630},
        {"trial": "2", "seed": 0, "score": None}, {"trial": "2", "seed": 1, "score": None},
    ]
    results = table.by_trial(per_seed)
    assert table.top1(results) == "1 (0.640)"
    stopped_once = table.by_trial([*per_seed[:4], {"trial": "1", "seed": 0, "score": 0.650}, {"trial": "1", "seed": 1, "score": None}])
    assert table.top1(stopped_once) == "1 (0.650, 1 of 2 seeds)"
    assert table.top1_per_seed(results) == "0 / 1"
    assert results["2"]["score"] is None


def test_best_layer_ties_go_to_the_lower_layer_and_ignore_references(table):
    assert table.best_layer({"base": 0.9, "full": 0.9, "3": 0.5, "1": 0.5, "2": 0.4}) == "1"
    assert table.best_layer({"base": 0.9, "4": None}) is None


def test_a_pruned_sweep_is_judged_per_seed_against_the_exhaustive_one(table):
    # Exhaustive: layer 1 best in both seeds, 2 layers x 10 steps a seed. Pruned: layer 1 stopped in seed 1.
    exhaustive = table.by_trial([
        {"trial": "0", "seed": 0, "score": 0.5, "steps": 10}, {"trial": "1", "seed": 0, "score": 0.6, "steps": 10},
        {"trial": "0", "seed": 1, "score": 0.5, "steps": 10}, {"trial": "1", "seed": 1, "score": 0.6, "steps": 10},
    ])
    pruned = table.by_trial([
        {"trial": "0", "seed": 0, "score": None, "steps": 4}, {"trial": "1", "seed": 0, "score": 0.6, "steps": 10},
        {"trial": "0", "seed": 1, "score": 0.5, "steps": 10}, {"trial": "1", "seed": 1, "score": None, "steps": 4},
    ])
    assert table.pruning_summary(pruned, exhaustive) == ("exhaustive top-1 found in 1 of 2 seeds, top-3 layers 2 of 4; "
                                                          "trial-steps 28 of 40 (70%)")
    unscored = table.by_trial([{"trial": "0", "seed": 0, "score": None, "steps": 4}])
    assert table.pruning_summary(unscored, unscored).startswith("exhaustive top-1 found in 0 of 1 seeds")
