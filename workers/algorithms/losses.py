"""Token-level policy losses and their aggregation into one scalar.

Losses return per-token values; aggregations split into a numerator (summed per micro-batch) and a
denominator (computed once for the whole batch from masks), so the gradient of a batch is identical however
it is cut into micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from rollout.basics import Registry


def ppo_clip_token_loss(
    logp_NT: torch.Tensor,
    old_logp_NT: torch.Tensor,
    adv_N: torch.Tensor,
    clip_eps_low: float,
    clip_eps_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-clip (Schulman et al. 2017, eq. 7) per token: -min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A).

    Returns (loss_NT, clipped_NT) where clipped marks tokens whose clipped branch was taken.
    """
    ratio_NT = torch.exp(logp_NT - old_logp_NT)
    adv_N1 = adv_N.unsqueeze(-1)
    unclipped_NT = ratio_NT * adv_N1
    clipped_NT = torch.clamp(ratio_NT, 1.0 - clip_eps_low, 1.0 + clip_eps_high) * adv_N1
    loss_NT = -torch.minimum(unclipped_NT, clipped_NT)
    return loss_NT, (clipped_NT < unclipped_NT).detach()


def truncated_is_weight(trainer_logp_NT: torch.Tensor, engine_logp_NT: torch.Tensor, cap: float) -> torch.Tensor:
    """min(pi_trainer / pi_engine, cap) per token: truncated importance sampling (Yao et al. 2025, "Your Efficient
    RL Framework Secretly Brings You Off-Policy RL Training"), correcting for the rollout engine sampling from
    slightly different probabilities than the trainer computes; the cap bounds the variance."""
    return torch.exp(trainer_logp_NT - engine_logp_NT).clamp(max=cap)


def k3_kl(logp_NT: torch.Tensor, ref_logp_NT: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref) per token: exp(ref - logp) - (ref - logp) - 1 >= 0."""
    log_ratio_NT = ref_logp_NT - logp_NT
    return torch.exp(log_ratio_NT) - log_ratio_NT - 1.0


class TokenLoss(NamedTuple):
    loss_NT: torch.Tensor
    """What is aggregated and differentiated: the (IS-weighted) policy loss plus beta * KL."""
    pg_NT: torch.Tensor
    """The (IS-weighted) policy-gradient part alone."""
    kl_NT: torch.Tensor | None
    """k3 KL per token, when a reference was given."""
    clipped_NT: torch.Tensor
    """Tokens whose clipped PPO branch was taken."""


def policy_token_loss(
    logp_NT: torch.Tensor,
    old_logp_NT: torch.Tensor,
    adv_N: torch.Tensor,
    clip_eps_low: float,
    clip_eps_high: float,
    is_weight_NT: torch.Tensor | None = None,
    ref_logp_NT: torch.Tensor | None = None,
    kl_beta: float = 0.0,
) -> TokenLoss:
    """The per-token objective of every algorithm here: PPO-clip, times the truncated IS weight if given, plus
    kl_beta * k3 KL to the reference if given."""
    pg_NT, clipped_NT = ppo_clip_token_loss(logp_NT, old_logp_NT, adv_N, clip_eps_low, clip_eps_high)
    if is_weight_NT is not None:
        pg_NT = pg_NT * is_weight_NT
    kl_NT = k3_kl(logp_NT, ref_logp_NT) if ref_logp_NT is not None else None
    loss_NT = pg_NT + kl_beta * kl_NT if kl_NT is not None else pg_NT
    return TokenLoss(loss_NT, pg_NT, kl_NT, clipped_NT)


@dataclass(frozen=True)
class Aggregation:
    numerator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """(loss_NT, mask_NT) -> scalar sum for these rows."""
    denominator: Callable[[torch.Tensor, int], float]
    """(mask_NT of the WHOLE batch, max_new_tokens) -> the normaliser."""


LOSS_AGGREGATIONS: Registry = Registry("loss aggregation")


def _register(name: str, aggregation: Aggregation) -> None:
    LOSS_AGGREGATIONS.register(name)(aggregation)


_register(
    "token-mean",
    Aggregation(
        numerator=lambda loss_NT, mask_NT: (loss_NT * mask_NT).sum(),
        denominator=lambda mask_NT, max_new_tokens: float(mask_NT.sum().clamp(min=1)),
    ),
)
_register(
    "seq-mean-token-mean",
    Aggregation(
        numerator=lambda loss_NT, mask_NT: ((loss_NT * mask_NT).sum(-1) / mask_NT.sum(-1).clamp(min=1)).sum(),
        denominator=lambda mask_NT, max_new_tokens: float(max(mask_NT.shape[0], 1)),
    ),
)
# Dr. GRPO: a constant normaliser (max new tokens x sequences), never each sequence's own length, which
# would favour long wrong answers and short right ones.
_register(
    "constant-normalizer",
    Aggregation(
        numerator=lambda loss_NT, mask_NT: (loss_NT * mask_NT).sum(),
        denominator=lambda mask_NT, max_new_tokens: float(max_new_tokens * max(mask_NT.shape[0], 1)),
    ),
)
