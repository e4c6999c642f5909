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
from workers.algorithms.losses import LOSS_AGGREGATIONS
from workers.algorithms.probe_signals import adam_first_step, block_influence, relative_gradient
from workers.base_model import load_model_and_tokenizer, resolve_model_dir
from workers.collect import build_collector
from workers.config import TrialConfig
from workers.policy import PolicyScorer, PrefixState, ScoringInputs
from workers.spec import TrialSpec
from workers.trainable import DecoderLayout, find_decoder_layout, select_trainable
from workers.update import NonFiniteLossError, UpdateBatch, row_slices, trial_token_loss

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


def _micro_loss(scorer: PolicyScorer, inputs: ScoringInputs, prefix: PrefixState | None, adv_N: torch.Tensor,
                old_NT: torch.Tensor | None, sample_logp_NT: torch.Tensor, denominator: torch.Tensor,
                cfg: TrialConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, log-probs) of one micro-batch: the trials' per-token PPO-clip loss (times the truncated IS weight
    when configured) summed as their aggregation sums it, over the whole batch's `denominator`; old log-probs
    default to the current ones (the first step of an update). The KL term is left out: it is zero at the base
    weights and second order after one step."""
    logp_NT, _ = scorer.token_logp(inputs, prefix)
    old_NT = old_NT if old_NT is not None else logp_NT.detach()
    terms = trial_token_loss(logp_NT, old_NT, adv_N, sample_logp_NT, cfg.algorithm)
    loss = LOSS_AGGREGATIONS.get(cfg.algorithm.aggregation).numerator(terms.loss_NT, inputs.completion_mask_NT.float()) / denominator
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"probe: the surrogate loss is {float(loss)}")
    return loss, logp_NT.detach()


def _denominator(batch: UpdateBatch, cfg: TrialConfig) -> torch.Tensor:
    aggregation = LOSS_AGGREGATIONS.get(cfg.algorithm.aggregation)
    return aggregation.denominator(batch.inputs.completion_mask_NT.float(), cfg.rollout.max_new_tokens)


def surrogate_loss(scorer: PolicyScorer, batch: UpdateBatch, cfg: TrialConfig, old_logps: list[torch.Tensor] | None = None,
                   backward: bool = False) -> tuple[float, list[torch.Tensor]]:
    """The trials' surrogate loss of `batch` (`_micro_loss`), micro-batch by micro-batch, backward after each when
    asked. Returns the loss and the log-probs of each micro-batch it was computed at."""
    denominator = _denominator(batch, cfg)
    total, logps = 0.0, []
    for index, rows in enumerate(row_slices(batch.adv_N.shape[0], cfg.algorithm.micro_batch_size)):
        inputs = batch.inputs.rows(rows)
        loss, logp_NT = _micro_loss(scorer, inputs, scorer.prefix(inputs), batch.adv_N[rows],
                                    old_logps[index] if old_logps is not None else None, batch.sample_logp_NT[rows], denominator, cfg)
        if backward:
            loss.backward()
        total += float(loss.detach())
        logps.append(logp_NT)
    return total, logps


def _influences(scorer: PolicyScorer, batches: list[UpdateBatch], micro_batch_size: int) -> list[float]:
    """block_influence of every decoder layer over all real tokens of `batches`, micro-batch by micro-batch."""
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
            for inputs in (b.inputs.rows(rows) for b in batches for rows in row_slices(b.adv_N.shape[0], micro_batch_size)):
                mask["NL"] = inputs.attention_mask_NL
                scorer.decoder(input_ids=inputs.input_ids_NL, attention_mask=inputs.attention_mask_NL,
                               position_ids=inputs.position_ids_NL, use_cache=False)
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

    influences = _influences(scorer, rollouts.held_out + rollouts.gradient, cfg.algorithm.micro_batch_size)
    lookahead = _lookahead(scorer, selection.layout, rollouts.held_out, cfg, layers, layer_params, gradients)
    sizes = [relative_gradient(gradients[layer], [p.detach() for p in layer_params[layer]]) for layer in layers]
    return {"lookahead": [lookahead[layer] for layer in layers], "relative_gradient": [ratio for _, _, ratio in sizes],
            "grad_norm": [norm for norm, _, _ in sizes], "block_influence": [influences[layer] for layer in layers]}


@torch.no_grad()
def _lookahead(scorer: PolicyScorer, layout: DecoderLayout, held_out: list[UpdateBatch], cfg: TrialConfig, layers: list[int],
               layer_params: list[list[torch.nn.Parameter]], gradients: list[list[torch.Tensor]]) -> dict[int, float]:
    """Layer -> held-out surrogate loss before minus after AdamW's first step on that layer alone.

    One held-out micro-batch at a time (memory as in a trial): the base model's hidden states entering layer i are
    carried upward one layer at a time, so judging layer i's step runs layers i..L-1 only, half a forward pass on
    average. Models whose layers need different masks (PolicyScorer.uses_prefix false) run whole passes."""
    gains = {layer: 0.0 for layer in layers}
    lr = first_step_lr(cfg)
    for batch in held_out:
        denominator = _denominator(batch, cfg)
        for rows in row_slices(batch.adv_N.shape[0], cfg.algorithm.micro_batch_size):
            inputs, adv_N, sample_NT = batch.inputs.rows(rows), batch.adv_N[rows], batch.sample_logp_NT[rows]
            state = scorer.prefix(inputs)  # entering layer 0; None when the model needs whole passes
            before, old_NT = _micro_loss(scorer, inputs, state, adv_N, None, sample_NT, denominator, cfg)
            below = 0
            for layer in sorted(layers):
                if state is not None:
                    for block in scorer.layers[below:layer]:
                        out = block(state.hidden_NLH, **state.layer_kwargs)
                        state = PrefixState(out[0] if isinstance(out, tuple) else out, state.layer_kwargs)
                    below = layer
                layer_scorer = PolicyScorer(scorer.model, layout, layer if state is not None else None, scorer.temperature)
                saved = [p.detach().clone() for p in layer_params[layer]]
                for p, g in zip(layer_params[layer], gradients[layer]):
                    p.add_(adam_first_step(g, lr))
                after, _ = _micro_loss(layer_scorer, inputs, state, adv_N, old_NT, sample_NT, denominator, cfg)
                for p, value in zip(layer_params[layer], saved):
                    p.copy_(value)
                gains[layer] += float(before - after)
    return gains


def probe_layers(cfg: TrialConfig, layers: list[int], batches: int, num_threads: int | None = None) -> ProbeResult:
    """Every signal for each of `layers`, from `batches` rollout batches of the base model (the prompts of the
    first `batches` training steps)."""
    started = time.perf_counter()
    if num_threads:
        torch.set_num_threads(num_threads)
    model_dir = resolve_model_dir(cfg)
    # float32 whatever the trials' dtype: a first-step update of ~1e-6 would mostly round away in bf16 weights
    model, tokenizer = load_model_and_tokenizer(model_dir, "float32")
    rollouts = probe_rollouts(cfg, model, tokenizer, model_dir, batches)
    rollout_seconds = time.perf_counter() - started
    signals = measure_signals(model, cfg, rollouts, layers)
    info = {"batches": batches, "rows_per_batch": int(rollouts.gradient[0].adv_N.shape[0]), "reward_mean": rollouts.reward_mean,
            "rollout_seconds": rollout_seconds, "seconds": time.perf_counter() - started, "threads": torch.get_num_threads()}
    return ProbeResult(list(layers), signals, info)
