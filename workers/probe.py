"""Rank layers without RL: measure zero-training signals on base-model rollouts (`layersweep probe`).

A sweep spends one RL run per candidate layer to learn C(i). The probe spends a few rollout batches of the
base model (the prompts of the sweep's first steps, sampled exactly as a trial would) and one backward pass
per batch, then measures for every candidate layer the signals of `workers.algorithms.probe_signals`:

- `lookahead`: the drop of the RL surrogate loss on held-out rollouts after AdamW's first step on that layer
  alone (step taken from the gradient of the other rollouts): what the first step of
  single-layer training buys, measured on prompts the step did not see (lr: a layer trial's first-step learning
  rate, optim.lr_layers / warmup_steps);
- `relative_gradient` and `grad_norm`: the size of the layer's policy gradient (the mean over the gradient
  batches), relative to its weights and absolute;
- `block_influence`: how much the layer changes the residual stream (1 - cos of its input and output).

The gradient of the surrogate with respect to layer i is the same whether every layer or only layer i is
trainable, so one backward pass with all decoder layers trainable gives every layer's gradient.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rollout.factory import build_engine
from rollout.tasks.registry import build_task
from workers.algorithms.losses import LOSS_AGGREGATIONS, policy_token_loss
from workers.algorithms.probe_signals import SIGNALS, adam_first_step, block_influence, relative_gradient
from workers.base_model import load_model_and_tokenizer, resolve_model_dir
from workers.collect import build_collector
from workers.config import TrialConfig
from workers.policy import PolicyScorer, PrefixState
from workers.spec import TrialSpec
from workers.trainable import DecoderLayout, find_decoder_layout, select_trainable
from workers.update import UpdateBatch, row_slices

class NoProbeSignalError(ValueError):
    """Every rollout group of the probe had equal rewards: no advantage, no gradient, nothing to rank by."""


@dataclass
class ProbeResult:
    layers: list[int]
    signals: dict[str, list[float]]
    """Signal name -> one value per entry of `layers`."""
    info: dict[str, Any] = field(default_factory=dict)
    """What was measured on: rows per batch, reward mean, seconds."""

    def rows(self) -> list[dict[str, float]]:
        return [{"layer": layer, **{name: values[k] for name, values in self.signals.items()}} for k, layer in enumerate(self.layers)]


def surrogate_loss(scorer: PolicyScorer, batch: UpdateBatch, cfg: TrialConfig, old_logps: list[torch.Tensor] | None = None,
                   backward: bool = False, prefixes: list[PrefixState | None] | None = None) -> tuple[float, list[torch.Tensor]]:
    """The trials' PPO-clip loss of `batch`, aggregated as they aggregate it, micro-batch by micro-batch (backward
    after each when asked); old log-probs default to the current ones (the first step of an update), the hidden
    states entering the scorer's first trainable layer to the scorer's own prefix pass. Returns the loss and the
    log-probs it was computed at."""
    algorithm = cfg.algorithm
    aggregation = LOSS_AGGREGATIONS.get(algorithm.aggregation)
    mask_NT = batch.inputs.completion_mask_NT.float()
    denominator = aggregation.denominator(mask_NT, cfg.rollout.max_new_tokens)
    total, logps = 0.0, []
    for index, rows in enumerate(row_slices(mask_NT.shape[0], algorithm.micro_batch_size)):
        inputs = batch.inputs.rows(rows)
        logp_NT, _ = scorer.token_logp(inputs, prefixes[index] if prefixes is not None else scorer.prefix(inputs))
        old_NT = old_logps[index] if old_logps is not None else logp_NT.detach()
        terms = policy_token_loss(logp_NT, old_NT, batch.adv_N[rows], algorithm.clip_eps_low, algorithm.clip_eps_high)
        loss = aggregation.numerator(terms.loss_NT, mask_NT[rows]) / denominator
        if backward:
            loss.backward()
        total += float(loss.detach())
        logps.append(logp_NT.detach())
    return total, logps


def _influences(scorer: PolicyScorer, batches: list[UpdateBatch]) -> list[float]:
    """block_influence of every decoder layer over all real tokens of `batches`."""
    sums = [[0.0, 0.0] for _ in scorer.layers]
    mask: dict[str, torch.Tensor] = {}

    def hook(index: int):
        def record(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            hidden_in = args[0] if args else kwargs["hidden_states"]
            hidden_out = output[0] if isinstance(output, tuple) else output
            value, count = block_influence(hidden_in, hidden_out, mask["NL"])
            sums[index][0] += value
            sums[index][1] += count
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(scorer.layers)]
    try:
        with torch.no_grad():
            for batch in batches:
                mask["NL"] = batch.inputs.attention_mask_NL
                scorer.decoder(input_ids=batch.inputs.input_ids_NL, attention_mask=batch.inputs.attention_mask_NL,
                               position_ids=batch.inputs.position_ids_NL, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return [value / count if count else float("nan") for value, count in sums]


@dataclass
class ProbeRollouts:
    """Base-model rollout batches: `gradient` gives each layer's gradient, `held_out` judges the lookahead step."""

    gradient: list[UpdateBatch]
    held_out: list[UpdateBatch]
    reward_mean: float


def first_step_lr(cfg: TrialConfig) -> float:
    """The learning rate of a layer trial's first step: optim.lr_layers at the start of its linear warmup."""
    return cfg.optim.lr_layers / max(cfg.optim.warmup_steps, 1)


def probe_rollouts(cfg: TrialConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_dir: Path | str,
                   batches: int) -> ProbeRollouts:
    """The rollouts of the first `batches` training steps, sampled as a trial samples them; even steps give the
    gradient, odd steps are held out."""
    if batches < 2:
        raise ValueError(f"probe batches={batches}: at least 2 are needed (one for the gradient, one held out)")
    engine = build_engine(cfg.rollout, model, tokenizer, Path(model_dir), cfg.seed)
    try:
        collector = build_collector(build_task(cfg.task, tokenizer), engine, cfg, [], tokenizer.pad_token_id)
        collected = [collector.collect(step, cfg.seed) for step in range(batches)]
    finally:
        engine.close()
    rollouts = ProbeRollouts([c.batch for c in collected[0::2]], [c.batch for c in collected[1::2]],
                             sum(c.metrics["reward_mean"] for c in collected) / len(collected))
    if not any(bool((b.adv_N != 0).any()) for b in rollouts.gradient):
        raise NoProbeSignalError(f"probe: all {len(rollouts.gradient)} gradient batches have zero advantage (every group's "
                                 "rewards are equal); raise the probe's batches or rollout.group_size")
    return rollouts


def measure_signals(model: PreTrainedModel, cfg: TrialConfig, rollouts: ProbeRollouts, layers: list[int]) -> dict[str, list[float]]:
    """Signal name -> one value per entry of `layers`. Leaves the model's weights as they were (every decoder
    layer left trainable)."""
    selection = select_trainable(model, TrialSpec("subset", tuple(range(find_decoder_layout(model).num_layers))))
    bad = [i for i in layers if not 0 <= i < selection.layout.num_layers]
    if bad:
        raise ValueError(f"layers: {bad} out of range for a model with {selection.layout.num_layers} decoder layers")
    scorer = PolicyScorer(model, selection.layout, 0, cfg.rollout.temperature)
    params = dict(model.named_parameters())
    layer_params = [[params[n] for n in selection.parameter_names if n.startswith(f"{selection.layout.layers_path}.{i}.")]
                    for i in range(selection.layout.num_layers)]
    model.zero_grad(set_to_none=True)
    for batch in rollouts.gradient:
        surrogate_loss(scorer, batch, cfg, backward=True)
    gradients = [[p.grad.detach() / len(rollouts.gradient) if p.grad is not None else torch.zeros_like(p) for p in group]
                 for group in layer_params]
    model.zero_grad(set_to_none=True)

    influences = _influences(scorer, rollouts.held_out + rollouts.gradient)
    lookahead: dict[int, float] = {}
    with torch.no_grad():
        before = [surrogate_loss(scorer, batch, cfg) for batch in rollouts.held_out]
        carried = _CarriedPrefixes(scorer, selection.layout, rollouts.held_out, cfg.algorithm.micro_batch_size)
        for layer in sorted(layers):  # each layer's step is judged from the base hidden states entering it
            layer_scorer, prefixes = carried.at(layer)
            saved = [p.detach().clone() for p in layer_params[layer]]
            for p, g in zip(layer_params[layer], gradients[layer]):
                p.add_(adam_first_step(g, first_step_lr(cfg)))
            after = sum(surrogate_loss(layer_scorer, batch, cfg, old, prefixes=batch_prefixes)[0]
                        for batch, (_, old), batch_prefixes in zip(rollouts.held_out, before, prefixes))
            for p, value in zip(layer_params[layer], saved):
                p.copy_(value)
            lookahead[layer] = sum(loss for loss, _ in before) - after
    sizes = [relative_gradient(gradients[layer], [p.detach() for p in layer_params[layer]]) for layer in layers]
    return {"lookahead": [lookahead[layer] for layer in layers], "relative_gradient": [ratio for _, _, ratio in sizes],
            "grad_norm": [norm for norm, _, _ in sizes], "block_influence": [influences[layer] for layer in layers]}


class _CarriedPrefixes:
    """The base model's hidden states entering layer i of every held-out micro-batch, carried upward one layer at a
    time: judging layer i's lookahead step then runs layers i..L-1 only, half a forward pass on average instead of
    a whole one. Models whose layers need different masks (PolicyScorer.uses_prefix false) run whole passes."""

    def __init__(self, scorer: PolicyScorer, layout: DecoderLayout, batches: list[UpdateBatch], micro_batch_size: int) -> None:
        self.scorer, self.layout, self.layer = scorer, layout, 0
        self.states = [[scorer.prefix(batch.inputs.rows(rows)) for rows in row_slices(batch.adv_N.shape[0], micro_batch_size)]
                       for batch in batches]

    def at(self, layer: int) -> tuple[PolicyScorer, list[list[PrefixState | None]]]:
        """(a scorer whose first trainable layer is `layer`, the states entering it); call with rising layers."""
        scorer = self.scorer
        if not scorer.uses_prefix:
            return PolicyScorer(scorer.model, self.layout, None, scorer.temperature), [[None] * len(s) for s in self.states]
        for state in (state for batch in self.states for state in batch):
            for block in scorer.layers[self.layer:layer]:
                out = block(state.hidden_NLH, **state.layer_kwargs)
                state.hidden_NLH = out[0] if isinstance(out, tuple) else out
        self.layer = layer
        return PolicyScorer(scorer.model, self.layout, layer, scorer.temperature), self.states


def probe_layers(cfg: TrialConfig, layers: list[int], batches: int = 8, num_threads: int | None = None) -> ProbeResult:
    """Every signal for each of `layers`, from `batches` rollout batches of the base model (the prompts of the
    first `batches` training steps)."""
    started = time.perf_counter()
    if num_threads:
        torch.set_num_threads(num_threads)
    model_dir = resolve_model_dir(cfg)
    model, tokenizer = load_model_and_tokenizer(model_dir, cfg.model.dtype)
    rollouts = probe_rollouts(cfg, model, tokenizer, model_dir, batches)
    rollout_seconds = time.perf_counter() - started
    signals = measure_signals(model, cfg, rollouts, layers)
    info = {"batches": batches, "rows_per_batch": int(rollouts.gradient[0].adv_N.shape[0]), "reward_mean": rollouts.reward_mean,
            "rollout_seconds": rollout_seconds, "seconds": time.perf_counter() - started}
    return ProbeResult(list(layers), signals, info)
