"""The single-layer trainer on real tiny Qwen2 models: what trains, what is skipped, what stays invariant."""

import json

import pytest
import torch

from rollout.engine import SamplingSettings
from rollout.hf_engine import HFEngine
from workers.config import AlgorithmConfig
from workers.policy import PolicyScorer, ScoringInputs
from workers.reference import ReferenceWeights
from workers.spec import TrialSpec
from workers.trainable import find_decoder_layout, select_trainable
from workers.update import UpdateBatch, build_adamw, policy_update

PROMPTS = ["12+34=", "5+7=", "99+1=", "3+3="]


def _batch(model, tokenizer, group_size=4, seed=0):
    return HFEngine(model, tokenizer).generate(PROMPTS, SamplingSettings(group_size=group_size, max_new_tokens=5, seed=seed))


def test_group_rows_share_one_prompt_pass_and_sample_what_a_full_forward_scores(tiny_model, tokenizer):
    """The prompt runs once per group (its cache repeated for the group's rows), and the engine's log-probs of what
    it sampled are those of a plain forward over prompt + completion; groups of one share nothing."""
    from rollout.hf_engine import encode_prompts, shared_prompt_cache

    ids, mask = encode_prompts(tokenizer, PROMPTS)
    cache = shared_prompt_cache(tiny_model, ids, mask, 4)
    assert cache.get_seq_length() == ids.shape[1] - 1 and cache.layers[0].keys.shape[0] == 4 * len(PROMPTS)
    assert shared_prompt_cache(tiny_model, ids, mask, 1) is None
    tiny_model.generation_config.prefill_chunk_size = 4  # chunked prefill would append the prompt a second time
    assert shared_prompt_cache(tiny_model, ids, mask, 4) is None
    tiny_model.generation_config.prefill_chunk_size = None
    batch = _batch(tiny_model, tokenizer)
    inputs = ScoringInputs.from_batch(batch)
    with torch.no_grad():
        logp, _ = PolicyScorer(tiny_model, find_decoder_layout(tiny_model), None).token_logp(inputs, None)
    mask_NT = batch.completion_mask_NT.bool()
    assert torch.allclose(logp[mask_NT], batch.sample_logp_NT[mask_NT], atol=1e-5)


def test_rollout_batch_layout(tiny_model, tokenizer):
    batch = _batch(tiny_model, tokenizer)
    assert batch.completion_ids_NT.shape[0] == len(PROMPTS) * 4
    assert batch.group_index_N.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert (batch.sample_logp_NT[batch.completion_mask_NT == 0] == 0).all()
    assert (batch.sample_logp_NT[batch.completion_mask_NT == 1] <= 0).all()
    eos_positions = (batch.completion_ids_NT == tokenizer.eos_token_id).nonzero()
    for row, column in eos_positions.tolist():  # EOS is inside the mask, nothing after it is
        assert batch.completion_mask_NT[row, column] == 1
        assert batch.completion_mask_NT[row, column + 1 :].sum() == 0


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_prefix_scoring_equals_full_forward_and_engine(tiny_model, tokenizer, layer):
    batch = _batch(tiny_model, tokenizer)
    inputs = ScoringInputs.from_batch(batch)
    layout = find_decoder_layout(tiny_model)
    full_scorer = PolicyScorer(tiny_model, layout, None)
    prefix_scorer = PolicyScorer(tiny_model, layout, layer)
    assert prefix_scorer.uses_prefix
    with torch.no_grad():
        full_logp, _ = full_scorer.token_logp(inputs, None)
        prefix_logp, _ = prefix_scorer.token_logp(inputs, prefix_scorer.prefix(inputs))
    mask = batch.completion_mask_NT.bool()
    assert torch.allclose(full_logp[mask], prefix_logp[mask], atol=1e-5)
    assert torch.allclose(full_logp[mask], batch.sample_logp_NT[mask], atol=1e-4)


@pytest.mark.parametrize("layer", [1, 3])
def test_prefix_recorded_during_generation_equals_the_prefix_pass(tiny_model, tokenizer, layer):
    """HF generate's own hidden states entering layer k (prefill, then one position per fed-back token) stand in
    for the prefix pass: same shape as the context the update scores, same log-probs, same gradient."""
    layout = find_decoder_layout(tiny_model)
    scorer = PolicyScorer(tiny_model, layout, layer)
    assert scorer.reuses_generation_prefix
    with scorer.recording_prefix() as recorded:
        batch = _batch(tiny_model, tokenizer)
    inputs = ScoringInputs.from_batch(batch)
    hidden = recorded.hidden_for(inputs, 4)
    assert hidden is not None and tuple(hidden.shape[:2]) == (batch.num_rows, inputs.input_ids_NL.shape[1] - 1)
    # the prompt but its last token once per group (shared cache), then the last prompt token and every sampled
    # token but the last, for every row
    assert [tuple(c.shape[:2]) for c in recorded.chunks] == [(len(PROMPTS), batch.prompt_ids_NS.shape[1] - 1)] + [
        (batch.num_rows, 1)] * batch.completion_ids_NT.shape[1]
    computed = scorer.prefix(inputs)
    reused = scorer.prefix(inputs, hidden)
    assert reused.hidden_NLH is hidden
    mask = batch.completion_mask_NT.bool()
    rows_with_context = inputs.attention_mask_NL[:, :-1].bool()
    assert torch.allclose(computed.hidden_NLH[rows_with_context], hidden[rows_with_context], atol=1e-5)
    gradients = []
    for state in (computed, reused):
        tiny_model.zero_grad(set_to_none=True)
        logp, _ = scorer.token_logp(inputs, state)
        (logp * mask).sum().backward()
        gradients.append(torch.cat([p.grad.flatten() for p in tiny_model.model.layers[layer].parameters()]))
        assert torch.allclose(logp[mask], batch.sample_logp_NT[mask], atol=1e-4)
    assert torch.allclose(gradients[0], gradients[1], atol=1e-4, rtol=1e-4)


def test_recorded_prefix_that_does_not_line_up_is_refused(tiny_model, tokenizer):
    """A recording from another batch shape (another engine generated, or several calls) is never used."""
    scorer = PolicyScorer(tiny_model, find_decoder_layout(tiny_model), 2)
    with scorer.recording_prefix() as recorded:
        _batch(tiny_model, tokenizer, group_size=2)
    assert recorded.chunks
    assert recorded.hidden_for(ScoringInputs.from_batch(_batch(tiny_model, tokenizer)), 4) is None
    with scorer.recording_prefix() as twice:  # two generate calls: chunks of two batches
        _batch(tiny_model, tokenizer)
        batch = _batch(tiny_model, tokenizer)
    assert twice.hidden_for(ScoringInputs.from_batch(batch), 4) is None
    with scorer.recording_prefix() as nothing:
        pass
    assert nothing.hidden_for(ScoringInputs.from_batch(batch), 4) is None


def test_no_prefix_is_recorded_for_layer_zero_or_with_dropout(tiny_model, tokenizer):
    layout = find_decoder_layout(tiny_model)
    assert not PolicyScorer(tiny_model, layout, 0).reuses_generation_prefix  # nothing to skip
    assert not PolicyScorer(tiny_model, layout, None).reuses_generation_prefix
    tiny_model.config.attention_dropout = 0.1  # training-mode states would differ from generation's
    assert not PolicyScorer(tiny_model, layout, 2).reuses_generation_prefix


def test_no_gradient_reaches_below_the_trainable_layer(tiny_model, tokenizer):
    selection = select_trainable(tiny_model, TrialSpec("layers", (2,)))
    batch = _batch(tiny_model, tokenizer)
    inputs = ScoringInputs.from_batch(batch)
    scorer = PolicyScorer(tiny_model, selection.layout, selection.lowest_layer)
    prefix = scorer.prefix(inputs)
    assert not prefix.hidden_NLH.requires_grad  # the prefix holds no autograd graph
    logp, _ = scorer.token_logp(inputs, prefix)
    logp.sum().backward()
    grads = {name: p.grad for name, p in tiny_model.named_parameters()}
    assert all(g is not None for n, g in grads.items() if n.startswith("model.layers.2."))
    assert all(g is None for n, g in grads.items() if not n.startswith("model.layers.2."))


def test_selection_errors_name_what_was_found(tiny_model):
    with pytest.raises(ValueError, match=r"layer 7 is out of range: Qwen2ForCausalLM has 4 decoder layers \(model.layers.0-3\)"):
        select_trainable(tiny_model, TrialSpec("layers", (7,)))
    with pytest.raises(ValueError, match="no recognisable decoder-layer list"):
        find_decoder_layout(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_tied_embeddings_stay_frozen_for_a_layer_trial(tiny_model):
    assert tiny_model.lm_head.weight is tiny_model.model.embed_tokens.weight
    selection = select_trainable(tiny_model, TrialSpec("layers", (1,)))
    assert all(name.startswith("model.layers.1.") for name in selection.parameter_names)
    assert not tiny_model.lm_head.weight.requires_grad


def _update(model, tokenizer, micro_batch_size, layer=1):
    torch.manual_seed(0)
    selection = select_trainable(model, TrialSpec("layers", (layer,)))
    params = [p for n, p in model.named_parameters() if n in selection.parameter_names]
    batch = _batch(model, tokenizer, seed=1)
    adv = torch.linspace(-1, 1, batch.num_rows)
    optimizer = torch.optim.SGD(params, lr=0.1)
    algorithm = AlgorithmConfig(micro_batch_size=micro_batch_size, kl_beta=0.1)
    stats = policy_update(
        PolicyScorer(model, selection.layout, layer), optimizer, params,
        UpdateBatch(ScoringInputs.from_batch(batch), adv, batch.sample_logp_NT), algorithm, 5, 1e9,
        ReferenceWeights(model, selection.parameter_names),
    )
    return {n: p.detach().clone() for n, p in model.named_parameters() if n in selection.parameter_names}, stats


def test_update_is_invariant_to_micro_batch_size(tokenizer):
    from workers.base_model import build_untrained_model
    from workers.config import EmbeddedModelConfig

    cfg = EmbeddedModelConfig(num_layers=3, hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1, seed=5)
    whole, stats_whole = _update(build_untrained_model(cfg, len(tokenizer), 0, 1), tokenizer, micro_batch_size=64)
    parts, stats_parts = _update(build_untrained_model(cfg, len(tokenizer), 0, 1), tokenizer, micro_batch_size=3)
    assert stats_whole["loss"] == pytest.approx(stats_parts["loss"], abs=1e-5)
    for name in whole:
        assert torch.allclose(whole[name], parts[name], atol=1e-6), name


def test_reference_keeps_only_trainable_weights_and_restores(tiny_model):
    selection = select_trainable(tiny_model, TrialSpec("layers", (2,)))
    reference = ReferenceWeights(tiny_model, selection.parameter_names)
    assert set(reference.original) == set(selection.parameter_names)
    layer_bytes = sum(p.numel() * 4 for n, p in tiny_model.named_parameters() if n.startswith("model.layers.2."))
    assert sum(t.numel() * t.element_size() for t in reference.original.values()) == layer_bytes
    weight = tiny_model.model.layers[2].mlp.up_proj.weight
    with torch.no_grad():
        weight.add_(1.0)
    trained = weight.detach().clone()
    with reference.active(tiny_model):
        assert torch.equal(weight, reference.original["model.layers.2.mlp.up_proj.weight"])
    assert torch.equal(weight, trained)


@pytest.mark.parametrize("spec_args", [("layers", (1,)), ("full", ()), ("base", ())])
def test_trial_changes_exactly_the_selected_parameters(tiny_config_path, tmp_path, spec_args):
    from orchestrator.config import load_sweep_config
    from workers.trial import LayerTrial

    cfg = load_sweep_config(tiny_config_path).trial_config()
    spec = TrialSpec(*spec_args)
    trial = LayerTrial(cfg.model_copy(update={"budget": cfg.budget.model_copy(update={"steps": 3})}), spec)
    trial.setup()
    before = {n: p.detach().clone() for n, p in trial.model.named_parameters()}
    while not trial.done:
        trial.train_step()
    changed = {n for n, p in trial.model.named_parameters() if not torch.equal(p, before[n])}
    expected = set(trial.selection.parameter_names)
    assert changed == expected
    if spec.kind == "layers":
        assert expected and all(n.startswith("model.layers.1.") for n in expected)
    elif spec.kind == "full":
        assert expected == set(before)
    else:
        assert expected == set()


def test_non_finite_reward_stops_with_clear_error_and_keeps_metrics(tiny_config_path, tmp_path, monkeypatch):
    from orchestrator.config import load_sweep_config
    from rollout.tasks.arithmetic import ArithmeticTask
    from workers.runner import run_trial
    from workers.update import NonFiniteLossError

    cfg = load_sweep_config(tiny_config_path, {"budget.steps": 4}).trial_config()
    real_reward = ArithmeticTask.reward
    calls = []

    def reward_turning_nan(self, prompts, completions, **meta):
        calls.append(1)
        rewards = real_reward(self, prompts, completions, **meta)
        return [float("nan")] * len(rewards) if len(calls) == 3 else rewards

    monkeypatch.setattr(ArithmeticTask, "reward", reward_turning_nan)
    with pytest.raises(NonFiniteLossError, match=r"step 3: reward function returned a non-finite value"):
        run_trial(cfg, TrialSpec("layers", (1,)), tmp_path / "trial")
    lines = (tmp_path / "trial" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]


def test_non_finite_loss_raises_before_the_optimizer_step(tiny_model, tokenizer):
    from workers.update import NonFiniteLossError

    selection = select_trainable(tiny_model, TrialSpec("layers", (1,)))
    params = [p for n, p in tiny_model.named_parameters() if n in selection.parameter_names]
    before = [p.detach().clone() for p in params]
    batch = _batch(tiny_model, tokenizer)
    adv = torch.full((batch.num_rows,), float("inf"))
    with pytest.raises(NonFiniteLossError, match="loss is nan|loss is inf|loss is -inf"):
        policy_update(
            PolicyScorer(tiny_model, selection.layout, 1), torch.optim.AdamW(params), params,
            UpdateBatch(ScoringInputs.from_batch(batch), adv, batch.sample_logp_NT), AlgorithmConfig(), 5, 1.0,
        )
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_truncated_importance_sampling_scales_the_policy_loss_by_the_capped_ratio(tiny_model, tokenizer):
    """Engine log-probs ln 2 below the trainer's: weight min(2, cap) multiplies every token's loss."""
    selection = select_trainable(tiny_model, TrialSpec("layers", (1,)))
    params = [p for n, p in tiny_model.named_parameters() if n in selection.parameter_names]
    batch = _batch(tiny_model, tokenizer)
    inputs = ScoringInputs.from_batch(batch)
    scorer = PolicyScorer(tiny_model, selection.layout, 1)
    with torch.no_grad():
        trainer_logp, _ = scorer.token_logp(inputs, scorer.prefix(inputs))
    engine_logp = trainer_logp - torch.log(torch.tensor(2.0))
    adv = torch.ones(batch.num_rows)  # ratio 1 at the first epoch: every token's loss is -A = -1

    def pg_loss(cap):
        optimizer = torch.optim.SGD(params, lr=0.0)  # lr 0: weights stay put between the two calls
        return policy_update(scorer, optimizer, params, UpdateBatch(inputs, adv, engine_logp),
                             AlgorithmConfig(truncated_is_cap=cap), 5, 1e9)["pg_loss"]

    plain = pg_loss(None)
    assert plain == pytest.approx(-1.0, rel=1e-5)
    assert pg_loss(1.5) == pytest.approx(1.5 * plain, rel=1e-4)
    assert pg_loss(10.0) == pytest.approx(2.0 * plain, rel=1e-4)


def test_adamw_is_fused_on_cpu_and_steps_as_the_unfused_one():
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(4))]
    twins = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    initial = [w.detach().clone() for w in weights]
    fused = build_adamw(weights, 1e-2, (0.9, 0.99), 0.01)
    unfused = torch.optim.AdamW(twins, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.01, foreach=False)
    assert fused.defaults["fused"] is True
    gradients = [torch.randn_like(w) for w in weights]  # one per weight, so every entry moves ~lr a step
    for step in range(3):
        for weight, twin, gradient in zip(weights, twins, gradients):
            weight.grad = gradient * (1.0 + 0.5 * step)
            twin.grad = weight.grad.clone()
        fused.step()
        unfused.step()
    for weight, twin, before in zip(weights, twins, initial):
        assert (weight.detach() - before).abs().min() > 1e-2  # every entry moved
        torch.testing.assert_close(weight.detach(), twin.detach())
    on_meta = build_adamw([torch.nn.Parameter(torch.zeros(2, device="meta"))], 1e-2, (0.9, 0.99), 0.0)
    assert on_meta.defaults["fused"] is None  # no fused kernel there: torch picks its default
