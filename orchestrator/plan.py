"""The sweep plan: which trials run, in the order Tune starts them: the full-parameter reference first, then one
trial per candidate layer, then the base evaluation."""

from __future__ import annotations

from orchestrator.config import LayerRange, SweepConfig
from workers.spec import TrialSpec


def candidate_layers(layers: str | list[int] | LayerRange, num_layers: int) -> list[int]:
    if layers == "all":
        return list(range(num_layers))
    if isinstance(layers, LayerRange):
        stop = num_layers if layers.stop is None else layers.stop
        chosen = list(range(layers.start, stop, layers.step))
    else:
        chosen = sorted(set(layers))
    bad = [i for i in chosen if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"layers: {bad} out of range for a model with {num_layers} decoder layers (0-{num_layers - 1})")
    if not chosen:
        raise ValueError(f"layers={layers} selects no layer of a {num_layers}-layer model")
    return chosen


def plan_trials(cfg: SweepConfig, num_layers: int, layers: list[int] | None = None) -> list[TrialSpec]:
    """Full, one trial per layer (`layers`, else every candidate layer) and seed, then base.

    Longest first, so the slots finish close together: full costs most, then the lowest layers (a higher layer's
    step skips the frozen layers below it). Base last, for two reasons: it only evaluates, so it fills an idle
    slot in the sweep's tail; and first, it would finish while the other slots' actors are still starting, and
    Tune (with warm actors) then hands the next trial that free actor and kills the starting one, so a slot waited
    through a second cold start (measured: 7 s of one slot of the default sweep)."""
    seeds = cfg.seed_list
    specs: list[TrialSpec] = []
    if cfg.include_full:
        specs.extend(TrialSpec("full", seed=seed) for seed in seeds)
    for layer in layers if layers is not None else candidate_layers(cfg.layers, num_layers):
        for seed in seeds:
            specs.append(TrialSpec("layers", (layer,), seed=seed))
    if cfg.include_base:  # greedy evaluation of fixed weights: one base trial serves every seed
        specs.append(TrialSpec("base", seed=seeds[0]))
    return specs
