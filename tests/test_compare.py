"""Cross-sweep rank correlation: identical / reversed rankings, different depths, unresolved sweeps."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from orchestrator.aggregate import summarize
from orchestrator.compare import align, compare_sweeps, comparison_text, plot_comparison, write_comparison


def sweep(name: str, contributions: list[float], base: float = 0.4, full: float = 0.6,
          failed: tuple[int, ...] = ()) -> pd.DataFrame:
    """One-seed sweep whose layer i scores base + c_i * (full - base), so contribution(i) = c_i."""
    rows = [dict(trial="base-s0", kind="base", layer=None, score=base), dict(trial="full-s0", kind="full", layer=None, score=full)]
    rows += [dict(trial=f"layer{i:02d}-s0", kind="layers", layer=i, score=None if i in failed else base + c * (full - base))
             for i, c in enumerate(contributions)]
    df = pd.DataFrame(rows).assign(sweep=name, num_layers=len(contributions), seed=0)
    df["status"] = np.where(df["score"].isna(), "failed", "done")
    df["layer"] = df["layer"].astype("Int64")
    return df


def test_identical_rankings_give_one():
    a = sweep("a", [0.1, 0.5, 0.9, 0.3])
    b = sweep("b", [0.2, 0.6, 1.2, 0.25])  # different values, same order
    row = compare_sweeps([a, b]).iloc[0]
    assert row["spearman_rho"] == pytest.approx(1.0) and row["kendall_tau"] == pytest.approx(1.0)
    assert row["n_points"] == 4 and row["grid"] == "layer"


def test_reversed_rankings_give_minus_one():
    c = [0.1, 0.5, 0.9, 0.3, 0.7]
    row = compare_sweeps([sweep("a", c), sweep("b", [-x for x in c])]).iloc[0]
    assert row["spearman_rho"] == pytest.approx(-1.0) and row["kendall_tau"] == pytest.approx(-1.0)


def test_partial_agreement_matches_scipy():
    x, y = [0.1, 0.5, 0.9, 0.3, 0.7], [0.2, 0.4, 0.8, 0.9, 0.1]
    row = compare_sweeps([sweep("a", x), sweep("b", y)]).iloc[0]
    assert row["spearman_rho"] == pytest.approx(stats.spearmanr(x, y)[0])
    assert row["kendall_tau"] == pytest.approx(stats.kendalltau(x, y)[0])
    assert -1 < row["spearman_rho"] < 1


def test_same_depth_uses_only_layers_finished_in_both():
    a = sweep("a", [0.1, 0.5, 0.9, 0.3], failed=(3,))
    b = sweep("b", [0.2, 0.6, 1.0, 0.0])
    x, y, grid = align(summarize(a), summarize(b))
    assert x == pytest.approx([0.1, 0.5, 0.9]) and y == pytest.approx([0.2, 0.6, 1.0])


def test_different_depths_interpolate_deeper_onto_shallower_grid():
    # deep sweep: contribution = r^2 on 9 layers (r = 0, 1/8, ..., 1); shallow: 5 layers
    deep = sweep("deep", list(np.linspace(0, 1, 9) ** 2))
    shallow = sweep("shallow", [0.0, 0.2, 0.5, 0.6, 0.9])
    x_shallow, x_deep, grid = align(summarize(shallow), summarize(deep))
    assert "L=5" in grid and len(x_shallow) == 5
    assert x_shallow == pytest.approx([0.0, 0.2, 0.5, 0.6, 0.9])
    # r = 0.25, 0.5, 0.75 coincide with deep layers 2, 4, 6: exact values r^2
    assert x_deep == pytest.approx([0.0, 0.0625, 0.25, 0.5625, 1.0])
    row = compare_sweeps([deep, shallow]).iloc[0]
    assert row["spearman_rho"] == pytest.approx(1.0) and row["n_points"] == 5
    assert (row["num_layers_a"], row["num_layers_b"]) == (9, 5)


def test_interpolation_between_layers_and_no_extrapolation():
    # deep L=5 (r = 0, .25, .5, .75, 1) with its last layer failed; shallow L=3 (r = 0, .5, 1)
    deep = sweep("deep", [0.0, 0.4, 0.8, 0.2, 0.5], failed=(4,))
    shallow = sweep("shallow", [0.1, 0.3, 0.9])
    x_deep, x_shallow, _ = align(summarize(deep), summarize(shallow))
    assert x_shallow == pytest.approx([0.1, 0.3])  # r = 1 lies beyond deep's last finished layer (r = 0.75)
    assert x_deep == pytest.approx([0.0, 0.8])
    deep_only_odd = sweep("deep", [0.0, 0.4, 0.8, 0.2, 0.5], failed=(2,))
    x_deep, _, _ = align(summarize(deep_only_odd), summarize(shallow))
    assert x_deep[1] == pytest.approx((0.4 + 0.2) / 2)  # r = 0.5 halfway between r = 0.25 and 0.75


def test_too_few_points_or_constant_vector_gives_nan():
    row = compare_sweeps([sweep("a", [0.5, 0.5, 0.5]), sweep("b", [0.1, 0.2, 0.3])]).iloc[0]
    assert math.isnan(row["spearman_rho"]) and math.isnan(row["kendall_tau"])
    one = compare_sweeps([sweep("a", [0.1, 0.2], failed=(1,)), sweep("b", [0.1, 0.2])]).iloc[0]
    assert one["n_points"] == 1 and math.isnan(one["spearman_rho"])


def test_unresolved_sweep_is_compared_on_deltas_and_flagged():
    flat = sweep("flat", [0.1, 0.5, 0.9, 0.3], full=0.4005)  # gain 0.0005 < absolute floor 0.02
    table = compare_sweeps([sweep("a", [0.1, 0.5, 0.9, 0.3]), flat])
    row = table.iloc[0]
    assert row["basis_a"] == "contribution" and row["basis_b"] == "delta"
    assert row["spearman_rho"] == pytest.approx(1.0)
    assert "not resolved" in comparison_text(table)


def test_three_sweeps_give_three_pairs_and_unique_labels():
    table = compare_sweeps([sweep("x", [0.1, 0.2, 0.3]), sweep("x", [0.3, 0.2, 0.1]), sweep("y", [0.1, 0.3, 0.2])])
    assert len(table) == 3
    assert list(zip(table["sweep_a"], table["sweep_b"])) == [("x#0", "x#1"), ("x#0", "y"), ("x#1", "y")]
    assert table.iloc[0]["spearman_rho"] == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        compare_sweeps([sweep("x", [0.1, 0.2])])


def test_comparison_files(tmp_path):
    table, files = write_comparison([sweep("a", [0.1, 0.5, 0.9, 0.3]), sweep("b", list(np.linspace(0, 1, 8)))], tmp_path)
    assert pd.read_csv(files["comparison_csv"]).shape[0] == 1 == len(table)
    data = files["comparison_png"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert plot_comparison([summarize(sweep("a", [0.1, 0.2, 0.3]))], tmp_path / "one.png").stat().st_size > 0
