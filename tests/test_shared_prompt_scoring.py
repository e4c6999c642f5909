"""Scoring a group's rows with its prompt run once: the same log-probs, gradients and update as a pass over every
row's whole context, chosen only where the cost model says it is cheaper than the frozen prefix."""

import pytest
import torch

from rollout.engine import SamplingSettings
from rollout.hf_engine import HFEngine
from workers.config import AlgorithmConfig
from workers.policy import PolicyScorer, ScoringInputs
from workers.reference import ReferenceWeights
from workers.scoring_cost import (ScoringPasses, ScoringShape, frozen_prefix_cost, shared_prompt_cost,
                                  shared_prompt_is_cheaper)
from workers.spec import TrialSpec
from workers.trainable import find_decoder_layout, select_trainable
from workers.update import UpdateBatch, policy_update

PROMPTS = ["12+34=", "5+7=", "99+1=", "3+3="]  # of different lengths: left padding inside the shared prompt pass
GROUP = 4


def _inputs(model, tokenizer, seed=0) -> tuple[ScoringInputs, torch.Tensor]:
    batch = HFEngine(model, tokenizer).generate(PROMPTS, SamplingSettings(group_size=GROUP, max_new_tokens=5, seed=seed))
    return ScoringInputs.from_batch(batch), batch.sample_logp_NT


def _logp_and_grads(model, scorer: PolicyScorer, inputs: ScoringInputs, names: list[str]):
    model.zero_grad(set_to_none=True)
    logp, _ = scorer.token_logp(inputs, scorer.prefix(inputs))
    (logp * inputs.completion_mask_NT).sum().backward()
    params = dict(model.named_parameters())
    return logp.detach(), {name: params[name].grad.clone() for name in names}


@pytest.mark.parametrize("spec", [TrialSpec("full", ()), TrialSpec("layers", (1,))], ids=["full", "layer-1"])
def test_shared_prompt_scoring_gives_the_whole_pass_log_probs_and_gradients(tiny_model, tokenizer, spec):
    selection = select_trainable(tiny_model, spec)
    inputs, sample_logp = _inputs(tiny_model, tokenizer)
    whole = PolicyScorer(tiny_model, selection.layout, None)
    shared = PolicyScorer(tiny_model, selection.layout, None, group_size=GROUP)
    assert shared.shares_prompts(inputs) and not whole.shares_prompts(inputs)
    names = sorted(selection.parameter_names)
    whole_logp, whole_grads = _logp_and_grads(tiny_model, whole, inputs, names)
    shared_logp, shared_grads = _logp_and_grads(tiny_model, shared, inputs, names)
    mask = inputs.completion_mask_NT.bool()
    torch.testing.assert_close(shared_logp[mask], whole_logp[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(shared_logp[mask], sample_logp[mask], atol=1e-4, rtol=0)  # what the engine sampled
    for name in names:
        assert whole_grads[name].abs().max() > 0, name
        torch.testing.assert_close(shared_grads[name], whole_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_each_prompt_runs_once_and_each_row_runs_only_its_completion(tiny_model, tokenizer):
    inputs, _ = _inputs(tiny_model, tokenizer)
    seen = []
    handle = tiny_model.model.layers[0].register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[:2])))
    with torch.no_grad():
        PolicyScorer(tiny_model, find_decoder_layout(tiny_model), None, group_size=GROUP).logits(inputs, None)
    handle.remove()
    rows, length = inputs.context_NL[0].shape
    assert seen == [(rows // GROUP, inputs.prompt_length), (rows, length - inputs.prompt_length)]


def test_rows_that_do_not_share_prompts_in_groups_are_scored_whole(tiny_model, tokenizer):
    inputs, _ = _inputs(tiny_model, tokenizer)
    scorer = PolicyScorer(tiny_model, find_decoder_layout(tiny_model), None, group_size=GROUP)
    shuffled = torch.tensor([0, 4, 8, 12] + list(range(1, 4)) + list(range(5, 8)) + list(range(9, 12)) + list(range(13, 16)))
    mixed = ScoringInputs(inputs.input_ids_NL[shuffled], inputs.attention_mask_NL[shuffled], inputs.position_ids_NL[shuffled],
                          inputs.prompt_length, inputs.completion_ids_NT[shuffled], inputs.completion_mask_NT[shuffled])
    assert not scorer.shares_prompts(mixed)  # each run of four rows holds four prompts
    assert not scorer.shares_prompts(inputs.rows(slice(0, 6)))  # a micro-batch that ends inside a group
    assert scorer.shares_prompts(inputs.rows(slice(4, 12)))
    whole = PolicyScorer(tiny_model, find_decoder_layout(tiny_model), None)
    with torch.no_grad():
        torch.testing.assert_close(scorer.logits(mixed, None), whole.logits(mixed, None))


def _update(model, tokenizer, spec, group_size, micro_batch_size):
    torch.manual_seed(0)
    selection = select_trainable(model, spec)
    params = [p for n, p in model.named_parameters() if n in selection.parameter_names]
    inputs, sample_logp = _inputs(model, tokenizer, seed=1)
    optimizer = torch.optim.SGD(params, lr=0.1)
    algorithm = AlgorithmConfig(micro_batch_size=micro_batch_size, kl_beta=0.1, ppo_epochs=2)
    scorer = PolicyScorer(model, selection.layout, selection.lowest_layer, group_size=group_size)
    stats = policy_update(scorer, optimizer, params, UpdateBatch(inputs, torch.linspace(-1, 1, inputs.completion_ids_NT.shape[0]),
                                                                 sample_logp), algorithm, 5, 1e9,
                          ReferenceWeights(model, selection.parameter_names))
    return {n: p.detach().clone() for n, p in model.named_parameters() if n in selection.parameter_names}, stats


@pytest.mark.parametrize("spec", [TrialSpec("full", ()), TrialSpec("layers", (0,))], ids=["full", "layer-0"])
def test_an_update_with_shared_prompts_takes_the_whole_pass_step(tokenizer, spec):
    """Two PPO epochs with a KL reference (non-zero in the second epoch, once the policy moved), over group-aligned micro-batches (8 rows) and unaligned ones (6 rows,
    scored whole)."""
    from workers.base_model import build_untrained_model
    from workers.config import EmbeddedModelConfig

    cfg = EmbeddedModelConfig(num_layers=3, hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1, seed=5)
    initial = build_untrained_model(cfg, len(tokenizer), 0, 1).state_dict()
    results = {}
    for group_size, micro in [(1, 8), (GROUP, 8), (GROUP, 6)]:
        model = build_untrained_model(cfg, len(tokenizer), 0, 1)
        model.load_state_dict(initial)
        results[group_size, micro] = _update(model, tokenizer, spec, group_size, micro)
    (reference, reference_stats) = results[1, 8]
    for key in [(GROUP, 8), (GROUP, 6)]:
        weights, stats = results[key]
        assert stats["loss"] == pytest.approx(reference_stats["loss"], abs=1e-6)
        assert stats["grad_norm"] == pytest.approx(reference_stats["grad_norm"], rel=1e-4)  # the second epoch's, KL included
        for name, value in reference.items():
            torch.testing.assert_close(weights[name], value, atol=1e-6, rtol=0, msg=name)
    moved = max(float((reference[n] - initial[n]).abs().max()) for n in reference)
    assert moved > 1e-3  # the step did something to compare


DEFAULT_BATCH = ScoringShape(rows=128, group_size=8, prompt_length=8, context_length=13)
"""The default sweep's update batch: 16 prompts x G = 8, prompts of 8 positions, 6 new tokens (5 scored as context)."""


def test_cost_model_by_hand():
    one = ScoringPasses()
    # frozen prefix, top layer of 6, recorded: 128 x 13 = 1664 positions through 1 layer, forward + 2 x backward
    assert frozen_prefix_cost(DEFAULT_BATCH, 6, 5, True, one) == 1664 * 3
    # shared: 16 x 8 + 128 x 5 = 768 positions, forward through 6 layers, backward through 1
    assert shared_prompt_cost(DEFAULT_BATCH, 6, 5, one) == 768 * (6 + 2)
    assert not shared_prompt_is_cheaper(DEFAULT_BATCH, 6, 5, True, one)  # 4992 < 6144: the top layer keeps its prefix
    # layer 2, prefix computed (not recorded): 2 x 1664 once, then 4 layers x 3
    assert frozen_prefix_cost(DEFAULT_BATCH, 6, 2, False, one) == 2 * 1664 + 1664 * 4 * 3
    assert shared_prompt_cost(DEFAULT_BATCH, 6, 2, one) == 768 * (6 + 2 * 4)
    assert shared_prompt_is_cheaper(DEFAULT_BATCH, 6, 2, False, one)  # 10752 < 23296
    # more forward passes weigh against re-running the frozen layers: 4 forwards, 2 backwards, top layer
    many = ScoringPasses(forward=4, backward=2)
    assert frozen_prefix_cost(DEFAULT_BATCH, 6, 5, True, many) == 1664 * (4 + 4)
    assert shared_prompt_cost(DEFAULT_BATCH, 6, 5, many) == 768 * (24 + 4)


def test_a_trial_scores_its_groups_with_shared_prompts_where_cheaper(tiny_config_path):
    """A trial's scorer groups rows by the rollout's G, and a full-parameter trial steps with it."""
    from orchestrator.config import load_sweep_config
    from workers.trial import LayerTrial

    cfg = load_sweep_config(tiny_config_path, {}).trial_config()
    trial = LayerTrial(cfg, TrialSpec("full", ()))
    trial.setup()
    try:
        assert trial.scorer.group_size == cfg.rollout.group_size and trial.scorer.may_share_prompts
        assert trial.train_step()["grad_norm"] > 0
    finally:
        trial.close()
