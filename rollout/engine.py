"""The rollout-engine contract shared by the HF `generate` engine and the vLLM engine.

A trial only ever talks to an engine through `RolloutEngine`, so vLLM can replace HF generate without
the trainer noticing. The record that comes back holds exactly the token ids the trainer will score,
so sampling and scoring cannot disagree about what was generated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence

import torch


def derived_seed(seed: int | None, index: int) -> int | None:
    """The seed of the `index`-th draw of a seeded sequence (a trial's steps, an episode's turns): a pure
    function of (seed, index), so a resumed trial samples exactly what it would have sampled."""
    return None if seed is None else (seed * 1_000_003 + index) % (2**63)


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample one group per prompt."""

    group_size: int
    """G: completions sampled per prompt."""
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    """Seed for this call's sampling; None leaves the engine's generator as it is."""


@dataclass
class RolloutBatch:
    """G completions for each of P prompts, N = P * G rows, prompt-major (rows p*G .. p*G+G-1 share prompt p).

    prompt_ids_NS: (N, S) prompt token ids, LEFT-padded with pad_token_id.
    prompt_mask_NS: (N, S) 1 on real prompt tokens.
    completion_ids_NT: (N, T) sampled token ids, RIGHT-padded with pad_token_id; includes EOS when sampled.
    completion_mask_NT: (N, T) 1 on sampled tokens (EOS included), 0 on padding.
    sample_logp_NT: (N, T) log-probability of each sampled token under the sampling distribution
        (after temperature / top-p), 0 on padding.
    group_index_N: (N,) index of the prompt each row was sampled for.
    completions_text: N decoded completions (special tokens stripped).
    """

    prompt_ids_NS: torch.Tensor
    prompt_mask_NS: torch.Tensor
    completion_ids_NT: torch.Tensor
    completion_mask_NT: torch.Tensor
    sample_logp_NT: torch.Tensor
    group_index_N: torch.Tensor
    completions_text: list[str]
    stats: dict[str, float] = field(default_factory=dict)
    """Engine-side measurements for this call (e.g. generate_seconds, generated_tokens)."""

    @property
    def num_rows(self) -> int:
        return int(self.completion_ids_NT.shape[0])


class RolloutEngine(Protocol):
    """Generates groups from the weights it currently holds; accepts updates of some tensors by name."""

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> RolloutBatch:
        """Sample `settings.group_size` completions for every prompt (prompt-major order)."""
        ...

    def greedy(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """One greedy completion per prompt, decoded; used for evaluation."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, float]:
        """Load these tensors (HF parameter names, e.g. `model.layers.3.mlp.up_proj.weight`) into the engine.

        Only the given tensors change. Returns {"sync_bytes": ..., "sync_seconds": ...}.
        """
        ...

    def sleep(self) -> None:
        """Free what the engine holds on the accelerator while the trainer updates (vLLM sleep mode on GPU,
        when `rollout.vllm.enable_sleep_mode`); a no-op otherwise. `update_weights` wakes it first."""
        ...

    def close(self) -> None:
        """Release the engine's resources (processes, memory)."""
        ...
