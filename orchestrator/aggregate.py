"""From a sweep's results table to per-layer contributions, a ranking and a noise verdict.

contribution(i) = (S_i - S_base) / (S_full - S_base): 1.0 means training layer i alone recovers the
whole full-parameter gain, 0 means it recovers nothing, < 0 means it made the model worse (kept: it is a
real result). A ratio of two small noisy differences is meaningless, so before dividing we check that
the gain S_full - S_base stands clear of evaluation noise; when it does not, contributions are NaN and
only raw deltas S_i - S_base are reported.

Input: one sweep's results table, one row per trial, columns
`sweep, trial, kind (base|full|layers|subset), layer (Int64, null unless kind=layers), layers (`3+4`, the
trained set of a subset), label (how a subset was chosen), num_layers, seed,
score (float, null when failed), status (done|failed|running|no_learning)`; optional `eval_size` and any others are
ignored. Pure functions: no I/O, no Ray, no MLflow.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd

from orchestrator.noise import NoiseCheck, binomial_var, check_noise, normal_interval, t_interval
from orchestrator.results import is_secondary_score

log = logging.getLogger(__name__)

RankBasis = Literal["contribution", "delta", "score", "none"]


@dataclass(frozen=True)
class LayerContribution:
    """One candidate layer's result, averaged over its finished seeds.

    CIs are 95%: a t-interval over per-seed values when >= 2 seeds finished; with one seed, a normal
    interval from the binomial SE sqrt(p(1-p)/eval_size) of each accuracy (delta method for the ratio);
    NaN when neither is available.
    """

    layer: int
    relative_depth: float  # i / (L - 1): lets sweeps of different depth be compared
    n_seeds: int
    mean_score: float  # mean S_i over seeds
    delta: float  # mean (S_i - S_base); NaN without a base trial
    delta_ci: tuple[float, float]
    contribution: float  # mean per-seed contribution; NaN when the gain is not resolved above noise
    contribution_ci: tuple[float, float]
    rank: int | None = None  # 1 = largest contribution (or delta / score, see SweepSummary.ranked_by)


@dataclass(frozen=True)
class SubsetContribution:
    """A set of layers trained together (`layersweep train`), averaged over its finished seeds; CIs as for
    LayerContribution."""

    layers: tuple[int, ...]
    label: str
    """How the set was chosen, e.g. `top-2`."""
    n_seeds: int
    mean_score: float
    delta: float
    delta_ci: tuple[float, float]
    contribution: float
    contribution_ci: tuple[float, float]


@dataclass(frozen=True)
class SweepSummary:
    """Everything the report shows about one sweep; `layers` is sorted by layer index."""

    sweep: str
    num_layers: int
    base_score: float  # mean over finished base trials; NaN if none
    full_score: float
    noise: NoiseCheck
    layers: tuple[LayerContribution, ...]
    ranked_by: RankBasis  # contribution when the gain is resolved, else delta, else raw score
    ranking: tuple[int, ...]  # layer indices, best first (ties -> lower layer first)
    best_layer: int | None
    best_share: float  # share of the full gain recovered by the best layer (its contribution)
    middle_contribution: float  # mean contribution of layers with relative depth in [1/3, 2/3]
    ends_contribution: float  # mean contribution of the first and last thirds together
    counts: dict[str, int] = field(default_factory=dict)  # done / running / failed / total trials; base / full seeds
    eval_size: float = math.nan
    messages: tuple[str, ...] = ()
    subsets: tuple[SubsetContribution, ...] = ()
    """Layer sets trained together after the sweep, in the order of their first appearance in the table."""
    secondary: dict[str, dict[str, float]] = field(default_factory=dict)
    """Other held-out scores (e.g. success_greedy, pass@k): trial group (base / full / layer i) -> column -> mean
    over seeds. They are shown beside the ranking, never used for it."""

    def frame(self) -> pd.DataFrame:
        """Per-layer table, ranked order, columns as in `RANKING_COLUMNS`."""
        rows = [
            {"rank": c.rank, "layer": c.layer, "relative_depth": c.relative_depth, "n_seeds": c.n_seeds,
             "mean_score": c.mean_score, "delta": c.delta, "delta_ci_low": c.delta_ci[0], "delta_ci_high": c.delta_ci[1],
             "contribution": c.contribution, "ci_low": c.contribution_ci[0], "ci_high": c.contribution_ci[1]}
            for c in self.layers
        ]
        table = pd.DataFrame(rows, columns=RANKING_COLUMNS)
        table["rank"] = table["rank"].astype("Int64")
        order = {layer: k for k, layer in enumerate(self.ranking)}
        key = table["layer"].map(lambda i: order.get(i, len(order) + i))
        return table.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


RANKING_COLUMNS = ["rank", "layer", "relative_depth", "n_seeds", "mean_score", "delta", "delta_ci_low",
                   "delta_ci_high", "contribution", "ci_low", "ci_high"]


def relative_depth(layer: int, num_layers: int) -> float:
    """i / (L - 1), 0 for a one-layer model."""
    return layer / (num_layers - 1) if num_layers > 1 else 0.0


def finished(results: pd.DataFrame) -> pd.DataFrame:
    """Rows that count: status done (if the column exists) and a non-null score."""
    done = results["score"].notna()
    if "status" in results.columns:
        done &= results["status"] == "done"
    return results[done]


def trial_counts(results: pd.DataFrame) -> dict[str, int]:
    """done / running / failed / total trial counts (a missing status column counts scored rows as done)."""
    if "status" in results.columns:
        status = results["status"].astype(str)
    else:
        status = results["score"].notna().map({True: "done", False: "failed"})
    return {"done": int((status == "done").sum()), "running": int((status == "running").sum()),
            "failed": int((status == "failed").sum()), "no_learning": int((status == "no_learning").sum()),
            "stopped": int((status == "stopped").sum()), "total": len(results)}


def _layer_row(layer: int, scores: pd.Series, base_by_seed: pd.Series, full_by_seed: pd.Series,
               noise: NoiseCheck, num_layers: int, eval_size: float) -> LayerContribution:
    return LayerContribution(layer, relative_depth(layer, num_layers), *_against_references(
        scores, base_by_seed, full_by_seed, noise, eval_size))


def _against_references(scores: pd.Series, base_by_seed: pd.Series, full_by_seed: pd.Series, noise: NoiseCheck,
                        eval_size: float) -> tuple[int, float, float, tuple[float, float], float, tuple[float, float]]:
    """(n_seeds, mean score, delta, delta CI, contribution, contribution CI) of per-seed `scores`: deltas and
    contributions against that seed's base/full, else the mean base/full."""
    base_mean, full_mean = float(base_by_seed.mean()), float(full_by_seed.mean())
    seeds = scores.index
    x = scores.to_numpy(float)  # (n_seeds,)
    b = np.array([base_by_seed.get(s, base_mean) for s in seeds], dtype=float)
    f = np.array([full_by_seed.get(s, full_mean) for s in seeds], dtype=float)
    delta_s = x - b
    gain_s = f - b
    with np.errstate(divide="ignore", invalid="ignore"):
        contrib_s = np.where(noise.resolved & (gain_s != 0), delta_s / gain_s, np.nan)
    delta = float(delta_s.mean()) if len(x) else math.nan
    contribution = float(np.nanmean(contrib_s)) if np.isfinite(contrib_s).any() else math.nan
    if len(x) >= 2:
        delta_ci, contribution_ci = t_interval(delta_s), t_interval(contrib_s)
    else:  # one seed: binomial SE of each accuracy, delta method for the ratio (evals treated independent)
        var_x, var_b, var_f = (binomial_var(float(v[0]), eval_size) for v in (x, b, f))
        delta_ci = normal_interval(delta, var_x + var_b)
        g = float(gain_s[0])
        c_var = (var_x + contribution**2 * var_f + (1 - contribution) ** 2 * var_b) / g**2 if g else math.nan
        contribution_ci = normal_interval(contribution, c_var)
    return len(x), float(x.mean()), delta, delta_ci, contribution, contribution_ci


def subset_rows(done: pd.DataFrame, base_by_seed: pd.Series, full_by_seed: pd.Series, noise: NoiseCheck,
                eval_size: float) -> list[SubsetContribution]:
    """One SubsetContribution per distinct layer set of the finished `subset` trials."""
    if "layers" not in done.columns:
        return []
    rows = done[done["kind"] == "subset"]
    result = []
    for layers_text, group in rows.groupby("layers", sort=False):
        labels = group["label"].dropna().unique() if "label" in group.columns else []
        layers = tuple(int(i) for i in str(layers_text).split("+"))
        stats_ = _against_references(group.groupby("seed")["score"].mean(), base_by_seed, full_by_seed, noise, eval_size)
        result.append(SubsetContribution(layers, " / ".join(map(str, labels)) or f"layers {layers_text}", *stats_))
    return result


def rank_layers(layers: list[LayerContribution], ranked_by: RankBasis) -> tuple[int, ...]:
    """Layer indices by descending value of `ranked_by`, ties -> lower layer first; NaN values unranked."""
    key = {"contribution": lambda c: c.contribution, "delta": lambda c: c.delta, "score": lambda c: c.mean_score}
    if ranked_by == "none":
        return ()
    valued = [(key[ranked_by](c), c.layer) for c in layers if math.isfinite(key[ranked_by](c))]
    return tuple(layer for _, layer in sorted(valued, key=lambda vl: (-vl[0], vl[1])))


def depth_thirds(layers: list[LayerContribution], tol: float = 1e-9) -> tuple[float, float]:
    """(mean contribution of the middle third, mean of the first + last thirds) by relative depth."""
    in_middle = [1 / 3 - tol <= c.relative_depth <= 2 / 3 + tol for c in layers]
    middle = np.array([c.contribution for c, m in zip(layers, in_middle) if m], float)
    ends = np.array([c.contribution for c, m in zip(layers, in_middle) if not m], float)
    return _nanmean(middle), _nanmean(ends)


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def _num_layers(results: pd.DataFrame, done: pd.DataFrame) -> int:
    if "num_layers" in results.columns and results["num_layers"].notna().any():
        values = results["num_layers"].dropna().unique()
        if len(values) > 1:
            raise ValueError(f"results mix models of different depth (num_layers={sorted(values)}); aggregate one sweep at a time")
        return int(values[0])
    layers = done.loc[done["kind"] == "layers", "layer"].dropna()
    if not len(layers):
        return 0
    log.warning("results have no num_layers column; assuming L = max layer + 1")
    return int(layers.max()) + 1


def secondary_means(done: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Mean over seeds of each secondary score column, per trial group: base, full, layer i, layers i+j (in that
    order)."""
    columns = [c for c in done.columns if is_secondary_score(str(c))]
    if not columns:
        return {}
    group = done["kind"].where(done["kind"] != "layers", "layer " + done["layer"].astype("Int64").astype(str))
    if "layers" in done.columns:
        group = group.where(done["kind"] != "subset", "layers " + done["layers"].astype(str))
    order = sorted(group.dropna().unique(), key=lambda g: (g != "base", g != "full", g.startswith("layers "),
                                                           int(g.split()[1]) if g.startswith("layer ") else 0, g))
    means = done[columns].apply(pd.to_numeric, errors="coerce").groupby(group).mean()
    return {g: {c: float(means.loc[g, c]) for c in columns if pd.notna(means.loc[g, c])} for g in order}


def early_stop_message(results: pd.DataFrame, stopped_rows: pd.DataFrame, stopped_layers: list[int]) -> str:
    """Which trials early stopping ended, and the trial-steps the sweep spent against running everything."""
    training = results[results["kind"] != "base"]
    steps = pd.to_numeric(training["steps"], errors="coerce").fillna(0)
    budget = int(steps.max()) if len(steps) else 0
    spent, exhaustive = int(steps.sum()), budget * len(training)
    share = f" ({spent / exhaustive:.0%})" if exhaustive else ""
    layers = f"; layers with no finished seed (unranked): {stopped_layers}" if stopped_layers else ""
    return (f"early stopping ended {len(stopped_rows)} layer trial(s) (not ranked: {', '.join(stopped_rows['trial'].astype(str))})"
            f"{layers}; trial-steps spent {spent} of {exhaustive}{share}")


def summarize(results: pd.DataFrame, z: float = 2.0, abs_threshold: float = 0.02) -> SweepSummary:
    """Aggregate one sweep's results table (schema in the module docstring) into a SweepSummary.

    z, abs_threshold: the noise check (see `check_noise`). Failed and running trials are ignored; a
    missing base or full trial gives a message and NaN contributions, never an exception.
    """
    missing = [c for c in ("kind", "layer", "score") if c not in results.columns]
    if missing and len(results):
        raise ValueError(f"results table lacks columns {missing}; expected the schema in orchestrator.aggregate")
    results = results.reindex(columns=[*results.columns, *missing])
    sweeps = results["sweep"].dropna().unique() if "sweep" in results.columns else []
    if len(sweeps) > 1:
        raise ValueError(f"results hold several sweeps {list(sweeps)}; summarize each (or use compare.compare_sweeps)")
    done = finished(results)
    if "seed" not in done.columns:
        done = done.assign(seed=0)
    num_layers = _num_layers(results, done)
    by_seed = lambda kind: done[done["kind"] == kind].groupby("seed")["score"].mean()  # noqa: E731
    base_by_seed, full_by_seed = by_seed("base"), by_seed("full")
    sizes = pd.to_numeric(done["eval_size"], errors="coerce").dropna() if "eval_size" in done.columns else pd.Series(dtype=float)
    eval_size = float(sizes.median()) if len(sizes) else math.nan  # one shared eval set per sweep
    noise = check_noise(base_by_seed, full_by_seed, eval_size, z, abs_threshold)

    messages = [noise.message] if noise.method != "missing" else []
    if "status" in results.columns and (results["status"] == "no_learning").any():
        idle = ", ".join(results.loc[results["status"] == "no_learning", "trial"].astype(str))
        messages.append(f"not ranked, no learning signal (all-zero advantages or unchanged weights): {idle}")
    if base_by_seed.empty:
        messages.append("no finished base trial: S_base unknown, only mean layer scores are shown")
    if full_by_seed.empty:
        messages.append("no finished full trial that learnt: S_full unknown, contributions omitted")
    layer_rows = done[(done["kind"] == "layers") & done["layer"].notna()]
    layers = [
        _layer_row(int(layer), group.groupby("seed")["score"].mean(), base_by_seed, full_by_seed, noise, num_layers, eval_size)
        for layer, group in layer_rows.groupby("layer")
    ]
    all_layers = results.loc[results["kind"] == "layers", "layer"].dropna().astype(int).unique()
    stopped_rows = results[(results["kind"] == "layers") & (results["status"] == "stopped")] if "status" in results.columns else results.iloc[0:0]
    stopped = sorted({int(i) for i in stopped_rows["layer"].dropna()} - {c.layer for c in layers})
    if len(stopped_rows):
        messages.append(early_stop_message(results, stopped_rows, stopped))
    unfinished = sorted({int(i) for i in all_layers} - {c.layer for c in layers} - set(stopped))
    if unfinished:
        messages.append(f"layers without a finished trial (left out): {unfinished}")
    if not layers:
        messages.append("no finished layer trial")

    ranked_by: RankBasis = ("contribution" if noise.resolved else "delta" if not base_by_seed.empty else "score") if layers else "none"
    ranking = rank_layers(layers, ranked_by)
    rank_of = {layer: k + 1 for k, layer in enumerate(ranking)}
    layers = [replace(c, rank=rank_of.get(c.layer)) for c in layers]
    best = ranking[0] if ranking else None
    best_share = next((c.contribution for c in layers if c.layer == best), math.nan)
    middle, ends = depth_thirds(layers)
    summary = SweepSummary(
        sweep=str(sweeps[0]) if len(sweeps) else "", num_layers=num_layers,
        base_score=float(base_by_seed.mean()) if len(base_by_seed) else math.nan,
        full_score=float(full_by_seed.mean()) if len(full_by_seed) else math.nan,
        noise=noise, layers=tuple(layers), ranked_by=ranked_by, ranking=ranking, best_layer=best,
        best_share=best_share, middle_contribution=middle, ends_contribution=ends,
        counts={**trial_counts(results), "base_seeds": len(base_by_seed), "full_seeds": len(full_by_seed)},
        eval_size=eval_size, messages=tuple(messages),
        subsets=tuple(subset_rows(done, base_by_seed, full_by_seed, noise, eval_size)), secondary=secondary_means(done),
    )
    log.debug("sweep %s: %d layers aggregated, ranked by %s; %s", summary.sweep, len(layers), ranked_by, "; ".join(messages))
    return summary
