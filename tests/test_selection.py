"""Choosing layers from a sweep's ranking: top-k, explicit lists, a middle block, and their one-line errors."""

from __future__ import annotations

import pandas as pd
import pytest

from orchestrator.aggregate import summarize
from orchestrator.selection import parse_layer_list, select_listed, select_middle_block, select_top_k


def table(layer_scores: dict[int, list[float]], base: float = 0.4, full: float | None = 0.8, eval_size: int = 400) -> pd.DataFrame:
    """A sweep of 6 layers; layer_scores maps layer -> per-seed scores (seeds 0, 1, ...)."""
    rows = [{"sweep": "s", "trial": "base-s0", "kind": "base", "layer": None, "num_layers": 6, "seed": 0, "score": base,
             "status": "done", "eval_size": eval_size}]
    seeds = max(len(v) for v in layer_scores.values())
    if full is not None:
        rows += [{"sweep": "s", "trial": f"full-s{s}", "kind": "full", "layer": None, "num_layers": 6, "seed": s,
                  "score": full + 0.01 * s, "status": "done", "eval_size": eval_size} for s in range(seeds)]
    for layer, scores in layer_scores.items():
        rows += [{"sweep": "s", "trial": f"layer{layer:02d}-s{s}", "kind": "layers", "layer": layer, "num_layers": 6,
                  "seed": s, "score": score, "status": "done", "eval_size": eval_size} for s, score in enumerate(scores)]
    frame = pd.DataFrame(rows)
    frame["layer"] = frame["layer"].astype("Int64")
    return frame


def test_top_k_takes_the_best_mean_contribution_over_seeds():
    summary = summarize(table({0: [0.5, 0.52], 1: [0.7, 0.72], 2: [0.78, 0.74], 3: [0.6, 0.62], 4: [0.45, 0.47], 5: [0.41, 0.43]}))
    selection = select_top_k(summary, 2)
    assert selection.layers == (1, 2) and selection.label == "top-2"
    assert selection.reasons[0] == "ranked by contribution"
    # layer 2: seed 0 (0.78 - 0.4) / (0.80 - 0.4) = 0.95, seed 1 (0.74 - 0.4) / (0.81 - 0.4) = 0.829; mean 0.890
    assert selection.reasons[1].startswith("layer 2: contribution 0.890 [") and selection.reasons[1].endswith("over 2 seed(s), rank 1")


def test_top_k_says_when_the_cut_is_within_noise_or_a_tie():
    one_seed = summarize(table({0: [0.5], 1: [0.7], 2: [0.69], 3: [0.6], 4: [0.45], 5: [0.41]}))
    noisy = select_top_k(one_seed, 1)
    assert noisy.layers == (1,)
    assert any(r.startswith("within noise: the CI of layers [1] overlaps that of the next layer 2") for r in noisy.reasons)
    tied = select_top_k(summarize(table({0: [0.5], 1: [0.7], 2: [0.7], 3: [0.6], 4: [0.45], 5: [0.41]})), 1)
    assert tied.layers == (1,)  # equal contribution: the lower index is kept, and the note says so
    assert any(r.startswith("tie at the cut: layers 1 and 2 have equal contribution") for r in tied.reasons)


def test_top_k_errors_are_one_line():
    summary = summarize(table({0: [0.5], 1: [0.7], 2: [0.6]}))
    with pytest.raises(ValueError, match=r"^--top-k 4: the sweep ranked only 3 layer\(s\) \(\[1, 2, 0\]\)$"):
        select_top_k(summary, 4)
    with pytest.raises(ValueError, match=r"^--top-k 0: choose at least one layer$"):
        select_top_k(summary, 0)
    without_full = summarize(table({0: [0.5], 1: [0.7]}, full=None))
    with pytest.raises(ValueError, match=r"^--top-k needs the sweep's full-parameter reference.*no finished full trial"):
        select_top_k(without_full, 1)


def test_layer_lists_and_ranges():
    assert parse_layer_list("10-13", 30) == (10, 11, 12, 13)
    assert parse_layer_list("7, 0-2,2", 30) == (0, 1, 2, 7)
    with pytest.raises(ValueError, match=r"--layers '3-1': '3-1' is not a layer index or an ascending range"):
        parse_layer_list("3-1", 30)
    with pytest.raises(ValueError, match=r"--layers '28-31': \[30, 31\] out of range for a 30-layer model \(0-29\)"):
        parse_layer_list("28-31", 30)
    listed = select_listed("1,3", summarize(table({1: [0.7], 3: [0.6]})))
    assert listed.layers == (1, 3) and listed.reasons[0] == "chosen by hand" and len(listed.reasons) == 3


def test_middle_block_is_centred():
    summary = summarize(table({i: [0.5] for i in range(6)}))
    assert select_middle_block(2, summary).layers == (2, 3)
    assert select_middle_block(3, summary).layers == (1, 2, 3)
    with pytest.raises(ValueError, match=r"--middle-block 7: choose between 1 and 6 layers"):
        select_middle_block(7, summary)


def test_subsets_are_aggregated_beside_the_ranking_and_in_the_comparison_table():
    from orchestrator.report import comparison_markdown

    frame = table({0: [0.5, 0.52], 1: [0.7, 0.72]})
    frame = pd.concat([frame, pd.DataFrame([
        {"sweep": "s", "trial": f"set00+01-s{s}", "kind": "subset", "layer": None, "layers": "0+1", "label": "top-2",
         "num_layers": 6, "seed": s, "score": score, "status": "done", "eval_size": 400} for s, score in ((0, 0.84), (1, 0.81))
    ])], ignore_index=True)
    summary = summarize(frame)
    assert summary.ranking == (1, 0)  # the subset is not a candidate layer
    (subset,) = summary.subsets
    # seed 0: (0.84 - 0.4) / (0.80 - 0.4) = 1.1; seed 1: (0.81 - 0.4) / (0.81 - 0.4) = 1.0
    assert (subset.layers, subset.label, subset.n_seeds) == ((0, 1), "top-2", 2)
    assert subset.contribution == pytest.approx(1.05) and subset.mean_score == pytest.approx(0.825)
    lines = comparison_markdown(summary)
    assert [line.split(" | ")[0] for line in lines[5:]] == ["| base", "| full-parameter RL", "| best single layer", "| top-2"]
    assert lines[-1].startswith("| top-2 | 0+1 | 2 | 0.825 | +0.425 [") and "| 1.050 [" in lines[-1]
