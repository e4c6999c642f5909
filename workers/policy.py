"""Per-token log-probs of sampled completions under the current policy, exploiting a frozen prefix.

When the lowest trainable layer is k, layers 0..k-1 and the embeddings are frozen, so the hidden states
entering layer k depend on the tokens only. `PolicyScorer.prefix` computes them once per micro-batch (no
grad, nothing stored for backward) by running the decoder until layer k's forward pre-hook fires; every
later pass of that batch (reference log-probs, each PPO epoch) runs layers k..L-1 only, and the LM head only
on completion positions. The backward therefore never reaches below layer k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from rollout.engine import RolloutBatch
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


class PolicyScorer:
    def __init__(self, model: PreTrainedModel, layout: DecoderLayout, first_trainable_layer: int | None, temperature: float = 1.0):
        self.model = model
        self.temperature = temperature
        self.layers: nn.ModuleList = model.get_submodule(layout.layers_path)
        decoder_path = layout.layers_path.rsplit(".", 1)[0] if "." in layout.layers_path else ""
        self.decoder = model.get_submodule(decoder_path) if decoder_path else model
        self.norm = getattr(self.decoder, "norm", None)
        self.lm_head = model.get_output_embeddings()
        self.first_trainable_layer = first_trainable_layer
        self.uses_prefix = first_trainable_layer is not None and self._suffix_is_uniform(first_trainable_layer)

    def _suffix_is_uniform(self, first: int) -> bool:
        """Captured kwargs (attention mask) are reused for every suffix layer, so their types must agree."""
        if self.norm is None or self.lm_head is None:
            return False
        layer_types = getattr(self.model.config, "layer_types", None)
        return layer_types is None or len(set(layer_types[first:])) == 1

    @torch.no_grad()
    def prefix(self, inputs: ScoringInputs) -> PrefixState | None:
        if not self.uses_prefix:
            return None
        captured: dict[str, Any] = {}

        def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured["hidden"] = args[0] if args else kwargs.pop("hidden_states")
            captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            raise _PrefixDone

        handle = self.layers[self.first_trainable_layer].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            self.decoder(
                input_ids=inputs.input_ids_NL,
                attention_mask=inputs.attention_mask_NL,
                position_ids=inputs.position_ids_NL,
                use_cache=False,
            )
        except _PrefixDone:
            pass
        finally:
            handle.remove()
        return PrefixState(hidden_NLH=captured["hidden"], layer_kwargs=captured["kwargs"])

    def logits(self, inputs: ScoringInputs, prefix: PrefixState | None) -> torch.Tensor:
        """(N, T, V) logits predicting each completion token (already divided by the temperature)."""
        start = inputs.prompt_length - 1
        width = inputs.completion_ids_NT.shape[1]
        if prefix is None:
            output = self.model(
                input_ids=inputs.input_ids_NL,
                attention_mask=inputs.attention_mask_NL,
                position_ids=inputs.position_ids_NL,
                use_cache=False,
                logits_to_keep=width + 1,
            )
            logits = output.logits[:, :-1]
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
