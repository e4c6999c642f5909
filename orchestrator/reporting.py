"""Glue between stored sweep results and the aggregator / renderers: what `run`, `report` and `compare` show."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from orchestrator.aggregate import summarize
from orchestrator.compare import comparison_text, write_comparison
from orchestrator.report import summary_metrics, terminal_table, write_summary_report


def render_sweep(table: pd.DataFrame, sweep_dir: Path) -> tuple[list[Path], str, dict[str, float]]:
    """Write ranking.md / ranking.csv / contribution.png; return (files, terminal text, summary metrics)."""
    summary = summarize(table)
    files = write_summary_report(summary, sweep_dir)
    return list(files.values()), terminal_table(summary), summary_metrics(summary)


def compare_sweep_dirs(sweep_dirs: list[Path], out_dir: Path | None) -> tuple[str, list[Path]]:
    """Spearman / Kendall between the sweeps' contribution vectors; writes comparison.csv and comparison.png."""
    from orchestrator.driver import RESULTS_FILE

    tables = []
    for sweep_dir in sweep_dirs:
        path = sweep_dir / RESULTS_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist (is {sweep_dir} a finished sweep?)")
        tables.append(pd.read_parquet(path))
    labels = [d.name if d.name not in [o.name for o in sweep_dirs if o != d] else str(d) for d in sweep_dirs]
    table, files = write_comparison(tables, out_dir or sweep_dirs[0], labels=labels)
    return comparison_text(table), list(files.values())
