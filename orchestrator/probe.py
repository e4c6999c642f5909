"""The probe's table, its check against a finished sweep, and the probe-then-train-top-m choice of layers.

`workers.probe` measures the signals; this module turns them into `probe.csv` / `probe.json` in the sweep
directory, ranks the candidate layers by one signal, and reports each signal's Spearman rho with the C(i) a
finished sweep measured (`layersweep probe CONFIG --against SWEEP_DIR`), so a user can see whether the probe
ranks layers as training does before trusting it to prune a sweep.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from orchestrator.aggregate import summarize
from orchestrator.compare import profile, rank_correlations
from orchestrator.config import ProbeConfig, SweepConfig
from orchestrator.results import PROBE_INFO, PROBE_TABLE
from workers.algorithms.probe_signals import SIGNALS

if TYPE_CHECKING:  # the trial stack is imported where a probe runs (a Ray task), not by the driver
    from workers.probe import ProbeResult

CORRELATION_COLUMNS = ["signal", "n_layers", "spearman_rho", "spearman_p", "probe_top1", "measured_top1", "measured_basis"]


def probe_table(result: ProbeResult) -> pd.DataFrame:
    """One row per probed layer: its signals and, per signal, its rank (1 = predicted best)."""
    table = pd.DataFrame(result.rows())
    for name in SIGNALS:
        table[f"rank_{name}"] = table[name].rank(ascending=False, method="first", na_option="bottom").astype(int)
    return table


def top_layers(table: pd.DataFrame, signal: str, top_m: int) -> list[int]:
    """The `top_m` layers with the largest `signal` (ties: the lower layer first), in layer order."""
    ordered = table.sort_values([signal, "layer"], ascending=[False, True], kind="stable")
    return sorted(int(layer) for layer in ordered["layer"].head(top_m))


def run_probe(cfg: SweepConfig, layers: list[int], batches: int, num_threads: int | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Probe `layers` with the sweep's first seed: (table, info)."""
    from workers.probe import probe_layers

    result = probe_layers(cfg.trial_config(cfg.seed_list[0]), layers, batches, num_threads)
    return probe_table(result), result.info


def write_probe(sweep_dir: Path, table: pd.DataFrame, info: dict[str, Any]) -> list[Path]:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(sweep_dir / PROBE_TABLE, index=False)
    (sweep_dir / PROBE_INFO).write_text(json.dumps(info, indent=2))
    return [sweep_dir / PROBE_TABLE, sweep_dir / PROBE_INFO]


def correlations(table: pd.DataFrame, results: pd.DataFrame, against: str) -> pd.DataFrame:
    """Each signal's Spearman rho with the per-layer values a finished sweep (`results`, from `against`) ranks by:
    mean C(i) over seeds when its full gain is resolved, else the score delta; over the layers both have."""
    summary = summarize(results)
    layers, _, measured, basis = profile(summary)
    by_layer = dict(zip(layers.tolist(), measured.tolist()))
    common = table[table["layer"].isin(by_layer)].sort_values("layer")
    if len(common) < 3:
        raise ValueError(f"--against {against}: only {len(common)} probed layers have a measured value there; "
                         "at least 3 are needed for a rank correlation")
    truth = common["layer"].map(by_layer).to_numpy()
    measured_top1 = int(common["layer"].to_numpy()[truth.argmax()])
    rows = []
    for name in SIGNALS:
        stats = rank_correlations(common[name].to_numpy(), truth)
        rows.append({"signal": name, "n_layers": len(common), "spearman_rho": stats["spearman_rho"], "spearman_p": stats["spearman_p"],
                     "probe_top1": top_layers(common, name, 1)[0], "measured_top1": measured_top1, "measured_basis": basis})
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


def probe_text(table: pd.DataFrame, info: dict[str, Any], against: pd.DataFrame | None = None, sweep: str | None = None) -> str:
    lines = [f"probe: {len(table)} layers from {info['batches']} base-model batches of {info['rows_per_batch']} rows "
             f"(reward mean {info['reward_mean']:.3f}) in {info['seconds']:.1f} s"
             + (f" on {info['threads']} thread{'s' if info['threads'] > 1 else ''}" if "threads" in info else "")
             + (f", in the {info['ran_in']}" if "ran_in" in info else ""),
             f"{'layer':>5} " + " ".join(f"{name:>17}" for name in SIGNALS)]
    for row in table.sort_values("layer").itertuples():
        lines.append(f"{row.layer:>5} " + " ".join(f"{getattr(row, name):>11.4g} (#{getattr(row, 'rank_' + name):>2})" for name in SIGNALS))
    if against is not None:
        basis = against["measured_basis"].iloc[0]
        lines.append(f"Spearman rho with the measured {basis} of {sweep} ({against['n_layers'].iloc[0]} layers; "
                     f"its best layer {against['measured_top1'].iloc[0]}):")
        for row in against.itertuples():
            rho = "n/a" if math.isnan(row.spearman_rho) else f"{row.spearman_rho:+.2f} (p {row.spearman_p:.2g})"
            lines.append(f"  {row.signal:>17}: rho {rho}, its top-1 layer {row.probe_top1}")
    return "\n".join(lines)


def probe_choice(probe: ProbeConfig, candidates: list[int], table: pd.DataFrame) -> dict[str, Any]:
    """What a probe-then-train sweep records in its plan: the signal, the candidates and the layers chosen."""
    return {"signal": probe.signal, "top_m": probe.top_m, "candidates": candidates,
            "chosen": top_layers(table, probe.signal, probe.top_m)}

