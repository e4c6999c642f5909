"""Advantage estimators and losses against hand-computed values."""

import math

import pytest
import torch

from rollout.basics import Registry
from workers.algorithms import ALGORITHMS, LOSS_AGGREGATIONS, AdvantageOptions
from workers.algorithms.advantages import TrajectoryGroup
from workers.algorithms.losses import k3_kl, policy_token_loss, ppo_clip_token_loss, truncated_is_weight


def outcome_advantages(name: str, rewards: list[float], group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """The registered estimator on single-turn groups of `group_size` completions."""
    groups = [TrajectoryGroup.single_step(rewards[i : i + group_size]) for i in range(0, len(rewards), group_size)]
    return ALGORITHMS.get(name).advantages(groups, AdvantageOptions(eps, 1.0, 0.0, "mean_std_norm", "mean_std_norm"))


def test_grpo_advantage_hand_computed():
    # group [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3) = 0.57735
    adv = outcome_advantages("grpo", [1.0, 0.0, 0.0, 1.0], 4, eps=0.0)
    expected = 0.5 / math.sqrt(1 / 3)
    assert torch.allclose(adv, torch.tensor([expected, -expected, -expected, expected]), atol=1e-6)


def test_dr_grpo_advantage_has_no_std_division():
    adv = outcome_advantages("dr_grpo", [1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 4.0], 4)
    assert torch.allclose(adv, torch.tensor([0.75, -0.25, -0.25, -0.25, -0.5, -0.5, -0.5, 1.5]))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo"])
def test_equal_rewards_give_zero_advantage_not_nan(name):
    adv = outcome_advantages(name, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0], 3)
    assert torch.equal(adv, torch.zeros(6))
    # equal rewards whose float32 mean is not exactly them (0.3 * 6 / 6 != 0.3): still exactly 0
    inexact = torch.full((6,), 0.3)
    assert inexact.mean() != inexact[0]
    assert torch.equal(outcome_advantages(name, inexact.tolist(), 6), torch.zeros(6))


def test_registry_rejects_duplicates_and_unknown_names():
    registry = Registry("thing")
    registry.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(lambda: 2)
    with pytest.raises(KeyError, match="unknown thing 'b'"):
        registry.get("b")


def test_ppo_clip_hand_computed():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))  # ratios 1.5, 0.5, 1.0 against old logp 0
    old = torch.zeros(1, 3)
    loss, clipped = ppo_clip_token_loss(logp, old, torch.tensor([2.0]), clip_eps_low=0.2, clip_eps_high=0.3)
    # A>0: min(1.5*2, 1.3*2)=2.6 ; min(0.5*2, 0.8*2)=1.0 ; min(2, 2)=2
    assert torch.allclose(loss, torch.tensor([[-2.6, -1.0, -2.0]]))
    assert clipped.tolist() == [[True, False, False]]
    loss_neg, clipped_neg = ppo_clip_token_loss(logp, old, torch.tensor([-1.0]), 0.2, 0.3)
    # A<0: min(-1.5, -1.3) = -1.5 ; min(-0.5, -0.8) = -0.8 ; -1
    assert torch.allclose(loss_neg, torch.tensor([[1.5, 0.8, 1.0]]))
    assert clipped_neg.tolist() == [[False, True, False]]


def test_k3_kl_hand_computed_and_nonnegative():
    logp = torch.tensor([[math.log(0.5), math.log(0.25)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.25)]])
    kl = k3_kl(logp, ref)
    # r = ref/pi = 0.5 -> 0.5 - ln 0.5 - 1 = 0.193147 ; equal -> 0
    assert torch.allclose(kl, torch.tensor([[0.5 - math.log(0.5) - 1, 0.0]]), atol=1e-6)
    assert (k3_kl(torch.randn(4, 5), torch.randn(4, 5)) >= 0).all()


def test_aggregations_hand_computed():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    token_mean = LOSS_AGGREGATIONS.get("token-mean")
    assert token_mean.numerator(loss, mask) / token_mean.denominator(mask, 5) == pytest.approx(10 / 4)
    seq_mean = LOSS_AGGREGATIONS.get("seq-mean-token-mean")
    assert seq_mean.numerator(loss, mask) / seq_mean.denominator(mask, 5) == pytest.approx((2.0 + 4.0) / 2)
    constant = LOSS_AGGREGATIONS.get("constant-normalizer")
    assert constant.numerator(loss, mask) / constant.denominator(mask, 5) == pytest.approx(10 / (5 * 2))


@pytest.mark.parametrize("name", ["token-mean", "seq-mean-token-mean", "constant-normalizer"])
def test_aggregation_is_invariant_to_micro_batching(name):
    torch.manual_seed(0)
    loss = torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1
    agg = LOSS_AGGREGATIONS.get(name)
    whole = agg.numerator(loss, mask) / agg.denominator(mask, 5)
    den = agg.denominator(mask, 5)
    parts = sum(agg.numerator(loss[i : i + 2], mask[i : i + 2]) / den for i in range(0, 6, 2))
    assert torch.allclose(whole, parts)


def test_truncated_is_weight_hand_computed():
    trainer = torch.tensor([[math.log(0.5), math.log(0.9)]])
    engine = torch.tensor([[math.log(0.25), math.log(0.9)]])  # ratio 2 and 1
    assert torch.allclose(truncated_is_weight(trainer, engine, cap=1.5), torch.tensor([[1.5, 1.0]]))
    assert torch.allclose(truncated_is_weight(trainer, engine, cap=10.0), torch.tensor([[2.0, 1.0]]))


def test_policy_token_loss_adds_the_weighted_kl_to_the_is_weighted_clip_loss():
    logp = torch.tensor([[math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25)]])  # k3: exp(ref - logp) - (ref - logp) - 1 = 0.5 + ln 2 - 1
    out = policy_token_loss(logp, logp, torch.tensor([2.0]), 0.2, 0.2, is_weight_NT=torch.tensor([[0.5]]), ref_logp_NT=ref, kl_beta=0.1)
    kl = 0.5 + math.log(2) - 1
    assert out.pg_NT.item() == pytest.approx(-1.0)  # ratio 1: -A * weight = -2 * 0.5
    assert out.kl_NT.item() == pytest.approx(kl, abs=1e-6)
    assert out.loss_NT.item() == pytest.approx(-1.0 + 0.1 * kl, abs=1e-6) and not out.clipped_NT.any()
    plain = policy_token_loss(logp, logp, torch.tensor([2.0]), 0.2, 0.2)
    assert plain.kl_NT is None and plain.loss_NT.item() == pytest.approx(-2.0)
