"""The algorithm registry: one entry per `algorithm.name`, saying everything the trial needs to know about it.

An entry names its advantage estimator, its default loss aggregation and whether it needs an environment
(the multi-turn collector). The config validates `algorithm.name` against this registry and the collectors
and the update step read the entry, so adding an algorithm is one module with its math plus one
`register_algorithm` call; nothing else branches on the name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from rollout.basics import Registry
from workers.algorithms.advantages import Norm, TrajectoryGroup


@dataclass(frozen=True)
class AdvantageOptions:
    """The `algorithm:` settings an estimator may read (built by `AlgorithmConfig.advantage_options`)."""

    eps: float
    """Added to the std before dividing."""
    gamma: float
    """Discount of step returns (GiGPO's step credit)."""
    step_weight: float
    """omega, the weight of GiGPO's step advantage."""
    episode_norm: Norm
    step_norm: Norm


AdvantageEstimator = Callable[[Sequence[TrajectoryGroup], AdvantageOptions], torch.Tensor]
"""(one step's trajectory groups, options) -> (S,) one advantage per step of every trajectory: group-major,
then trajectory, then step order. For a single-turn batch that is one advantage per completion row."""


@dataclass(frozen=True)
class Algorithm:
    name: str
    advantages: AdvantageEstimator
    default_aggregation: str
    """Loss aggregation (workers.algorithms.losses.LOSS_AGGREGATIONS) used when `algorithm.loss_aggregation` is unset."""
    needs_environment: bool = False
    """True when the estimator needs multi-step trajectories (a task with environments)."""


ALGORITHMS: Registry[Algorithm] = Registry("algorithm")


def register_algorithm(algorithm: Algorithm) -> Algorithm:
    """Add an algorithm. Its module must be imported wherever trials run: for a sweep on Ray, import it from
    `workers/algorithms/__init__.py` (as grpo.py and gigpo.py are), else the trial processes will not know the name."""
    from workers.algorithms.losses import LOSS_AGGREGATIONS

    try:
        LOSS_AGGREGATIONS.check(algorithm.default_aggregation)
    except ValueError as error:
        raise ValueError(f"algorithm {algorithm.name!r}: default_aggregation={algorithm.default_aggregation!r} is {error}") from None
    return ALGORITHMS.add(algorithm.name, algorithm)
