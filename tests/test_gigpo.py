"""GiGPO advantages against hand-computed values and a per-group loop reference."""

import math
import statistics

import pytest
import torch

from workers.algorithms.gigpo import (
    anchor_group_ids,
    discounted_returns,
    episode_advantages,
    gigpo_advantages,
    step_advantages,
)
from workers.algorithms.advantages import group_relative

# Trajectory A visits state "a" twice (turns 0 and 2) and "b" at turn 1; B visits "a" at turn 0 and "b" at
# turn 2 (same state, different turn). "c" and "d" are visited once: singleton step groups.
REWARDS = [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
KEYS = [["a", "b", "a", "c"], ["a", "d", "b"]]


def test_discounted_returns_gamma_one_and_below_one():
    rewards = torch.tensor([0.0, 1.0, 0.0, 2.0])
    assert torch.allclose(discounted_returns(rewards, 1.0), torch.tensor([3.0, 3.0, 2.0, 2.0]))
    # gamma 0.5: R3 = 2, R2 = 1, R1 = 1 + 0.5 = 1.5, R0 = 0.75
    assert torch.allclose(discounted_returns(rewards, 0.5), torch.tensor([0.75, 1.5, 1.0, 2.0]))
    assert torch.allclose(discounted_returns(rewards, 0.0), rewards)


def test_discounted_returns_batched_with_right_padding_matches_loop():
    torch.manual_seed(0)
    rewards_BT = torch.randn(3, 7)
    lengths = [7, 4, 1]
    for row, length in enumerate(lengths):
        rewards_BT[row, length:] = 0.0
    got = discounted_returns(rewards_BT, 0.9)
    for row, length in enumerate(lengths):
        running, expected = 0.0, []
        for r in reversed(rewards_BT[row, :length].tolist()):
            running = r + 0.9 * running
            expected.append(running)
        assert torch.allclose(got[row, :length], torch.tensor(expected[::-1]), atol=1e-5)


def test_episode_advantage_mean_norm_vs_mean_std_norm():
    returns = torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert torch.allclose(episode_advantages(returns, "mean_norm"), torch.tensor([0.5, -0.5, -0.5, 0.5]))
    expected = 0.5 / math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    got = episode_advantages(returns, "mean_std_norm", eps=0.0)
    assert torch.allclose(got, torch.tensor([expected, -expected, -expected, expected]))


@pytest.mark.parametrize("norm", ["mean_norm", "mean_std_norm"])
def test_all_equal_returns_give_zero_not_nan(norm):
    for values in ([1.0, 1.0, 1.0], [0.1, 0.1, 0.1], [0.3]):
        adv = episode_advantages(torch.tensor(values), norm)
        assert torch.equal(adv, torch.zeros(len(values)))


def test_anchor_group_ids_by_first_appearance():
    assert anchor_group_ids(["a", "b", "a", "c", "a", "d", "b"]).tolist() == [0, 1, 0, 2, 0, 3, 1]
    assert anchor_group_ids([((0, 1), True, False), ((0, 1), True, False), ((0, 1), False, False)]).tolist() == [0, 0, 1]


def test_step_advantages_hand_computed_gamma_half_mean_norm():
    out = gigpo_advantages(REWARDS, KEYS, gamma=0.5, step_weight=1.0, episode_norm="mean_norm", step_norm="mean_norm")
    # A returns (gamma 0.5): [0.125, 0.25, 0.5, 1]; B: [0, 0, 0]
    assert torch.allclose(out.step_returns_S, torch.tensor([0.125, 0.25, 0.5, 1.0, 0.0, 0.0, 0.0]))
    assert out.step_group_S.tolist() == [0, 1, 0, 2, 0, 3, 1]
    # group a = {A0 .125, A2 .5, B0 0}: mean .208333 ; group b = {A1 .25, B2 0}: mean .125 ; c, d singletons
    mean_a = 0.625 / 3
    expected_step = [0.125 - mean_a, 0.125, 0.5 - mean_a, 0.0, -mean_a, 0.0, -0.125]
    assert torch.allclose(out.step_S, torch.tensor(expected_step), atol=1e-6)
    assert torch.allclose(out.episode_G, torch.tensor([0.5, -0.5]))
    expected = [0.5 + a for a in expected_step[:4]] + [-0.5 + a for a in expected_step[4:]]
    assert torch.allclose(out.combined_S, torch.tensor(expected), atol=1e-6)
    assert out.trajectory_S.tolist() == [0, 0, 0, 0, 1, 1, 1]


def test_step_advantages_gamma_one_mean_std_norm():
    out = gigpo_advantages(REWARDS, KEYS, gamma=1.0, step_weight=0.5, eps=0.0)
    # gamma 1: A returns [1, 1, 1, 1], B [0, 0, 0]; group a = {1, 1, 0}: mean 2/3, std sqrt(1/3)
    s_a = math.sqrt(1 / 3)
    # group b = {1, 0}: mean .5, std sqrt(.5)
    s_b = math.sqrt(0.5)
    expected_step = [(1 / 3) / s_a, 0.5 / s_b, (1 / 3) / s_a, 0.0, (-2 / 3) / s_a, 0.0, -0.5 / s_b]
    assert torch.allclose(out.step_S, torch.tensor(expected_step), atol=1e-5)
    episode = 0.5 / math.sqrt(0.5)  # returns [1, 0]
    assert torch.allclose(out.episode_G, torch.tensor([episode, -episode]), atol=1e-6)
    expected = [episode + 0.5 * a for a in expected_step[:4]] + [-episode + 0.5 * a for a in expected_step[4:]]
    assert torch.allclose(out.combined_S, torch.tensor(expected), atol=1e-5)


def test_singleton_and_constant_step_groups_are_zero():
    returns = torch.tensor([3.0, 0.2, 0.2, 0.2, -1.0])
    groups = torch.tensor([0, 1, 1, 1, 2])
    for norm in ("mean_norm", "mean_std_norm"):
        adv = step_advantages(returns, groups, norm)
        assert torch.equal(adv, torch.zeros(5))
        assert not torch.isnan(adv).any()


def test_step_weight_zero_reduces_to_episode_advantages():
    out = gigpo_advantages(REWARDS, KEYS, gamma=0.9, step_weight=0.0)
    assert torch.equal(out.combined_S, out.episode_G[out.trajectory_S])
    assert (out.step_S != 0).any()  # the step term exists; omega switches it off


def test_vectorised_group_relative_matches_loop():
    torch.manual_seed(1)
    values = torch.randn(40)
    ids = torch.randint(0, 9, (40,))
    for norm in ("mean_norm", "mean_std_norm"):
        got = group_relative(values, ids, norm, eps=1e-6)
        for g in ids.unique().tolist():
            members = values[ids == g].tolist()
            mean = sum(members) / len(members)
            scale = statistics.stdev(members) + 1e-6 if (norm == "mean_std_norm" and len(members) > 1) else 1.0
            expected = [0.0 if len(members) == 1 else (v - mean) / scale for v in members]
            assert torch.allclose(got[ids == g], torch.tensor(expected), atol=1e-5)


def test_explicit_episode_returns_and_validation():
    out = gigpo_advantages(REWARDS, KEYS, gamma=1.0, step_weight=1.0, episode_norm="mean_norm", episode_returns=[2.0, 2.0])
    assert torch.equal(out.episode_G, torch.zeros(2))
    with pytest.raises(ValueError, match="state keys"):
        gigpo_advantages([[0.0, 1.0]], [["a"]], gamma=1.0, step_weight=1.0)
    with pytest.raises(ValueError, match="unknown normalisation"):
        group_relative(torch.ones(2), torch.zeros(2, dtype=torch.long), "std")  # type: ignore[arg-type]


def test_empty_trajectories_do_not_crash():
    out = gigpo_advantages([[], []], [[], []], gamma=0.9, step_weight=1.0)
    assert out.combined_S.shape == (0,) and torch.equal(out.episode_G, torch.zeros(2))
