"""Contribution, CIs, ranking and the noise check, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from orchestrator.aggregate import summarize
from orchestrator.noise import check_noise


def table(base: dict[int, float] | None, full: dict[int, float] | None, layers: dict[int, dict[int, float]],
          num_layers: int = 4, eval_size: int | None = None, extra: list[dict] | None = None) -> pd.DataFrame:
    """Results table in the driver's schema: base/full {seed: score}, layers {layer: {seed: score}}."""
    rows = []
    for kind, scores in (("base", base or {}), ("full", full or {})):
        rows += [dict(trial=f"{kind}-s{s}", kind=kind, layer=None, seed=s, score=v) for s, v in scores.items()]
    for layer, scores in layers.items():
        rows += [dict(trial=f"layer{layer:02d}-s{s}", kind="layers", layer=layer, seed=s, score=v) for s, v in scores.items()]
    rows += extra or []
    df = pd.DataFrame(rows)
    df["sweep"], df["num_layers"], df["steps"], df["wall_seconds"] = "t", num_layers, 10, 1.5
    df["status"] = df.get("status", pd.Series(index=df.index, dtype=object)).fillna("done")
    df["eval_size"] = eval_size
    df["layer"] = df["layer"].astype("Int64")
    return df


def by_layer(summary):
    return {c.layer: c for c in summary.layers}


def test_hand_computed_contributions_and_ranking():
    s = summarize(table({0: 0.4}, {0: 0.6}, {0: {0: 0.5}, 1: {0: 0.45}, 2: {0: 0.62}, 3: {0: 0.35}}, eval_size=500))
    c = by_layer(s)
    assert c[0].contribution == pytest.approx(0.5)
    assert c[2].contribution == pytest.approx(1.1)
    assert c[3].contribution == pytest.approx(-0.25)  # negative contributions are kept
    assert c[0].delta == pytest.approx(0.1)
    assert s.noise.resolved and s.ranked_by == "contribution"
    assert s.ranking == (2, 0, 1, 3)
    assert s.best_layer == 2 and s.best_share == pytest.approx(1.1)
    assert [c[i].rank for i in range(4)] == [2, 3, 1, 4]
    # L=4: relative depths 0, 1/3, 2/3, 1 -> middle = layers 1, 2; ends = layers 0, 3
    assert s.middle_contribution == pytest.approx((0.25 + 1.1) / 2)
    assert s.ends_contribution == pytest.approx((0.5 - 0.25) / 2)
    assert s.base_score == pytest.approx(0.4) and s.full_score == pytest.approx(0.6)


def test_single_seed_ci_uses_binomial_se_of_eval_size():
    s = summarize(table({0: 0.4}, {0: 0.6}, {0: {0: 0.5}}, eval_size=500))
    c = by_layer(s)[0]
    var = lambda p: p * (1 - p) / 500  # noqa: E731
    # delta method: var(c) = (var_x + c^2 var_f + (1 - c)^2 var_b) / gain^2, c = 0.5, gain = 0.2
    half = 1.959964 * math.sqrt((var(0.5) + 0.25 * var(0.6) + 0.25 * var(0.4)) / 0.04)
    assert c.contribution_ci == pytest.approx((0.5 - half, 0.5 + half), rel=1e-5)
    half_delta = 1.959964 * math.sqrt(var(0.5) + var(0.4))
    assert c.delta_ci == pytest.approx((0.1 - half_delta, 0.1 + half_delta), rel=1e-5)
    assert c.n_seeds == 1


def test_single_seed_without_eval_size_has_nan_ci():
    s = summarize(table({0: 0.4}, {0: 0.8}, {0: {0: 0.5}}))
    c = by_layer(s)[0]
    assert c.contribution == pytest.approx(0.25)
    assert all(math.isnan(v) for v in c.contribution_ci)
    assert s.noise.method == "absolute" and s.noise.resolved  # 0.4 > 0.02


def test_three_seeds_t_interval_with_per_seed_base_and_full():
    base = {0: 0.40, 1: 0.42, 2: 0.38}
    full = {0: 0.60, 1: 0.62, 2: 0.60}
    layer = {0: 0.50, 1: 0.47, 2: 0.53}
    s = summarize(table(base, full, {1: layer}, eval_size=500))
    c = by_layer(s)[1]
    per_seed = np.array([(layer[k] - base[k]) / (full[k] - base[k]) for k in range(3)])  # 0.5, 0.25, 0.6818
    assert c.contribution == pytest.approx(per_seed.mean())
    half = stats.t.ppf(0.975, 2) * per_seed.std(ddof=1) / math.sqrt(3)
    assert c.contribution_ci == pytest.approx((per_seed.mean() - half, per_seed.mean() + half))
    assert c.n_seeds == 3 and c.mean_score == pytest.approx(0.5)
    assert s.noise.method == "seeds (paired)"


def test_one_base_serves_every_seed():
    """The planner runs one greedy base eval; per-seed contributions fall back to the mean base."""
    s = summarize(table({0: 0.4}, {0: 0.6, 1: 0.8}, {0: {0: 0.5, 1: 0.5}}))
    c = by_layer(s)[0]
    assert c.contribution == pytest.approx((0.5 + 0.25) / 2)
    assert s.noise.method == "seeds"  # full's seed spread; base has none
    assert s.noise.se == pytest.approx(np.std([0.6, 0.8], ddof=1) / math.sqrt(2))


def test_full_equals_base_gives_nan_contributions_but_deltas():
    s = summarize(table({0: 0.5}, {0: 0.5}, {0: {0: 0.55}, 1: {0: 0.45}}, eval_size=1000))
    assert not s.noise.resolved
    assert "S_full == S_base" in s.noise.message
    assert all(math.isnan(c.contribution) for c in s.layers)
    assert by_layer(s)[0].delta == pytest.approx(0.05)
    assert s.ranked_by == "delta" and s.ranking == (0, 1)
    assert math.isnan(s.best_share)


def test_gain_within_binomial_noise_is_flagged():
    # gain 0.01 on 200 items: SE ~ 0.05, far above
    s = summarize(table({0: 0.50}, {0: 0.51}, {0: {0: 0.52}}, eval_size=200))
    assert not s.noise.resolved and s.noise.method == "binomial"
    assert "within noise" in s.messages[0]
    assert math.isnan(by_layer(s)[0].contribution)
    # the same gain on 1,000,000 items is resolved
    assert summarize(table({0: 0.50}, {0: 0.51}, {0: {0: 0.52}}, eval_size=1_000_000)).noise.resolved


def test_absolute_threshold_is_configurable():
    df = table({0: 0.50}, {0: 0.53}, {0: {0: 0.52}})
    assert summarize(df).noise.resolved  # 0.03 > 0.02
    assert not summarize(df, abs_threshold=0.05).noise.resolved


def test_noise_from_seed_spread():
    noisy = check_noise(pd.Series({0: 0.5, 1: 0.3}), pd.Series({0: 0.6, 1: 0.3}), math.nan)
    assert not noisy.resolved  # diffs 0.1, 0.0 -> gain 0.05, SE 0.05
    assert noisy.se == pytest.approx(0.05)
    assert check_noise(pd.Series({0: 0.5, 1: 0.3}), pd.Series({0: 0.7, 1: 0.5}), math.nan).resolved


def test_missing_base_does_not_crash_and_ranks_by_score():
    s = summarize(table(None, {0: 0.6}, {0: {0: 0.5}, 1: {0: 0.55}}))
    assert any("no finished base" in m for m in s.messages)
    assert math.isnan(s.base_score) and not s.noise.resolved
    assert s.ranked_by == "score" and s.ranking == (1, 0)
    assert all(math.isnan(c.delta) and math.isnan(c.contribution) for c in s.layers)


def test_missing_full_keeps_deltas():
    s = summarize(table({0: 0.4}, None, {0: {0: 0.5}, 1: {0: 0.3}}))
    assert any("no finished full" in m for m in s.messages)
    assert s.ranked_by == "delta" and s.ranking == (0, 1)
    assert by_layer(s)[1].delta == pytest.approx(-0.1)


def test_failed_and_running_trials_are_excluded_and_missing_layers_absent():
    extra = [dict(trial="layer02-s0", kind="layers", layer=2, seed=0, score=None, status="failed"),
             dict(trial="layer03-s0", kind="layers", layer=3, seed=0, score=0.99, status="running"),
             dict(trial="full-s1", kind="full", layer=None, seed=1, score=None, status="failed")]
    s = summarize(table({0: 0.4}, {0: 0.6}, {0: {0: 0.5}}, extra=extra))
    assert [c.layer for c in s.layers] == [0]
    assert s.full_score == pytest.approx(0.6)
    assert s.counts == {"done": 3, "running": 1, "failed": 2, "no_learning": 0, "stopped": 0, "total": 6, "base_seeds": 1, "full_seeds": 1}
    assert any("[2, 3]" in m for m in s.messages)


def test_trials_that_did_not_learn_are_reported_but_never_ranked():
    extra = [dict(trial="layer01-s0", kind="layers", layer=1, seed=0, score=0.9, status="no_learning")]
    s = summarize(table({0: 0.4}, {0: 0.6}, {0: {0: 0.5}}, extra=extra))
    assert s.ranking == (0,) and [c.layer for c in s.layers] == [0]  # 0.9 would have ranked first
    assert s.counts["no_learning"] == 1
    assert "not ranked, no learning signal (all-zero advantages or unchanged weights): layer01-s0" in s.messages


def test_empty_and_layerless_tables():
    empty = summarize(pd.DataFrame())
    assert empty.best_layer is None and empty.layers == () and empty.ranked_by == "none"
    only_refs = summarize(table({0: 0.4}, {0: 0.6}, {}))
    assert only_refs.best_layer is None and any("no finished layer" in m for m in only_refs.messages)


def test_two_sweeps_in_one_table_is_an_error():
    df = pd.concat([table({0: 0.4}, {0: 0.6}, {}), table({0: 0.4}, {0: 0.6}, {}).assign(sweep="other")])
    with pytest.raises(ValueError, match="several sweeps"):
        summarize(df)


def test_ties_broken_by_lower_layer():
    s = summarize(table({0: 0.4}, {0: 0.6}, {3: {0: 0.5}, 1: {0: 0.5}, 2: {0: 0.5}}))
    assert s.ranking == (1, 2, 3)


def test_frame_columns_and_order():
    s = summarize(table({0: 0.4}, {0: 0.6}, {0: {0: 0.45}, 1: {0: 0.55}}))
    frame = s.frame()
    assert list(frame["layer"]) == [1, 0]
    assert {"rank", "layer", "relative_depth", "contribution", "ci_low", "ci_high", "delta"} <= set(frame.columns)
