"""Group-relative advantage estimators: one scalar per completion, broadcast to its tokens by the caller.

GRPO (Shao et al. 2024, DeepSeekMath, eq. 3): A_j = (r_j - mean(r)) / (std(r) + eps) within a prompt's group.
Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", eq. 6) drops the std division, which
otherwise up-weights questions that are nearly always or never solved: A_j = r_j - mean(r).
A group whose rewards are all equal gets exactly 0 (never NaN): that is set explicitly, because in float32 the
mean of equal values need not equal them (six rewards of 0.3 leave a residue ~1e-8 that the std division
would blow up to ~0.03, a uniform push with no learning signal).
"""

from __future__ import annotations

import torch

from workers.algorithms.registry import Registry

ADVANTAGE_ESTIMATORS: Registry = Registry("advantage estimator")


def _grouped(rewards_N: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards_N.numel() % group_size:
        raise ValueError(f"{rewards_N.numel()} rewards do not split into groups of {group_size}")
    return rewards_N.float().view(-1, group_size)


def _zero_constant_groups(rewards_PG: torch.Tensor, advantages_PG: torch.Tensor) -> torch.Tensor:
    constant_P1 = rewards_PG.amax(dim=1, keepdim=True) == rewards_PG.amin(dim=1, keepdim=True)
    return torch.where(constant_P1, torch.zeros_like(advantages_PG), advantages_PG)


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_advantages(rewards_N: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """(N,) rewards in prompt-major groups of G -> (N,) advantages; std is the unbiased sample std."""
    rewards_PG = _grouped(rewards_N, group_size)
    centred_PG = rewards_PG - rewards_PG.mean(dim=1, keepdim=True)
    std_P1 = rewards_PG.std(dim=1, keepdim=True)
    return _zero_constant_groups(rewards_PG, centred_PG / (std_P1 + eps)).view(-1)


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo_advantages(rewards_N: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """(N,) -> (N,): GRPO without the std division."""
    rewards_PG = _grouped(rewards_N, group_size)
    return _zero_constant_groups(rewards_PG, rewards_PG - rewards_PG.mean(dim=1, keepdim=True)).view(-1)
