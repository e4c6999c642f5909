"""Group-relative advantages: the one normalisation kernel and the trajectory groups it is applied to.

Every algorithm here credits an action by how its return compares with the other members of its group:

    A_j = (R_j − mean_g R) / F_norm(g),   F_norm = unbiased std (`mean_std_norm`) or 1 (`mean_norm`)

GRPO (Shao et al. 2024, DeepSeekMath, eq. 3) applies it to the G completions of one prompt with the std;
Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", eq. 6) drops the std division, which
otherwise up-weights questions that are nearly always or never solved; GiGPO (gigpo.py) applies the same
kernel twice, to episodes and to anchor-state step groups.

A group whose values are all equal (including a singleton) gets exactly 0, never NaN: that is set
explicitly, because in float32 the mean of equal values need not equal them (six rewards of 0.3 leave a
residue ~1e-8 that the std division would blow up to ~0.03, a uniform push with no learning signal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Literal, Sequence

import torch

Norm = Literal["mean_norm", "mean_std_norm"]
NORMS: tuple[Norm, ...] = ("mean_norm", "mean_std_norm")


def group_relative(values_N: torch.Tensor, group_ids_N: torch.Tensor, norm: Norm, eps: float = 1e-6) -> torch.Tensor:
    """(N,) values, (N,) int group ids in [0, K) -> (N,) (v − mean_g) / F_norm_g; 0 for constant groups.

    std is the unbiased sample std. Groups may have any sizes and need not be contiguous.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown normalisation {norm!r}; use one of {list(NORMS)}")
    values_N, group_ids_N = values_N.to(torch.float32), group_ids_N.long()
    if values_N.numel() == 0:
        return values_N.clone()
    num_groups = int(group_ids_N.max()) + 1
    zeros_K = torch.zeros(num_groups, dtype=values_N.dtype)
    count_K = zeros_K.index_add(0, group_ids_N, torch.ones_like(values_N))
    mean_K = zeros_K.index_add(0, group_ids_N, values_N) / count_K.clamp(min=1)
    centred_N = values_N - mean_K[group_ids_N]
    high_K = zeros_K.scatter_reduce(0, group_ids_N, values_N, reduce="amax", include_self=False)
    low_K = zeros_K.scatter_reduce(0, group_ids_N, values_N, reduce="amin", include_self=False)
    constant_N = (high_K == low_K)[group_ids_N]
    if norm == "mean_std_norm":
        sq_dev_K = zeros_K.index_add(0, group_ids_N, centred_N.square())
        std_K = (sq_dev_K / (count_K - 1).clamp(min=1)).sqrt()
        centred_N = centred_N / (std_K[group_ids_N] + eps)
    return torch.where(constant_N, torch.zeros_like(centred_N), centred_N)


@dataclass(frozen=True)
class TrajectoryGroup:
    """The G trajectories sampled from one prompt (or environment seed): what every advantage estimator reads.

    A single-turn completion is a one-step trajectory, so single-turn and multi-turn tasks feed the same
    estimators and an algorithm is written once for both.
    """

    step_rewards: Sequence[Sequence[float]]
    """step_rewards[i][t]: reward of step t of trajectory i."""
    state_keys: Sequence[Sequence[Hashable]]
    """state_keys[i][t]: the (hashable) state step t acted from; equal keys are GiGPO's anchor states."""

    @classmethod
    def single_step(cls, rewards: Sequence[float]) -> "TrajectoryGroup":
        """G completions of one prompt: one step each, all from the prompt's state."""
        return cls([[float(r)] for r in rewards], [[0] for _ in rewards])

    @property
    def size(self) -> int:
        return len(self.step_rewards)

    def step_counts(self) -> list[int]:
        return [len(rewards) for rewards in self.step_rewards]

    def padded_rewards(self) -> torch.Tensor:
        """(G, T) per-step rewards, right-padded with 0 to the longest trajectory."""
        rewards_GT = torch.zeros(self.size, max(self.step_counts(), default=0))
        for i, rewards in enumerate(self.step_rewards):
            rewards_GT[i, : len(rewards)] = torch.tensor(list(rewards), dtype=torch.float32)
        return rewards_GT

    def episode_returns(self) -> torch.Tensor:
        """(G,) R(τ_i) = Σ_t r_t, undiscounted."""
        return self.padded_rewards().sum(dim=1)


def episode_advantages_per_step(groups: Sequence[TrajectoryGroup], norm: Norm, eps: float) -> torch.Tensor:
    """Each trajectory's group-relative episode advantage, repeated for each of its steps: (S,) over all steps,
    group-major, then trajectory, then step order (one row per single-turn completion)."""
    if not groups:
        return torch.zeros(0)
    returns_N = torch.cat([group.episode_returns() for group in groups])
    group_ids_N = torch.arange(len(groups)).repeat_interleave(torch.tensor([group.size for group in groups]))
    steps_N = torch.tensor([count for group in groups for count in group.step_counts()], dtype=torch.long)
    return group_relative(returns_N, group_ids_N, norm, eps).repeat_interleave(steps_N)
