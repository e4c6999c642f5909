"""Adding an algorithm is one registration: a toy estimator registered here runs a real trial end to end."""

from __future__ import annotations

import json
from typing import Sequence

import pytest
import torch

from workers.algorithms import AdvantageOptions, Algorithm, register_algorithm
from workers.algorithms.advantages import TrajectoryGroup

SEEN: list[tuple[list[float], torch.Tensor]] = []
"""(rewards, advantages) of every call, to check the trial trained on exactly what the toy returned."""


def sign_advantages(groups: Sequence[TrajectoryGroup], options: AdvantageOptions) -> torch.Tensor:
    """+1 above the group's mean reward, -1 below, 0 at it: GRPO's direction without its magnitude."""
    advantages, rewards = [], []
    for group in groups:
        returns = [sum(steps) for steps in group.step_rewards]
        mean = sum(returns) / len(returns)
        advantages += [1.0 if r > mean else -1.0 if r < mean else 0.0 for r in returns]
        rewards += returns
    result = torch.tensor(advantages)
    SEEN.append((rewards, result))
    return result


register_algorithm(Algorithm("toy_sign", sign_advantages, default_aggregation="seq-mean-token-mean"))


def test_sign_estimator_hand_computed():
    groups = [TrajectoryGroup.single_step([1.0, 0.0, 0.0, 0.0]), TrajectoryGroup.single_step([0.5, 0.5, 0.5, 0.5])]
    assert sign_advantages(groups, AdvantageOptions(1e-6, 1.0, 0.0, "mean_norm", "mean_norm")).tolist() == [1, -1, -1, -1, 0, 0, 0, 0]


def test_registered_toy_algorithm_runs_a_trial(tiny_config_path, tmp_path):
    from orchestrator.config import load_sweep_config
    from workers.runner import run_trial
    from workers.spec import TrialSpec

    cfg = load_sweep_config(tiny_config_path, {"algorithm.name": "toy_sign", "budget.steps": 3}).trial_config()
    assert cfg.algorithm.aggregation == "seq-mean-token-mean"  # the entry's default, with no config change
    SEEN.clear()
    result = run_trial(cfg, TrialSpec("layers", (1,)), tmp_path / "trial")
    records = [json.loads(line) for line in (tmp_path / "trial" / "metrics.jsonl").read_text().splitlines()]
    assert len(SEEN) == 3 and [r["step"] for r in records] == [1, 2, 3]
    for record, (rewards, advantages) in zip(records, SEEN):
        assert set(advantages.tolist()) <= {-1.0, 0.0, 1.0}
        assert record["nonzero_advantage_rows"] == float((advantages != 0).sum())
        assert record["reward_mean"] == pytest.approx(sum(rewards) / len(rewards))
    assert result["learned"] is True and result["steps"] == 3


def test_unregistered_algorithm_is_a_one_line_config_error(tiny_config_path):
    from orchestrator.config import ConfigError, load_sweep_config

    with pytest.raises(ConfigError, match=r"algorithm.name = 'nope': not a registered algorithm; known: \[.*'grpo'"):
        load_sweep_config(tiny_config_path, {"algorithm.name": "nope"})


def test_an_estimator_returning_one_value_per_group_is_refused_in_one_line(tiny_config_path, tmp_path):
    from orchestrator.config import load_sweep_config
    from workers.runner import run_trial
    from workers.spec import TrialSpec

    register_algorithm(Algorithm("toy_per_group", lambda groups, options: torch.zeros(len(groups)), "token-mean"))
    cfg = load_sweep_config(tiny_config_path, {"algorithm.name": "toy_per_group"}).trial_config()
    with pytest.raises(ValueError, match=r"^algorithm.name='toy_per_group': its advantage estimator returned shape \(4,\) "
                                         r"for 16 rows; it must return one advantage per row$"):
        run_trial(cfg, TrialSpec("layers", (1,)), tmp_path / "trial")


def test_a_default_aggregation_that_does_not_exist_is_refused_at_registration():
    with pytest.raises(ValueError, match=r"algorithm 'typo': default_aggregation='token_mean' is not a registered loss aggregation"):
        register_algorithm(Algorithm("typo", sign_advantages, default_aggregation="token_mean"))
