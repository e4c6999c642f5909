"""A trial reuses the hidden states HF generate computed below its layer: the update runs no prefix pass, and
the step is the one a prefix pass would have given."""

import pytest

from orchestrator.config import load_sweep_config
from workers.spec import TrialSpec


def _trial(config_path, records_prefix: bool):
    from workers.trial import LayerTrial

    trial = LayerTrial(load_sweep_config(config_path).trial_config(), TrialSpec("layers", (2,)))
    trial.setup()
    assert trial.records_prefix  # HF engine, single-turn task, layer 2 of 3, no dropout
    trial.records_prefix = records_prefix
    return trial


def test_update_skips_the_prefix_pass_and_takes_the_same_step(tiny_config_path):
    records = {}
    for records_prefix in (True, False):
        trial = _trial(tiny_config_path, records_prefix)
        completed = []
        handle = trial.model.model.layers[0].register_forward_hook(lambda *_: completed.append(1))
        record = trial.train_step()
        handle.remove()
        widths = trial.cfg.rollout.max_new_tokens + 1  # generate's forwards through layer 0: the shared prompt
        # pass, then at most one per sampled token
        records[records_prefix] = (record, len(completed), widths)
        trial.close()
    (recorded, recorded_calls, widths), (computed, computed_calls, _) = records[True], records[False]
    assert recorded_calls <= widths  # only generation ran layer 0
    assert computed_calls == recorded_calls + 1  # plus the prefix pass of the update's one micro-batch
    assert recorded["grad_norm"] > 0
    assert recorded["grad_norm"] == pytest.approx(computed["grad_norm"], rel=1e-4)
    assert recorded["loss"] == pytest.approx(computed["loss"], abs=1e-6)
    assert recorded["logp_mismatch"] <= computed["logp_mismatch"] + 1e-6
