"""Which way of scoring a batch of group rollouts costs fewer layer-token passes: the frozen-prefix way or the
shared-prompt way (see `workers.policy`).

Frozen prefix: every row runs its whole context (prompt + completion) through the trainable layers k..L-1 in
each pass, and once through the frozen layers 0..k-1 (no pass at all when generation recorded the states
entering layer k). Shared prompt: the G rows of a group share their prompt, so the prompt runs once per group
and only the completion positions run per row, but through every layer in every pass (the frozen layers are
not kept between passes). A backward pass through a layer costs about twice its forward. Attention's own
cost and the LM head (the same in both) are left out: at the lengths RL prompts and completions have here the
layers' matrix products dominate.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKWARD_TO_FORWARD = 2.0
"""A layer's backward pass (gradients of its inputs and weights) against its forward: two matrix products per one."""


@dataclass(frozen=True)
class ScoringShape:
    """A micro-batch to score: `rows` rows in groups of `group_size` consecutive rows sharing a prompt of
    `prompt_length` positions, `context_length` positions in all (prompt + scored completion context)."""

    rows: int
    group_size: int
    prompt_length: int
    context_length: int


@dataclass(frozen=True)
class ScoringPasses:
    """How often a batch is scored: forward passes (reference, old log-probs, one per PPO epoch) and backward
    passes (one per PPO epoch)."""

    forward: int = 1
    backward: int = 1


def frozen_prefix_cost(shape: ScoringShape, num_layers: int, first_trainable: int, prefix_recorded: bool,
                       passes: ScoringPasses) -> float:
    """Layer-token units of the frozen-prefix way: the prefix once (unless recorded), then the trainable layers
    over every position in each pass."""
    positions = shape.rows * shape.context_length
    trainable = num_layers - first_trainable
    prefix = 0.0 if prefix_recorded else float(first_trainable * positions)
    return prefix + positions * trainable * (passes.forward + BACKWARD_TO_FORWARD * passes.backward)


def shared_prompt_cost(shape: ScoringShape, num_layers: int, first_trainable: int, passes: ScoringPasses) -> float:
    """Layer-token units of the shared-prompt way: a prompt per group and the completion positions per row,
    through every layer in each forward pass and through the trainable ones in each backward pass."""
    completion = shape.context_length - shape.prompt_length
    positions = (shape.rows // shape.group_size) * shape.prompt_length + shape.rows * completion
    trainable = num_layers - first_trainable
    return positions * (num_layers * passes.forward + BACKWARD_TO_FORWARD * trainable * passes.backward)


def shared_prompt_is_cheaper(shape: ScoringShape, num_layers: int, first_trainable: int, prefix_recorded: bool,
                             passes: ScoringPasses) -> bool:
    return (shared_prompt_cost(shape, num_layers, first_trainable, passes)
            < frozen_prefix_cost(shape, num_layers, first_trainable, prefix_recorded, passes))
