"""GiGPO advantages (Feng et al. 2025, "Group-in-Group Policy Optimization for LLM Agent Training", arXiv 2505.10978).

How it differs from GRPO: GRPO gives every token of a trajectory the same group-relative advantage of the
trajectory's return. GiGPO keeps that as the *episode* advantage A^E (§4.1) and adds a *step* advantage A^S
(§4.2): steps of the G trajectories of one group that stand in the same environment state ("anchor state")
form a step group, and a step is credited by how its discounted return compares with the other actions
taken from that same state. No critic, no extra rollouts: the step groups are found after the fact.

    A^E(τ_i)     = (R(τ_i) − mean_j R(τ_j)) / F_norm({R(τ_j)})                         (§4.1, episode)
    G^S(s̃)       = {(a_t^(i), R_t^(i)) : s_t^(i) = s̃}                                  (§4.2, anchor group)
    R_t^(i)      = Σ_{k ≥ t} γ^{k−t} r_k^(i)                                            (§4.2, step return)
    A^S(a_t^(i)) = (R_t^(i) − mean_{G^S(s_t^(i))} R) / F_norm(G^S(s_t^(i)))            (§4.2, step)
    A(a_t^(i))   = A^E(τ_i) + ω · A^S(a_t^(i))                                          (§4, combined)

F_norm is the (unbiased) std for `mean_std_norm` and 1 for `mean_norm` (the paper's two variants).
Any group whose values are all equal (including a singleton) gets exactly 0, never NaN: such a group
carries no relative signal. State keys are arbitrary hashables, so grouping happens in Python; the math
on the grouped ids is vectorised (scatter sums), and the tests compare it against a per-group loop.
"""

from __future__ import annotations

from typing import Hashable, NamedTuple, Sequence

import torch

from workers.algorithms.advantages import Norm, TrajectoryGroup, group_relative
from workers.algorithms.registry import AdvantageOptions, Algorithm, register_algorithm


def episode_advantages(returns_G: torch.Tensor, norm: Norm = "mean_std_norm", eps: float = 1e-6) -> torch.Tensor:
    """(G,) episode returns R(τ_i) of ONE group -> (G,) A^E (§4.1)."""
    return group_relative(returns_G, torch.zeros(returns_G.shape[0], dtype=torch.long), norm, eps)


def discounted_returns(rewards_BT: torch.Tensor, gamma: float) -> torch.Tensor:
    """(..., T) per-step rewards -> (..., T) R_t = Σ_{k ≥ t} γ^{k−t} r_k (§4.2).

    Right-padding with zero rewards leaves the real steps' returns unchanged, so a padded (B, T) batch of
    trajectories works. Vectorised as one matmul with the upper-triangular matrix U[t, k] = γ^{k−t}.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma={gamma} is outside [0, 1]")
    horizon = rewards_BT.shape[-1]
    steps = torch.arange(horizon)
    lag_TT = (steps.view(1, -1) - steps.view(-1, 1)).to(torch.float64)  # k - t
    discount_TT = torch.where(lag_TT >= 0, torch.tensor(gamma, dtype=torch.float64) ** lag_TT.clamp(min=0), 0.0)
    return (rewards_BT.to(torch.float64) @ discount_TT.T).to(torch.float32)


def anchor_group_ids(state_keys: Sequence[Hashable]) -> torch.Tensor:
    """S hashable state keys (all steps of ONE group's trajectories) -> (S,) ids, numbered by first appearance.

    Equal keys share an id: that is the anchor-state step group G^S(s̃) of §4.2. A trajectory that revisits
    a state contributes several members to the same group.
    """
    ids: dict[Hashable, int] = {}
    return torch.tensor([ids.setdefault(key, len(ids)) for key in state_keys], dtype=torch.long)


def step_advantages(
    step_returns_S: torch.Tensor, step_group_S: torch.Tensor, norm: Norm = "mean_std_norm", eps: float = 1e-6
) -> torch.Tensor:
    """(S,) discounted step returns, (S,) anchor group ids -> (S,) A^S (§4.2); singleton groups get 0."""
    return group_relative(step_returns_S, step_group_S, norm, eps)


def combine_advantages(
    episode_adv_G: torch.Tensor, step_adv_S: torch.Tensor, trajectory_S: torch.Tensor, step_weight: float
) -> torch.Tensor:
    """A = A^E(τ of the step) + ω · A^S (§4, combined): (G,), (S,), (S,) trajectory index of each step -> (S,)."""
    return episode_adv_G[trajectory_S] + step_weight * step_adv_S


class GigpoAdvantages(NamedTuple):
    """GiGPO advantages of ONE group; S = total steps, trajectory-major (all steps of τ_0, then τ_1, ...)."""

    episode_G: torch.Tensor
    """(G,) A^E per trajectory."""
    step_S: torch.Tensor
    """(S,) A^S per step."""
    combined_S: torch.Tensor
    """(S,) A^E + ω·A^S: what the step's action tokens get."""
    step_returns_S: torch.Tensor
    """(S,) discounted step returns R_t."""
    step_group_S: torch.Tensor
    """(S,) anchor-state group id of each step."""
    trajectory_S: torch.Tensor
    """(S,) index of each step's trajectory."""


def gigpo_advantages(
    step_rewards: Sequence[Sequence[float]],
    state_keys: Sequence[Sequence[Hashable]],
    *,
    gamma: float,
    step_weight: float,
    episode_norm: Norm = "mean_std_norm",
    step_norm: Norm = "mean_std_norm",
    eps: float = 1e-6,
    episode_returns: Sequence[float] | None = None,
) -> GigpoAdvantages:
    """All GiGPO quantities for ONE group of G trajectories given as Python lists.

    step_rewards[i][t] is r_t of trajectory i, state_keys[i][t] the state it acted from. R(τ_i) defaults to
    Σ_t r_t (undiscounted, as in §4.1); pass episode_returns to use another trajectory score.
    """
    if len(step_rewards) != len(state_keys):
        raise ValueError(f"{len(step_rewards)} reward lists but {len(state_keys)} state-key lists")
    lengths = [len(rewards) for rewards in step_rewards]
    for i, (rewards, keys) in enumerate(zip(step_rewards, state_keys)):
        if len(rewards) != len(keys):
            raise ValueError(f"trajectory {i}: {len(rewards)} rewards but {len(keys)} state keys")
    group = TrajectoryGroup(step_rewards, state_keys)
    num_traj, horizon = len(lengths), max(lengths, default=0)
    rewards_GT = group.padded_rewards()
    mask_GT = torch.arange(horizon).view(1, -1) < torch.tensor(lengths, dtype=torch.long).view(-1, 1)
    returns_G = group.episode_returns() if episode_returns is None else torch.tensor(list(episode_returns), dtype=torch.float32)
    if returns_G.shape[0] != num_traj:
        raise ValueError(f"{returns_G.shape[0]} episode returns for {num_traj} trajectories")
    step_returns_S = discounted_returns(rewards_GT, gamma)[mask_GT]  # row-major = trajectory-major
    trajectory_S = torch.arange(num_traj).repeat_interleave(torch.tensor(lengths, dtype=torch.long))
    step_group_S = anchor_group_ids([key for keys in state_keys for key in keys])
    episode_G = episode_advantages(returns_G, episode_norm, eps)
    step_S = step_advantages(step_returns_S, step_group_S, step_norm, eps)
    return GigpoAdvantages(
        episode_G=episode_G,
        step_S=step_S,
        combined_S=combine_advantages(episode_G, step_S, trajectory_S, step_weight),
        step_returns_S=step_returns_S,
        step_group_S=step_group_S,
        trajectory_S=trajectory_S,
    )


def gigpo_step_advantages(groups: Sequence[TrajectoryGroup], options: AdvantageOptions) -> torch.Tensor:
    """The registry's estimator: A^E + ω·A^S for every step of every group, group-major."""
    per_group = [
        gigpo_advantages(group.step_rewards, group.state_keys, gamma=options.gamma, step_weight=options.step_weight,
                         episode_norm=options.episode_norm, step_norm=options.step_norm, eps=options.eps).combined_S
        for group in groups
    ]
    return torch.cat(per_group) if per_group else torch.zeros(0)


register_algorithm(Algorithm("gigpo", gigpo_step_advantages, default_aggregation="token-mean", needs_environment=True))
