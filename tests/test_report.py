"""Report files from a results table: ranking.md / ranking.csv rows, a valid PNG, terminal and progress text."""

from __future__ import annotations

import pandas as pd
import pytest

from orchestrator.aggregate import summarize
from orchestrator.report import plot_contribution, progress_line, ranking_markdown, render_sweep, summary_metrics, terminal_table, write_summary_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def results(full: float = 0.6, statuses: dict[str, str] | None = None) -> pd.DataFrame:
    """A 4-layer, one-seed sweep: base 0.4, full `full`, layers 0.5 / 0.45 / 0.62 / 0.35."""
    statuses = statuses or {}
    rows = [dict(trial="base-s0", kind="base", layer=None, score=0.4), dict(trial="full-s0", kind="full", layer=None, score=full)]
    rows += [dict(trial=f"layer{i:02d}-s0", kind="layers", layer=i, score=v) for i, v in enumerate([0.5, 0.45, 0.62, 0.35])]
    df = pd.DataFrame(rows).assign(sweep="demo", num_layers=4, seed=0, eval_size=500, steps=20)
    df["status"] = df["trial"].map(lambda t: statuses.get(t, "done"))
    df.loc[df["status"] != "done", "score"] = None
    df["layer"] = df["layer"].astype("Int64")
    return df


def test_write_report_from_parquet_round_trip(tmp_path):
    path = tmp_path / "results.parquet"
    results().to_parquet(path, index=False)
    written, text, metrics = render_sweep(pd.read_parquet(path), tmp_path / "out")
    files = dict(zip(["ranking_md", "ranking_csv", "contribution_png"], written))
    assert [p.name for p in written] == ["ranking.md", "ranking.csv", "contribution.png"]
    assert all(p.exists() and p.stat().st_size > 0 for p in files.values())
    assert text == terminal_table(summarize(pd.read_parquet(path)))
    assert metrics == summary_metrics(summarize(pd.read_parquet(path)))

    csv = pd.read_csv(files["ranking_csv"])
    assert list(csv["layer"]) == [2, 0, 1, 3]
    assert list(csv["rank"]) == [1, 2, 3, 4]
    assert csv.loc[csv["layer"] == 0, "contribution"].item() == pytest.approx(0.5)
    assert csv.loc[csv["layer"] == 3, "contribution"].item() == pytest.approx(-0.25)

    md = files["ranking_md"].read_text()
    assert "| 2 | 0 | 0.00 | 1 | 0.500 | +0.100 | 0.500 |" in md
    assert "| 1 | 2 | 0.67 | 1 | 0.620 | +0.220 | 1.100 |" in md
    assert "best layer (by contribution): 2" in md and "recovers 110%" in md


def test_png_is_valid(tmp_path):
    path = plot_contribution(summarize(results()), tmp_path / "c.png")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_unresolved_gain_report_says_so(tmp_path):
    files = write_summary_report(summarize(results(full=0.4)), tmp_path)
    md = files["ranking_md"].read_text()
    assert "S_full == S_base" in md
    csv = pd.read_csv(files["ranking_csv"])
    assert csv["contribution"].isna().all()
    assert csv.loc[csv["layer"] == 2, "delta"].item() == pytest.approx(0.22)
    assert files["contribution_png"].read_bytes()[:8] == PNG_MAGIC


def test_report_without_any_finished_layer(tmp_path):
    statuses = {f"layer{i:02d}-s0": "failed" for i in range(4)}
    files = write_summary_report(summarize(results(statuses=statuses)), tmp_path)
    assert pd.read_csv(files["ranking_csv"]).empty
    assert "no finished layer trial" in files["ranking_md"].read_text()
    assert files["contribution_png"].read_bytes()[:8] == PNG_MAGIC


def test_terminal_table_lists_every_finished_layer():
    text = terminal_table(summarize(results()))
    lines = text.splitlines()
    assert lines[0] == "sweep demo"
    table_rows = [line for line in lines if line.strip()[:1].isdigit() and "0." in line]
    assert [int(r.split()[1]) for r in table_rows] == [2, 0, 1, 3]
    assert "nan" not in text


def test_progress_line_from_partial_table():
    partial = results(statuses={"layer02-s0": "running", "layer03-s0": "failed"})
    line = progress_line(partial, total=8)
    assert line == "4/8 trials done, 1 running, 1 failed; best layer so far 0 (contribution 0.500)"
    no_base = results(statuses={"base-s0": "running", "layer00-s0": "failed"})
    assert progress_line(no_base).endswith("best layer so far 2 (score 0.620)")
    nothing = results(statuses={f"layer{i:02d}-s0": "running" for i in range(4)})
    assert progress_line(nothing).endswith("no layer finished yet")


def test_summary_metrics_are_finite_floats():
    metrics = summary_metrics(summarize(results()))
    assert metrics["best_layer"] == 2.0 and metrics["best_share"] == pytest.approx(1.1)
    assert metrics["gain_resolved"] == 1.0
    unresolved = summary_metrics(summarize(results(full=0.4)))
    assert "best_share" not in unresolved and unresolved["gain_resolved"] == 0.0


def test_markdown_has_no_nan_strings():
    md = ranking_markdown(summarize(results(full=0.4)))
    assert " nan" not in md.lower() and "| n/a | [" not in md
    assert md.count("| n/a | n/a |") == 4  # contribution and CI omitted for all four layers


def test_secondary_scores_are_averaged_per_trial_group_and_shown_but_not_ranked():
    two_seeds = pd.concat([results().assign(seed=0), results().assign(seed=1)], ignore_index=True)
    two_seeds["success_greedy"] = [0.5, 0.7, 0.5, 0.4, 0.6, 0.3] + [0.5, 0.8, 0.6, 0.4, 0.6, 0.4]
    two_seeds.loc[(two_seeds["layer"] == 3) & (two_seeds["seed"] == 0), "status"] = "failed"  # never counts
    summary = summarize(two_seeds)
    assert list(summary.secondary) == ["base", "full", "layer 0", "layer 1", "layer 2", "layer 3"]
    assert summary.secondary["full"]["success_greedy"] == pytest.approx(0.75)
    assert summary.secondary["layer 0"]["success_greedy"] == pytest.approx(0.55)
    assert summary.secondary["layer 3"]["success_greedy"] == pytest.approx(0.4)
    assert summary.ranking == summarize(two_seeds.drop(columns="success_greedy")).ranking
    md = ranking_markdown(summary)
    assert "| trial | success_greedy |" in md and "| full | 0.750 |" in md and "| layer 0 | 0.550 |" in md
    assert "Other held-out scores" not in ranking_markdown(summarize(results()))


def test_periodic_progress_line_counts_steps_over_all_trials_and_estimates_the_rest():
    from types import SimpleNamespace

    from orchestrator.callbacks import ProgressPrinter

    def trial(kind, layers=(), status="RUNNING"):
        return SimpleNamespace(config={"trial": {"spec": {"kind": kind, "layers": list(layers), "seed": 0}}}, status=status)

    now = [0.0]
    lines: list[str] = []
    printer = ProgressPrinter("s", total=3, num_layers=2, steps_per_trial=10, every_s=30, emit=lines.append, clock=lambda: now[0])
    base, full, layer = trial("base", status="PENDING"), trial("full"), trial("layers", (0,))
    trials = [base, full, layer]
    printer.on_trial_result(0, trials, full, {"step": 4})
    printer.on_trial_result(0, trials, layer, {"step": 6})
    now[0] = 20.0
    printer.on_step_end(0, trials)
    assert lines == []  # not yet every_s seconds
    now[0] = 100.0
    printer.on_step_end(0, trials)
    # base trains nothing: 2 training trials x 10 steps; 10 done in 100 s -> 100 s left
    assert lines == ["progress: 10/20 steps, 100 s elapsed, ETA 100 s | 0/3 trials done, 2 running, 0 failed; no layer finished yet"]
    now[0] = 110.0
    printer.on_step_end(0, trials)
    assert len(lines) == 1
