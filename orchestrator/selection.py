"""Which layers to train together, chosen from a finished sweep: the top-k of its ranking, an explicit list or
range, or a block of consecutive layers in the middle of the stack.

Pure functions over a SweepSummary (no I/O): each returns the layers and the lines that say why, including
where the choice is within noise (a chosen layer's CI overlaps an unchosen one's) or decided by a tie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from orchestrator.aggregate import LayerContribution, SweepSummary


@dataclass(frozen=True)
class LayerSelection:
    layers: tuple[int, ...]
    """Chosen decoder layers, ascending."""
    label: str
    """How they were chosen, e.g. `top-2`, `layers 10-19`, `middle block of 4`."""
    reasons: tuple[str, ...]
    """Human-readable lines: each chosen layer's evidence, ties and CI overlaps at the cut."""


def _value(c: LayerContribution, basis: str) -> float:
    return {"contribution": c.contribution, "delta": c.delta, "score": c.mean_score}[basis]


def _ci(c: LayerContribution, basis: str) -> tuple[float, float]:
    return c.contribution_ci if basis == "contribution" else c.delta_ci if basis == "delta" else (math.nan, math.nan)


def _describe(c: LayerContribution, basis: str) -> str:
    low, high = _ci(c, basis)
    ci = f" [{low:.2f}, {high:.2f}]" if math.isfinite(low) and math.isfinite(high) else ""
    return f"layer {c.layer}: {basis} {_value(c, basis):.3f}{ci} over {c.n_seeds} seed(s), rank {c.rank}"


def select_top_k(summary: SweepSummary, k: int) -> LayerSelection:
    """The k best layers of the sweep's ranking: by mean contribution over seeds when the full-parameter gain is
    resolved, else by mean delta over the base, else (no base) by mean score."""
    if k < 1:
        raise ValueError(f"--top-k {k}: choose at least one layer")
    if math.isnan(summary.full_score):
        raise ValueError("--top-k needs the sweep's full-parameter reference to rank layers by contribution, "
                         "and the sweep has no finished full trial; use --layers or --middle-block instead")
    if k > len(summary.ranking):
        raise ValueError(f"--top-k {k}: the sweep ranked only {len(summary.ranking)} layer(s) "
                         f"({list(summary.ranking)})")
    basis = summary.ranked_by
    by_layer = {c.layer: c for c in summary.layers}
    chosen = [by_layer[layer] for layer in summary.ranking[:k]]
    why = {"contribution": "", "delta": " (the full-parameter gain is within noise, so contributions are not resolved)",
           "score": " (no finished base trial: raw scores, not gains)"}
    reasons = [f"ranked by {basis}{why.get(basis, '')}"]
    reasons += [_describe(c, basis) for c in chosen]
    if k < len(summary.ranking):
        last, first_out = chosen[-1], by_layer[summary.ranking[k]]
        if _value(last, basis) == _value(first_out, basis):
            reasons.append(f"tie at the cut: layers {last.layer} and {first_out.layer} have equal {basis}; "
                           f"the lower index ({last.layer}) was kept")
        out_low, out_high = _ci(first_out, basis)
        overlapping = [c.layer for c in chosen if _ci(c, basis)[0] <= out_high]
        if math.isfinite(out_high) and overlapping:
            reasons.append(f"within noise: the CI of layers {overlapping} overlaps that of the next layer "
                           f"{first_out.layer} ({basis} {_value(first_out, basis):.3f} [{out_low:.2f}, {out_high:.2f}])")
    return LayerSelection(tuple(sorted(c.layer for c in chosen)), f"top-{k}", tuple(reasons))


def parse_layer_list(text: str, num_layers: int) -> tuple[int, ...]:
    """`10-19`, `3,5,7` or a mix (`0-2,7`) -> sorted unique layer indices, checked against the model's depth."""
    layers: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                if low > high:
                    raise ValueError
                layers.update(range(low, high + 1))
            else:
                layers.add(int(part))
        except ValueError:
            raise ValueError(f"--layers {text!r}: {part!r} is not a layer index or an ascending range like 10-19") from None
    bad = sorted(i for i in layers if not 0 <= i < num_layers)
    if bad or not layers:
        raise ValueError(f"--layers {text!r}: {bad or 'no layer'} out of range for a {num_layers}-layer model (0-{num_layers - 1})")
    return tuple(sorted(layers))


def select_listed(text: str, summary: SweepSummary) -> LayerSelection:
    layers = parse_layer_list(text, summary.num_layers)
    by_layer = {c.layer: c for c in summary.layers}
    reasons = ["chosen by hand"] + [_describe(by_layer[i], summary.ranked_by) for i in layers
                                    if i in by_layer and summary.ranked_by != "none"]
    return LayerSelection(layers, f"layers {text}", tuple(reasons))


def select_middle_block(k: int, summary: SweepSummary) -> LayerSelection:
    """k consecutive layers centred on the middle of the stack (the study finds the best layers there)."""
    num_layers = summary.num_layers
    if not 1 <= k <= num_layers:
        raise ValueError(f"--middle-block {k}: choose between 1 and {num_layers} layers of this {num_layers}-layer model")
    start = (num_layers - k) // 2
    layers = tuple(range(start, start + k))
    by_layer = {c.layer: c for c in summary.layers}
    measured = [by_layer[i] for i in layers if i in by_layer]
    reasons = [f"the {k} layers around relative depth 0.5 ({start}-{start + k - 1} of 0-{num_layers - 1})"]
    if summary.ranked_by != "none":
        reasons += [_describe(c, summary.ranked_by) for c in measured]
    return LayerSelection(layers, f"middle block of {k}", tuple(reasons))
