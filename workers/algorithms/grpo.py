"""GRPO and Dr. GRPO: the outcome of each trajectory, compared within its group (see advantages.py).

On a single-turn task each completion is credited with its group-relative reward; on an environment every
action of a trajectory gets the trajectory's group-relative return (episode level only, no step credit).
"""

from __future__ import annotations

from typing import Sequence

import torch

from workers.algorithms.advantages import TrajectoryGroup, episode_advantages_per_step
from workers.algorithms.registry import AdvantageOptions, Algorithm, register_algorithm


def grpo_advantages(groups: Sequence[TrajectoryGroup], options: AdvantageOptions) -> torch.Tensor:
    """A = (R − mean) / (std + eps) within each group (GRPO, eq. 3)."""
    return episode_advantages_per_step(groups, "mean_std_norm", options.eps)


def dr_grpo_advantages(groups: Sequence[TrajectoryGroup], options: AdvantageOptions) -> torch.Tensor:
    """A = R − mean within each group (Dr. GRPO, eq. 6)."""
    return episode_advantages_per_step(groups, "mean_norm", options.eps)


register_algorithm(Algorithm("grpo", grpo_advantages, default_aggregation="token-mean"))
# Dr. GRPO pairs the mean-only advantage with a constant loss normaliser (max new tokens x sequences).
register_algorithm(Algorithm("dr_grpo", dr_grpo_advantages, default_aggregation="constant-normalizer"))
