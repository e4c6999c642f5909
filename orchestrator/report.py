"""Rendering of a SweepSummary: ranking.md, ranking.csv, a terminal table, a progress line, contribution.png.

No numbers are computed here beyond formatting: everything comes from `orchestrator.aggregate`, so the
markdown, the CSV, the plot and the MLflow metrics can never disagree.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: sweeps run on clusters without a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from orchestrator.aggregate import SweepSummary, summarize  # noqa: E402
from orchestrator.results import PLAN_FILE, PROBE_INFO, PROBE_TABLE  # noqa: E402

log = logging.getLogger(__name__)

RANKING_MD, RANKING_CSV, CONTRIBUTION_PNG = "ranking.md", "ranking.csv", "contribution.png"


def _f(value: float | None, spec: str = ".3f") -> str:
    """Format a number; NaN / None as n/a so tables never show 'nan'."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def _ci(low: float, high: float) -> str:
    return f"[{_f(low, '.2f')}, {_f(high, '.2f')}]" if math.isfinite(low) and math.isfinite(high) else "n/a"


def headline(summary: SweepSummary) -> list[str]:
    """The few sentences a reader needs before the table: scores, noise verdict, best layer, depth split."""
    c = summary.counts
    lines = [
        f"model depth L = {summary.num_layers}; trials: {c.get('done', 0)} done, {c.get('running', 0)} running, {c.get('failed', 0)} failed"
        + (f", {c['no_learning']} without learning" if c.get("no_learning") else "")
        + (f", {c['stopped']} stopped early" if c.get("stopped") else ""),
        f"S_base = {_f(summary.base_score)}, S_full = {_f(summary.full_score)}, gain = {_f(summary.noise.gain, '+.3f')}",
        *summary.messages,
    ]
    if summary.best_layer is not None:
        best = next(x for x in summary.layers if x.layer == summary.best_layer)
        share = f", recovers {_f(100 * summary.best_share, '.0f')}% of the full-parameter gain" if math.isfinite(summary.best_share) else ""
        lines.append(f"best layer (by {summary.ranked_by}): {best.layer} (relative depth {best.relative_depth:.2f}){share}")
    if math.isfinite(summary.middle_contribution) or math.isfinite(summary.ends_contribution):
        lines.append(f"mean contribution, middle third vs first+last thirds: {_f(summary.middle_contribution)} vs {_f(summary.ends_contribution)}")
    return lines


def ranking_markdown(summary: SweepSummary) -> str:
    """ranking.md: headline bullets, then one table row per layer in ranked order."""
    out = [f"# Layer sweep `{summary.sweep}`: contribution by layer", ""]
    out += [f"- {line}" for line in headline(summary)]
    out += ["", "contribution(i) = (S_i - S_base) / (S_full - S_base); 1 = the full-parameter gain, 0 = base.", ""]
    out += ["| rank | layer | rel. depth | seeds | mean score | S_i - S_base | contribution | 95% CI |",
            "|---:|---:|---:|---:|---:|---:|---:|:---|"]
    for row in summary.frame().itertuples():
        rank = "-" if pd.isna(row.rank) else str(int(row.rank))
        out.append(f"| {rank} | {row.layer} | {row.relative_depth:.2f} | {row.n_seeds} | {_f(row.mean_score)} | "
                   f"{_f(row.delta, '+.3f')} | {_f(row.contribution)} | {_ci(row.ci_low, row.ci_high)} |")
    return "\n".join(out + comparison_markdown(summary) + secondary_markdown(summary)) + "\n"


def comparison_rows(summary: SweepSummary) -> list[tuple[str, str, int, float, float, tuple[float, float], float, tuple[float, float]]]:
    """The paper's comparison: base, full-parameter RL, the best single layer and every layer set trained
    together, as (setting, trained layers, seeds, mean score, delta, delta CI, contribution, contribution CI)."""
    nan_ci = (math.nan, math.nan)
    noise = summary.noise
    rows = []
    if math.isfinite(summary.base_score):
        rows.append(("base", "none", summary.counts["base_seeds"], summary.base_score, 0.0, nan_ci, 0.0, nan_ci))
    if math.isfinite(summary.full_score):
        half = 1.96 * noise.se if math.isfinite(noise.se) else math.nan
        rows.append(("full-parameter RL", "all", summary.counts["full_seeds"], summary.full_score, noise.gain,
                     (noise.gain - half, noise.gain + half), 1.0 if noise.resolved else math.nan, nan_ci))
    if summary.best_layer is not None:
        best = next(c for c in summary.layers if c.layer == summary.best_layer)
        rows.append(("best single layer", str(best.layer), best.n_seeds, best.mean_score, best.delta, best.delta_ci,
                     best.contribution, best.contribution_ci))
    for subset in summary.subsets:
        rows.append((subset.label, "+".join(map(str, subset.layers)), subset.n_seeds, subset.mean_score, subset.delta,
                     subset.delta_ci, subset.contribution, subset.contribution_ci))
    return rows


def comparison_markdown(summary: SweepSummary) -> list[str]:
    rows = comparison_rows(summary)
    if not rows:
        return []
    out = ["", "Base, full-parameter RL, the best single layer and layer sets trained together (`layersweep train`):", "",
           "| setting | trained layers | seeds | mean score | S - S_base (95% CI) | contribution (95% CI) |",
           "|:---|:---|---:|---:|:---|:---|"]
    for name, layers, seeds, score, delta, delta_ci, contribution, contribution_ci in rows:
        out.append(f"| {name} | {layers} | {seeds} | {_f(score)} | {_f(delta, '+.3f')} {_ci(*delta_ci)} | "
                   f"{_f(contribution)} {_ci(*contribution_ci)} |")
    return out


def secondary_markdown(summary: SweepSummary) -> list[str]:
    """Other held-out scores per trial group (mean over seeds), below the ranking; none -> no lines."""
    if not summary.secondary:
        return []
    columns = sorted({c for scores in summary.secondary.values() for c in scores})
    out = ["", "Other held-out scores (mean over seeds; not used for the ranking):", "",
           "| trial | " + " | ".join(columns) + " |", "|:---|" + "---:|" * len(columns)]
    for group, scores in summary.secondary.items():
        out.append(f"| {group} | " + " | ".join(_f(scores.get(c)) for c in columns) + " |")
    return out


def terminal_table(summary: SweepSummary) -> str:
    """Plain-text result for the CLI: headline lines and a fixed-width ranking table."""
    header = f"{'rank':>4} {'layer':>5} {'depth':>5} {'seeds':>5} {'score':>7} {'delta':>7} {'contrib':>7}  95% CI"
    rows = [header, "-" * len(header)]
    for row in summary.frame().itertuples():
        rank = "-" if pd.isna(row.rank) else str(int(row.rank))
        rows.append(f"{rank:>4} {row.layer:>5} {row.relative_depth:>5.2f} {row.n_seeds:>5} {_f(row.mean_score):>7} "
                    f"{_f(row.delta, '+.3f'):>7} {_f(row.contribution):>7}  {_ci(row.ci_low, row.ci_high)}")
    lines = [f"sweep {summary.sweep}", *headline(summary), "", *rows]
    if summary.subsets:
        lines += ["", f"{'setting':<20} {'layers':<12} {'seeds':>5} {'score':>7} {'delta':>7} {'contrib':>7}  95% CI"]
        for name, layers, seeds, score, delta, _, contribution, contribution_ci in comparison_rows(summary):
            lines.append(f"{name:<20} {layers:<12} {seeds:>5} {_f(score):>7} {_f(delta, '+.3f'):>7} {_f(contribution):>7}  "
                         f"{_ci(*contribution_ci)}")
    return "\n".join(lines)


def progress_line(results: pd.DataFrame, total: int | None = None) -> str:
    """One line from a partial results table: 'N/T trials done, R running, F failed; best layer so far ...'.

    total: planned trial count when the table does not yet list every trial.
    """
    summary = summarize(results)
    c = summary.counts
    text = f"{c['done']}/{total if total is not None else c['total']} trials done, {c['running']} running, {c['failed']} failed"
    if c.get("stopped"):
        text += f", {c['stopped']} stopped early"
    if summary.best_layer is None:
        return text + "; no layer finished yet"
    best = next(x for x in summary.layers if x.layer == summary.best_layer)
    value = {"contribution": best.contribution, "delta": best.delta}.get(summary.ranked_by, best.mean_score)
    return f"{text}; best layer so far {best.layer} ({summary.ranked_by} {_f(value)})"


def summary_metrics(summary: SweepSummary) -> dict[str, float]:
    """Finite scalar metrics for the sweep's MLflow parent run (MLflow rejects NaN in some stores)."""
    metrics = {
        "base_score": summary.base_score, "full_score": summary.full_score, "gain": summary.noise.gain,
        "gain_resolved": float(summary.noise.resolved), "best_layer": float(summary.best_layer if summary.best_layer is not None else math.nan),
        "best_share": summary.best_share, "middle_contribution": summary.middle_contribution,
        "ends_contribution": summary.ends_contribution, "layers_finished": float(len(summary.layers)),
    }
    return {k: float(v) for k, v in metrics.items() if math.isfinite(v)}


def plot_contribution(summary: SweepSummary, path: Path | str) -> Path:
    """contribution.png: one bar per layer over depth, 95% CI error bars, lines at 1 (full) and 0 (base).

    When the gain is not resolved above noise the bars are raw deltas S_i - S_base instead (the title says
    so), with the full run's delta as the reference line, since ratios of noise would mislead.
    """
    path = Path(path)
    frame = summary.frame().sort_values("layer")
    use_contribution = summary.ranked_by == "contribution"
    value = frame["contribution" if use_contribution else "delta"].to_numpy(float)  # (n_layers,)
    low = frame["ci_low" if use_contribution else "delta_ci_low"].to_numpy(float)
    high = frame["ci_high" if use_contribution else "delta_ci_high"].to_numpy(float)
    layers = frame["layer"].to_numpy(int)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * max(summary.num_layers, 1) + 2), 4.2))
    if len(layers) and np.isfinite(value).any():
        yerr = np.nan_to_num(np.vstack([value - low, high - value]), nan=0.0).clip(min=0)
        colors = ["#c44e52" if v < 0 else "#4c72b0" for v in value]
        colors = ["#dd8452" if layer == summary.best_layer else col for layer, col in zip(layers, colors)]
        ax.bar(layers, np.nan_to_num(value), color=colors, yerr=yerr, capsize=3, ecolor="#333333")
        ax.set_xticks(layers if len(layers) <= 40 else layers[:: max(1, len(layers) // 20)])
    else:
        ax.text(0.5, 0.5, "no finished layer trial with a base score", ha="center", va="center", transform=ax.transAxes)
    full_line = 1.0 if use_contribution else summary.noise.gain
    if math.isfinite(full_line):
        ax.axhline(full_line, color="#2ca02c", linestyle="--", linewidth=1.2, label="full-parameter RL" + ("" if use_contribution else " (S_full - S_base)"))
    ax.axhline(0.0, color="black", linewidth=0.9, label="base model")
    ax.set_xlim(-0.7, max(summary.num_layers, 1) - 0.3)
    ax.set_xlabel("layer i (top axis: relative depth i/(L-1))")
    ax.set_ylabel("contribution (S_i-S_base)/(S_full-S_base)" if use_contribution else "S_i - S_base", fontsize=9)
    if summary.num_layers > 1:
        scale = summary.num_layers - 1
        top = ax.secondary_xaxis("top", functions=(lambda i: i / scale, lambda r: r * scale))
        top.set_ticks([0, 0.25, 0.5, 0.75, 1.0])
    title = f"{summary.sweep}: one-layer RL vs full RL (L={summary.num_layers})"
    if not use_contribution:
        title += "\ngain not resolved above noise: raw score deltas shown"
    ax.set_title(title, fontsize=10)
    bottom, top_y = ax.get_ylim()
    ax.set_ylim(bottom, top_y + 0.35 * (top_y - bottom))  # headroom so the legend never hides the full line
    handles, labels = ax.get_legend_handles_labels()
    handles += [Patch(color="#4c72b0"), Patch(color="#c44e52")]
    labels += ["layer i alone (95% CI)", "below base"]
    if summary.best_layer is not None:
        handles.append(Patch(color="#dd8452"))
        labels.append(f"best layer ({summary.best_layer})")
    ax.legend(handles, labels, loc="upper left", ncol=min(3, len(handles)), fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    log.info("wrote %s", path)
    return path


def write_summary_report(summary: SweepSummary, out_dir: Path | str) -> dict[str, Path]:
    """Write ranking.md, ranking.csv and contribution.png into out_dir; returns {"ranking_md", "ranking_csv",
    "contribution_png"} -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"ranking_md": out_dir / RANKING_MD, "ranking_csv": out_dir / RANKING_CSV, "contribution_png": out_dir / CONTRIBUTION_PNG}
    files["ranking_md"].write_text(ranking_markdown(summary))
    summary.frame().to_csv(files["ranking_csv"], index=False)
    plot_contribution(summary, files["contribution_png"])
    log.info("report for sweep %s written to %s", summary.sweep, out_dir)
    return files


def render_sweep(table: pd.DataFrame, sweep_dir: Path) -> tuple[list[Path], str, dict[str, float]]:
    """Aggregate a results table and write its report into sweep_dir; returns (files, terminal text, summary
    metrics). Works from a stored results.parquet, so `layersweep report` re-renders without rerunning."""
    summary = summarize(table)
    choice = _probe_choice(sweep_dir)
    if choice:
        summary = dataclasses.replace(summary, messages=(*summary.messages, choice_message(choice)))
    files = write_summary_report(summary, sweep_dir)
    probe_files = [sweep_dir / name for name in (PROBE_TABLE, PROBE_INFO) if (sweep_dir / name).exists()]
    return [*files.values(), *probe_files], terminal_table(summary), summary_metrics(summary)


def choice_message(choice: dict[str, Any]) -> str:
    """The report's sentence on a probe-then-train sweep (its unprobed-by-training layers are not in the ranking)."""
    return (f"Layers trained were chosen by the probe: the top {choice['top_m']} of {len(choice['candidates'])} candidate "
            f"layers by {choice['signal']}, {choice['chosen']}; the other candidates had no RL trial.")


def _probe_choice(sweep_dir: Path) -> dict | None:
    """The probe's choice of layers recorded in the plan of a probe-then-train sweep, else None."""
    plan = sweep_dir / PLAN_FILE
    return json.loads(plan.read_text()).get("probe") if plan.exists() else None
