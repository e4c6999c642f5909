"""A trial reuses the hidden states HF generate computed below its layer: the update runs no prefix pass, and
the step is the one a prefix pass would have given, also over micro-batches, PPO epochs and a KL reference."""

import pytest

from orchestrator.config import load_sweep_config
from workers.spec import TrialSpec


def _trial(config_path, overrides, records_prefix: bool):
    from workers.trial import LayerTrial

    trial = LayerTrial(load_sweep_config(config_path, overrides).trial_config(), TrialSpec("layers", (2,)))
    trial.setup()
    assert trial.records_prefix  # HF engine, single-turn task, layer 2 of 3, no dropout
    trial.records_prefix = records_prefix
    trial.scorer.may_share_prompts = False  # the frozen-prefix way, not the shared-prompt one (tested on its own)
    return trial


@pytest.mark.parametrize("overrides", [
    {},
    {"algorithm.micro_batch_size": 4, "algorithm.ppo_epochs": 2, "algorithm.kl_beta": 0.1},
], ids=["one-pass", "micro-batches-epochs-kl"])
def test_update_skips_the_prefix_pass_and_takes_the_same_step(tiny_config_path, overrides):
    records = {}
    for records_prefix in (True, False):
        trial = _trial(tiny_config_path, overrides, records_prefix)
        completed = []
        handle = trial.model.model.layers[0].register_forward_hook(lambda *_: completed.append(1))
        record = trial.train_step()
        handle.remove()
        second = trial.train_step()  # the policy has moved: the KL term is no longer zero
        weights = {n: p.detach().clone() for n, p in trial.trainable.items()}
        records[records_prefix] = (record, len(completed), weights, second)
        rows = trial.cfg.budget.prompts_per_step * trial.cfg.rollout.group_size
        micro_batches = -(-rows // trial.cfg.algorithm.micro_batch_size)
        most_generate_passes = trial.cfg.rollout.max_new_tokens + 1  # the shared prompt pass, one per sampled token
        trial.close()
    (recorded, recorded_calls, recorded_weights, recorded_2), (computed, computed_calls, computed_weights, computed_2) = (
        records[True], records[False])
    assert recorded_calls <= most_generate_passes  # only generation ran layer 0
    assert computed_calls == recorded_calls + micro_batches  # plus the update's prefix pass per micro-batch
    assert recorded["grad_norm"] > 0
    assert recorded["grad_norm"] == pytest.approx(computed["grad_norm"], rel=1e-4)
    assert recorded_2["grad_norm"] == pytest.approx(computed_2["grad_norm"], rel=1e-4)
    assert recorded_2["kl"] == pytest.approx(computed_2["kl"], rel=1e-3, abs=1e-9)
    if overrides.get("algorithm.kl_beta"):
        assert recorded_2["kl"] > 0
    step_size = 2 * trial.cfg.optim.lr_for("layers")  # two AdamW steps move an entry by about lr each
    for name, value in recorded_weights.items():
        assert (value - computed_weights[name]).abs().max() < 0.02 * step_size, name  # float rounding, not a different step
