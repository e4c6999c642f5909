"""Do different sweeps (models, tasks, algorithms, seeds) agree on which layers matter?

For every pair of sweeps: Spearman rho and Kendall tau (scipy.stats) between their per-layer
contribution vectors. Rank correlation is used because contribution scales differ between sweeps
while the question is about the ordering of layers.

Alignment of two sweeps:
- same depth L: pair layer i with layer i (layers finished in both sweeps only);
- different depth: compare on relative depth r = i/(L-1). The points are the shallower sweep's finished
  layers (its own, unmodified values); the deeper sweep is linearly interpolated in r at those points,
  using only its finished layers and never extrapolating past them. Interpolating onto the shallower grid
  (rather than the union of both grids) keeps n = the number of real independent points of the coarser
  sweep, so rho/tau and their p-values are not inflated by made-up points.

Values: a sweep whose gain is not resolved above noise has no contributions; its raw deltas S_i - S_base
(or mean scores without a base) are used instead, which give the same ordering, and `basis_*` says so.
"""

from __future__ import annotations

import logging
import math
import warnings
from itertools import combinations
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from orchestrator.aggregate import SweepSummary, summarize  # noqa: E402
from orchestrator.results import load_results  # noqa: E402

log = logging.getLogger(__name__)

COMPARISON_COLUMNS = ["sweep_a", "sweep_b", "num_layers_a", "num_layers_b", "grid", "n_points", "spearman_rho",
                      "spearman_p", "kendall_tau", "kendall_p", "basis_a", "basis_b", "best_depth_a", "best_depth_b"]


def profile(summary: SweepSummary) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(layers (n,), relative depths (n,), values (n,), basis): the vector a sweep is compared on."""
    column = {"contribution": "contribution", "delta": "delta"}.get(summary.ranked_by, "mean_score")
    rows = [c for c in summary.layers if math.isfinite(getattr(c, column))]
    layers = np.array([c.layer for c in rows], dtype=int)
    depths = np.array([c.relative_depth for c in rows], dtype=float)
    values = np.array([getattr(c, column) for c in rows], dtype=float)
    return layers, depths, values, column


def align(a: SweepSummary, b: SweepSummary) -> tuple[np.ndarray, np.ndarray, str]:
    """Paired value vectors (n,), (n,) for sweeps a and b, and a description of the grid (module docstring)."""
    layers_a, depth_a, value_a, _ = profile(a)
    layers_b, depth_b, value_b, _ = profile(b)
    if a.num_layers == b.num_layers:
        _, ia, ib = np.intersect1d(layers_a, layers_b, return_indices=True)
        return value_a[ia], value_b[ib], "layer"
    swap = a.num_layers > b.num_layers  # make `coarse` the shallower sweep
    (d_c, v_c), (d_f, v_f) = ((depth_b, value_b), (depth_a, value_a)) if swap else ((depth_a, value_a), (depth_b, value_b))
    if len(d_f) == 0:
        return np.array([]), np.array([]), "relative depth"
    order = np.argsort(d_f)
    inside = (d_c >= d_f[order][0] - 1e-12) & (d_c <= d_f[order][-1] + 1e-12)
    interpolated = np.interp(d_c[inside], d_f[order], v_f[order])
    shallow = min(a.num_layers, b.num_layers)
    grid = f"relative depth (L={shallow} grid, deeper sweep interpolated)"
    return (interpolated, v_c[inside], grid) if swap else (v_c[inside], interpolated, grid)


def rank_correlations(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Spearman rho, Kendall tau and their p-values; NaN with < 2 points or a constant vector."""
    nan = {"spearman_rho": math.nan, "spearman_p": math.nan, "kendall_tau": math.nan, "kendall_p": math.nan}
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny n: scipy warns about p-value accuracy; we report n alongside
        rho, rho_p = stats.spearmanr(x, y)
        tau, tau_p = stats.kendalltau(x, y)
    return {"spearman_rho": float(rho), "spearman_p": float(rho_p), "kendall_tau": float(tau), "kendall_p": float(tau_p)}


def _labels(summaries: Sequence[SweepSummary], labels: Sequence[str] | None) -> list[str]:
    """Sweep names, made unique (two runs of one config share a name)."""
    names = list(labels) if labels is not None else [s.sweep or "sweep" for s in summaries]
    if len(names) != len(summaries):
        raise ValueError(f"{len(names)} labels for {len(summaries)} sweeps")
    return [n if names.count(n) == 1 else f"{n}#{k}" for k, n in enumerate(names)]


def _best_depth(s: SweepSummary) -> float:
    return next((c.relative_depth for c in s.layers if c.layer == s.best_layer), math.nan)


def compare_summaries(summaries: Sequence[SweepSummary], labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Pairwise table, one row per unordered pair of sweeps, columns `COMPARISON_COLUMNS`."""
    names = _labels(summaries, labels)
    rows = []
    for (i, a), (j, b) in combinations(enumerate(summaries), 2):
        x, y, grid = align(a, b)
        rows.append({"sweep_a": names[i], "sweep_b": names[j], "num_layers_a": a.num_layers, "num_layers_b": b.num_layers,
                     "grid": grid, "n_points": len(x), **rank_correlations(x, y), "basis_a": profile(a)[3],
                     "basis_b": profile(b)[3], "best_depth_a": _best_depth(a), "best_depth_b": _best_depth(b)})
        log.debug("compared %s and %s on %d points (%s)", names[i], names[j], len(x), grid)
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def _summaries(sweeps: Sequence[SweepSummary | pd.DataFrame]) -> list[SweepSummary]:
    return [s if isinstance(s, SweepSummary) else summarize(s) for s in sweeps]


def compare_sweeps(results: Sequence[pd.DataFrame | SweepSummary], labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Results tables (or summaries) of >= 2 sweeps -> pairwise rho/tau table (see `compare_summaries`)."""
    if len(results) < 2:
        raise ValueError(f"comparing needs at least two sweeps, got {len(results)}")
    return compare_summaries(_summaries(results), labels)


def _signed(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else "n/a"


def comparison_text(table: pd.DataFrame) -> str:
    """Plain-text pairwise table for the CLI."""
    lines = [f"{'sweep a':<20} {'sweep b':<20} {'L':>7} {'n':>3} {'rho':>6} {'tau':>6}  grid"]
    for r in table.itertuples():
        depth = f"{r.num_layers_a}/{r.num_layers_b}"
        lines.append(f"{r.sweep_a[:20]:<20} {r.sweep_b[:20]:<20} {depth:>7} {r.n_points:>3} {_signed(r.spearman_rho):>6} {_signed(r.kendall_tau):>6}  {r.grid}")
        if r.basis_a != "contribution" or r.basis_b != "contribution":
            lines.append(f"  (compared on {r.basis_a} vs {r.basis_b}: a sweep's gain was not resolved above noise)")
    return "\n".join(lines)


def plot_comparison(sweeps: Sequence[SweepSummary | pd.DataFrame], path: Path | str, labels: Sequence[str] | None = None) -> Path:
    """comparison.png: contribution over relative depth i/(L-1), one line per sweep, lines at 0 and 1.

    Sweeps without resolved contributions are drawn dashed against a right-hand axis of raw deltas
    (S_i - S_base): putting deltas on the contribution scale would flatten them into a false "no effect".
    """
    summaries = _summaries(sweeps)
    names = _labels(summaries, labels)
    path = Path(path)
    fig, ax = plt.subplots(figsize=(8.0, 4.6))
    profiles = [(name, summary, *profile(summary)[1:]) for name, summary in zip(names, summaries)]
    has_contribution = any(basis == "contribution" for *_, basis in profiles)
    raw_ax = None
    for k, (name, summary, depths, values, basis) in enumerate(profiles):
        target = ax
        if basis != "contribution" and has_contribution:
            raw_ax = raw_ax or ax.twinx()
            target = raw_ax
        suffix = "" if basis == "contribution" else f", {basis}" + (" (right axis)" if has_contribution else "")
        order = np.argsort(depths)
        target.plot(depths[order], values[order], marker="o", markersize=3.5, linewidth=1.4, color=f"C{k}",
                    linestyle="-" if basis == "contribution" else "--", label=f"{name} (L={summary.num_layers}{suffix})")
    if has_contribution:
        ax.axhline(1.0, color="#555555", linestyle=":", linewidth=1.2, label="full-parameter RL")
    ax.axhline(0.0, color="black", linewidth=0.9, label="base model")
    ax.set_xlabel("relative depth i/(L-1)")
    ax.set_ylabel("contribution (S_i-S_base)/(S_full-S_base)" if has_contribution else "S_i - S_base (gain not resolved)")
    if raw_ax is not None:
        raw_ax.set_ylabel("S_i - S_base (gain not resolved)")
    ax.set_xlim(-0.03, 1.03)
    ax.set_title("Which layers carry the RL gain, across sweeps", fontsize=10)
    ax.grid(alpha=0.3)
    handles, texts = ax.get_legend_handles_labels()
    if raw_ax is not None:
        more = raw_ax.get_legend_handles_labels()
        handles, texts = handles + more[0], texts + more[1]
    fig.legend(handles, texts, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.02 + 0.045 * math.ceil(len(handles) / 2), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    log.info("wrote %s", path)
    return path


def write_comparison(results: Sequence[pd.DataFrame | SweepSummary], out_dir: Path | str,
                     labels: Sequence[str] | None = None) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Write comparison.csv and comparison.png into out_dir; return the pairwise table and the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = _summaries(results)
    table = compare_sweeps(summaries, labels)
    files = {"comparison_csv": out_dir / "comparison.csv", "comparison_png": out_dir / "comparison.png"}
    table.to_csv(files["comparison_csv"], index=False)
    plot_comparison(summaries, files["comparison_png"], labels)
    return table, files


def compare_sweep_dirs(sweep_dirs: Sequence[Path], out_dir: Path | None) -> tuple[str, list[Path]]:
    """Spearman / Kendall between finished sweeps' contribution vectors; writes comparison.csv and
    comparison.png into out_dir (default: the first sweep's directory). Sweeps are labelled by directory
    name, or by full path where two names clash."""
    tables = [load_results(sweep_dir) for sweep_dir in sweep_dirs]
    names = [d.name for d in sweep_dirs]
    labels = [d.name if names.count(d.name) == 1 else str(d) for d in sweep_dirs]
    table, files = write_comparison(tables, out_dir or sweep_dirs[0], labels=labels)
    return comparison_text(table), list(files.values())
