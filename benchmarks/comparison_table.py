"""The tables of `benchmarks/vs_trl.py`: per-seed trial results merged into one row per trial, the top-1 layers
(on the mean over seeds and per seed), how a pruned sweep did against the exhaustive one, and the printed report.

Pure bookkeeping on plain dicts, so it is unit-tested without running either system. A result is
{"trial": "base" | "full" | a layer index, "seed": int, "score": float | None, "step_s": float, "steps": int};
None is an unscored trial (early-stopped, failed).
"""

from __future__ import annotations

import statistics


def merge_seeds(per_seed: list[dict]) -> dict:
    """One trial's results on several seeds as one result: `score` the mean of the scored seeds (None when none was
    scored, e.g. early-stopped in every seed), `step_s` the median of the seeds' median step times, `steps` their sum,
    and `scores` {seed: score or None}."""
    scored = [r["score"] for r in per_seed if r.get("score") is not None]
    steps = [r["step_s"] for r in per_seed if r.get("step_s") is not None]
    return {"trial": per_seed[0]["trial"], "score": statistics.fmean(scored) if scored else None,
            "step_s": statistics.median(steps) if steps else None, "steps": sum(r.get("steps", 0) for r in per_seed),
            "scores": {r["seed"]: r.get("score") for r in per_seed}}


def by_trial(results: list[dict]) -> dict:
    """{trial: merged result} from one result per (trial, seed)."""
    trials: dict[str, list[dict]] = {}
    for result in results:
        trials.setdefault(result["trial"], []).append(result)
    return {trial: merge_seeds(per_seed) for trial, per_seed in trials.items()}


def mean_scores(results: dict) -> dict[str, float | None]:
    """{trial: its score, the mean over the seeds it was scored in}."""
    return {trial: result["score"] for trial, result in results.items()}


def top1(results: dict) -> str:
    """The best single layer by mean score over the seeds, and that score, as each system's ranking puts it first.
    Where that layer was not scored in every seed (early-stopped in some), how many seeds the mean is over."""
    best = best_layer(mean_scores(results))
    if best is None:
        return "-"
    scores = results[best]["scores"].values()
    scored = sum(score is not None for score in scores)
    return f"{best} ({results[best]['score']:.3f}{'' if scored == len(scores) else f', {scored} of {len(scores)} seeds'})"


def ranked_layers(scores: dict[str, float | None]) -> list[str]:
    """The scored single layers of {trial: score}, best first (ties: the lower layer first)."""
    layers = {t: s for t, s in scores.items() if t not in ("base", "full") and s is not None}
    return sorted(layers, key=lambda t: (-layers[t], int(t)))


def best_layer(scores: dict[str, float | None]) -> str | None:
    """The best-scoring single layer of {trial: score} (base, full and unscored trials left out; ties go to the
    lower layer), None when no layer was scored."""
    return next(iter(ranked_layers(scores)), None)


def ranked_layers_per_seed(results: dict) -> dict[int, list[str]]:
    """{seed: that seed's scored single layers, best first}."""
    seeds = sorted({seed for r in results.values() for seed in r["scores"]})
    return {seed: ranked_layers({t: r["scores"].get(seed) for t, r in results.items()}) for seed in seeds}


def best_layer_per_seed(results: dict) -> dict[int, str | None]:
    """{seed: that seed's best single layer} (None where the seed scored no layer)."""
    return {seed: next(iter(ranked), None) for seed, ranked in ranked_layers_per_seed(results).items()}


def top1_per_seed(results: dict) -> str:
    """Each seed's best single layer, e.g. `1 / 1 / 0` for seeds 0, 1, 2 (`-` where the seed scored no layer)."""
    return " / ".join(layer or "-" for layer in best_layer_per_seed(results).values())


def pruning_summary(pruned: dict, exhaustive: dict) -> str:
    """How a pruned sweep (probe top-m, early stopping) did against the exhaustive one on the same seeds: in how
    many seeds its top-1 is the exhaustive top-1, how many of each seed's exhaustive top-3 layers it ranked in its
    own top-3, and its trial-steps as a share of the exhaustive ones."""
    found, best = ranked_layers_per_seed(pruned), ranked_layers_per_seed(exhaustive)
    hits = sum(bool(ranked) and found.get(seed, [])[:1] == ranked[:1] for seed, ranked in best.items())
    top3 = sum(len(set(found.get(seed, [])[:3]) & set(ranked[:3])) for seed, ranked in best.items())
    spent, total = (sum(r.get("steps", 0) for r in results.values()) for results in (pruned, exhaustive))
    return (f"exhaustive top-1 found in {hits} of {len(best)} seeds, top-3 layers {top3} of "
            f"{sum(len(ranked[:3]) for ranked in best.values())}; trial-steps {spent} of {total} ({spent / total:.0%})")


def _number(results: dict, trial: str, key: str, width: int) -> str:
    """A trial's value right-aligned in `width`; `-` for a trial the system did not run or did not score (a layer
    the probe left out, an early-stopped trial)."""
    value = results.get(trial, {}).get(key)
    return f"{value:>{width}.3f}" if value is not None else f"{'-':>{width}}"


def report(systems: dict[str, tuple[float, dict]], layers: list[int]) -> str:
    """One row per system (wall, median step of full / first / last layer, scores, top-1), then every score."""
    first, last = str(layers[0]), str(layers[-1])
    lines = [f"{'system':<44}{'sweep wall s':>13}{'step full':>11}{'step L' + first:>9}{'step L' + last:>9}"
             f"{'S_base':>8}{'S_full':>8}{'trial-steps':>12}  top-1 layer (mean)  per seed"]
    for name, (wall, results) in systems.items():
        steps = "".join(_number(results, t, "step_s", width) for t, width in (("full", 11), (first, 9), (last, 9)))
        lines.append(f"{name:<44}{wall:>13.1f}{steps}{_number(results, 'base', 'score', 8)}{_number(results, 'full', 'score', 8)}"
                     f"{sum(r.get('steps', 0) for r in results.values()):>12}  {top1(results):<18}  {top1_per_seed(results)}")
    lines.append("\nheld-out score per trial (mean over seeds)\n" + f"{'trial':<8}" + "".join(f"{name[:42]:>44}" for name in systems))
    for trial in ["base", "full", *map(str, layers)]:
        lines.append(f"{trial:<8}" + "".join(_number(results, trial, "score", 44) for _, results in systems.values()))
    return "\n".join(lines)
