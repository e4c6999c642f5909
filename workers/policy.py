"""Per-token log-probs of sampled completions under the current policy, exploiting a frozen prefix.

When the lowest trainable layer is k, layers 0..k-1 and the embeddings are frozen, so the hidden states
entering layer k depend on the tokens only. `PolicyScorer.prefix` computes them once per micro-batch (no
grad, nothing stored for backward) by running the decoder until layer k's forward pre-hook fires; every
later pass of that batch (reference log-probs, each PPO epoch) runs layers k..L-1 only, and the LM head only
on completion positions. The backward therefore never reaches below layer k.

Two more passes are skipped. The last completion token predicts nothing that is scored, so no pass runs on it.
And when HF `generate` samples with the trainer's own module, it has already computed the hidden states
entering layer k at every scored position: `PolicyScorer.recording_prefix` keeps them, and the update then
runs no prefix at all.

The G rows of a group share one prompt, and a prompt's positions attend to nothing after them, so their
states are the same in each of the G rows. When the group's rows are laid out together, `logits` runs each
prompt once, repeats its key/value cache for the group's rows (as the HF engine does when it samples) and then
runs only the completion positions per row: on the default batch (128 rows, 8 prompt and 5 scored completion
positions) 768 positions per layer instead of 1664, with gradients flowing through the repeated cache into the
prompt's pass. It runs every layer in every pass, so a trial takes it only where it costs fewer layer-token
passes than the frozen prefix (`workers.scoring_cost`): the full reference and all but the top layers.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn
from transformers import PreTrainedModel

from rollout.engine import RolloutBatch
from rollout.hf_engine import plain_kv_cache
from workers.scoring_cost import ScoringPasses, ScoringShape, shared_prompt_is_cheaper
from workers.trainable import DecoderLayout


@dataclass
class ScoringInputs:
    """Prompt + completion rows laid out exactly as the engine generated them.

    input_ids_NL / attention_mask_NL / position_ids_NL: (N, S + T); completion_ids_NT / completion_mask_NT: (N, T).
    """

    input_ids_NL: torch.Tensor
    attention_mask_NL: torch.Tensor
    position_ids_NL: torch.Tensor
    prompt_length: int
    completion_ids_NT: torch.Tensor
    completion_mask_NT: torch.Tensor

    @classmethod
    def from_batch(cls, batch: RolloutBatch) -> "ScoringInputs":
        input_ids = torch.cat([batch.prompt_ids_NS, batch.completion_ids_NT], dim=1)
        attention_mask = torch.cat([batch.prompt_mask_NS, batch.completion_mask_NT], dim=1)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        return cls(
            input_ids_NL=input_ids,
            attention_mask_NL=attention_mask,
            position_ids_NL=position_ids,
            prompt_length=batch.prompt_ids_NS.shape[1],
            completion_ids_NT=batch.completion_ids_NT,
            completion_mask_NT=batch.completion_mask_NT,
        )

    @property
    def context_NL(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input ids, attention mask, position ids) of every position but the last: the last completion token
        is scored, but predicts nothing that is, so no pass needs to run on it."""
        return self.input_ids_NL[:, :-1], self.attention_mask_NL[:, :-1], self.position_ids_NL[:, :-1]

    def rows(self, rows: slice) -> "ScoringInputs":
        return ScoringInputs(
            input_ids_NL=self.input_ids_NL[rows],
            attention_mask_NL=self.attention_mask_NL[rows],
            position_ids_NL=self.position_ids_NL[rows],
            prompt_length=self.prompt_length,
            completion_ids_NT=self.completion_ids_NT[rows],
            completion_mask_NT=self.completion_mask_NT[rows],
        )


@dataclass
class PrefixState:
    """Hidden states entering the first trainable layer, and the keyword arguments that layer received."""

    hidden_NLH: torch.Tensor
    layer_kwargs: dict[str, Any]


class _PrefixDone(Exception):
    """Raised from the pre-hook to stop the forward once the frozen prefix has been computed."""


@dataclass
class RecordedPrefix:
    """Hidden states entering the first trainable layer, as HF `generate` computed them, in the order it ran:
    the prompt (once per group when the engine shares the prompt's cache across a group, see
    `rollout.hf_engine.shared_prompt_cache`), then one position per token it fed back."""

    chunks: list[torch.Tensor] = field(default_factory=list)

    def hidden_for(self, inputs: ScoringInputs, group_size: int) -> torch.Tensor | None:
        """(N, S + T - 1, H), the positions `inputs.context_NL` covers, the first chunk repeated for each of its
        group's `group_size` rows (consecutive) when it was run once per group; None when what was recorded does
        not line up with that (nothing was recorded, another engine or several calls generated), and the prefix
        is then computed."""
        num_rows, length = inputs.context_NL[0].shape
        if not self.chunks or any(chunk.shape[0] != num_rows for chunk in self.chunks[1:]):
            return None
        first = self.chunks[0]
        if first.shape[0] * group_size == num_rows and group_size > 1:
            first = first.repeat_interleave(group_size, dim=0)
        if first.shape[0] != num_rows:
            return None
        hidden = torch.cat([first, *self.chunks[1:]], dim=1)
        return hidden if hidden.shape[1] == length else None


def has_active_dropout(model: PreTrainedModel) -> bool:
    """Whether a forward in training mode differs from one in eval mode (generation runs in eval mode)."""
    if any(isinstance(module, nn.Dropout) and module.p > 0 for module in model.modules()):
        return True
    settings = model.config.to_dict()
    return any("dropout" in key and isinstance(value, (int, float)) and value > 0 for key, value in settings.items())


class PolicyScorer:
    def __init__(self, model: PreTrainedModel, layout: DecoderLayout, first_trainable_layer: int | None, temperature: float = 1.0,
                 group_size: int = 1):
        self.model = model
        self.group_size = group_size
        """Consecutive rows that share a prompt (the rollout's G); 1 scores every row on its own."""
        self.temperature = temperature
        self.layers: nn.ModuleList = model.get_submodule(layout.layers_path)
        decoder_path = layout.layers_path.rsplit(".", 1)[0] if "." in layout.layers_path else ""
        self.decoder = model.get_submodule(decoder_path) if decoder_path else model
        self.norm = getattr(self.decoder, "norm", None)
        self.lm_head = model.get_output_embeddings()
        self.first_trainable_layer = first_trainable_layer
        self.uses_prefix = first_trainable_layer is not None and self._suffix_is_uniform(first_trainable_layer)
        self.reuses_generation_prefix = self._reuses_generation_prefix()
        self.may_share_prompts = group_size > 1 and plain_kv_cache(model) is not None and not has_active_dropout(model)
        """Whether groups' prompts may be run once (a plain key/value cache; no dropout, whose masks would differ)."""

    def _suffix_is_uniform(self, first: int) -> bool:
        """Captured kwargs (attention mask) are reused for every suffix layer, so their types must agree."""
        if self.norm is None or self.lm_head is None:
            return False
        layer_types = getattr(self.model.config, "layer_types", None)
        return layer_types is None or len(set(layer_types[first:])) == 1

    def _reuses_generation_prefix(self) -> bool:
        """Whether hidden states recorded during generation can stand in for the prefix pass: there is a prefix
        worth skipping (k > 0), layer 0 takes the same mask as layer k (the layer keyword arguments are taken
        there, for the cost of the embedding lookup only), and no dropout makes training-mode states differ."""
        if not self.uses_prefix or not self.first_trainable_layer:
            return False
        layer_types = getattr(self.model.config, "layer_types", None)
        if layer_types is not None and layer_types[0] != layer_types[self.first_trainable_layer]:
            return False
        return not has_active_dropout(self.model)

    @contextmanager
    def recording_prefix(self) -> Iterator[RecordedPrefix]:
        """While open, every forward of the trainer's module that reaches the first trainable layer appends the
        hidden states entering it. Open it around one `generate` call of an engine that samples with this module."""
        recorded = RecordedPrefix()

        def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
            recorded.chunks.append((args[0] if args else kwargs["hidden_states"]).detach())

        handle = self.layers[self.first_trainable_layer].register_forward_pre_hook(record, with_kwargs=True)
        try:
            yield recorded
        finally:
            handle.remove()

    @torch.no_grad()
    def prefix(self, inputs: ScoringInputs, recorded_hidden_NLH: torch.Tensor | None = None,
               passes: ScoringPasses = ScoringPasses()) -> PrefixState | None:
        """The state entering the first trainable layer over `inputs.context_NL`: `recorded_hidden_NLH` (rows of
        `RecordedPrefix.hidden_for`) when given, with only the layer arguments computed here, else a prefix pass.
        None when there is no frozen prefix, or when scoring `inputs` `passes` times with each group's prompt run
        once costs less (`workers.scoring_cost`)."""
        if not self.uses_prefix:
            return None
        recorded = recorded_hidden_NLH is not None and self.reuses_generation_prefix
        if self.shares_prompts(inputs) and shared_prompt_is_cheaper(self._shape(inputs), len(self.layers),
                                                                    self.first_trainable_layer, recorded, passes):
            return None  # `logits` runs the whole model, each group's prompt once
        if recorded:
            arguments = self._state_entering(0, inputs)
            return PrefixState(hidden_NLH=recorded_hidden_NLH, layer_kwargs=arguments.layer_kwargs)
        return self._state_entering(self.first_trainable_layer, inputs)

    def _state_entering(self, layer_index: int, inputs: ScoringInputs) -> PrefixState:
        """Runs the decoder until `layer_index`'s forward pre-hook fires, and keeps what that layer received."""
        captured: dict[str, Any] = {}

        def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured["hidden"] = args[0] if args else kwargs.pop("hidden_states")
            captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            raise _PrefixDone

        input_ids, attention_mask, position_ids = inputs.context_NL
        handle = self.layers[layer_index].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        except _PrefixDone:
            pass
        finally:
            handle.remove()
        return PrefixState(hidden_NLH=captured["hidden"], layer_kwargs=captured["kwargs"])

    def shares_prompts(self, inputs: ScoringInputs) -> bool:
        """Whether every run of `group_size` consecutive rows of `inputs` holds one prompt, and it may be run once."""
        group, rows = self.group_size, inputs.input_ids_NL.shape[0]
        if not self.may_share_prompts or rows % group:
            return False
        prompt = slice(0, inputs.prompt_length)
        for tensor in (inputs.input_ids_NL[:, prompt], inputs.attention_mask_NL[:, prompt]):
            grouped = tensor.reshape(rows // group, group, -1)
            if not torch.equal(grouped, grouped[:, :1].expand_as(grouped)):
                return False
        return True

    def _shape(self, inputs: ScoringInputs) -> ScoringShape:
        rows, length = inputs.context_NL[0].shape
        return ScoringShape(rows=rows, group_size=self.group_size, prompt_length=inputs.prompt_length, context_length=length)

    def _shared_prompt_logits(self, inputs: ScoringInputs) -> torch.Tensor:
        """(N, T, V) logits as the whole-model pass gives them, each group's prompt run once: the prompt pass
        fills a key/value cache (and gives the logits predicting the first completion token), the cache is
        repeated for the group's rows, and the completion positions then run against it."""
        group, start = self.group_size, inputs.prompt_length
        input_ids, attention_mask, position_ids = inputs.context_NL
        cache = plain_kv_cache(self.model)
        prompt = self.model(input_ids=input_ids[::group, :start], attention_mask=attention_mask[::group, :start],
                            position_ids=position_ids[::group, :start], past_key_values=cache, use_cache=True,
                            logits_to_keep=1)
        first = prompt.logits.repeat_interleave(group, dim=0)
        if input_ids.shape[1] == start:  # one completion token: its logits come from the prompt's last position
            return first
        cache.batch_repeat_interleave(group)
        completion = self.model(input_ids=input_ids[:, start:], attention_mask=attention_mask,
                                position_ids=position_ids[:, start:], past_key_values=cache, use_cache=True)
        return torch.cat([first, completion.logits], dim=1)

    def logits(self, inputs: ScoringInputs, prefix: PrefixState | None) -> torch.Tensor:
        """(N, T, V) logits predicting each completion token (already divided by the temperature)."""
        start = inputs.prompt_length - 1
        width = inputs.completion_ids_NT.shape[1]
        if prefix is None and self.shares_prompts(inputs):
            logits = self._shared_prompt_logits(inputs)
        elif prefix is None:
            input_ids, attention_mask, position_ids = inputs.context_NL
            output = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                logits_to_keep=width,
            )
            logits = output.logits
        else:
            hidden = prefix.hidden_NLH
            for layer in self.layers[self.first_trainable_layer :]:
                out = layer(hidden, **prefix.layer_kwargs)
                hidden = out[0] if isinstance(out, tuple) else out
            logits = self.lm_head(self.norm(hidden[:, start : start + width]))
        logits = logits.float()  # no copy for an fp32 model
        return logits if self.temperature == 1.0 else logits / self.temperature  # at T = 1 a divide is a wasted pass over (N, T, V)

    def token_logp(self, inputs: ScoringInputs, prefix: PrefixState | None, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logp_NT, entropy_NT or None) of the sampled completion tokens."""
        logits = self.logits(inputs, prefix)
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, inputs.completion_ids_NT.unsqueeze(-1)).squeeze(-1)
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp, entropy
