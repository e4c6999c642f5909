"""Checkpoints without pickles: every piece of a trial's state comes back exactly, and a save is all-or-nothing."""

from __future__ import annotations

import json
import random

import numpy as np
import torch

from workers.checkpoint import STATE_FILE, load_checkpoint, rng_state, save_checkpoint, set_rng_state


def trained_state():
    param = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.bfloat16))
    optimizer = torch.optim.AdamW([param], lr=1e-3, betas=(0.9, 0.99))
    param.grad = torch.randn(3, 4, dtype=torch.bfloat16)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 10))
    scheduler.step()
    return param, optimizer, scheduler


def test_optimizer_scheduler_rng_and_tensors_round_trip(tmp_path):
    param, optimizer, scheduler = trained_state()
    state = {"step": 7, "trainable": {"w": param.detach().clone()}, "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": rng_state()}
    save_checkpoint(tmp_path, state)
    expected = torch.rand(3), random.random(), np.random.rand(2)  # what the RNGs draw next after the save
    back = load_checkpoint(tmp_path)

    assert back["step"] == 7 and torch.equal(back["trainable"]["w"], param) and back["trainable"]["w"].dtype == torch.bfloat16
    fresh = torch.nn.Parameter(torch.zeros(3, 4, dtype=torch.bfloat16))
    restored = torch.optim.AdamW([fresh], lr=0.5)
    restored.load_state_dict(back["optimizer"])  # the state is keyed by parameter index (int): it must come back as int
    assert set(restored.state_dict()["state"]) == {0}
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(restored.state_dict()["state"][0][key], optimizer.state_dict()["state"][0][key])
    assert restored.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] and tuple(restored.param_groups[0]["betas"]) == (0.9, 0.99)
    assert back["scheduler"]["last_epoch"] == 1 and back["scheduler"]["_last_lr"] == scheduler.state_dict()["_last_lr"]
    set_rng_state(back["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1] and np.array_equal(np.random.rand(2), expected[2])


def test_a_save_interrupted_before_its_state_file_leaves_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path, {"step": 4, "w": torch.ones(2)})
    # a second save that died after writing its tensors but before its state file replaced the old one
    (tmp_path / "trial_state-deadbeefdeadbeef.safetensors").write_bytes(b"partial")
    back = load_checkpoint(tmp_path)
    assert back["step"] == 4 and torch.equal(back["w"], torch.ones(2))
    save_checkpoint(tmp_path, {"step": 8, "w": torch.zeros(2)})
    named = json.loads((tmp_path / STATE_FILE).read_text())["tensors_file"]
    assert sorted(p.name for p in tmp_path.glob("trial_state-*")) == [named]  # older tensor files are removed
    assert load_checkpoint(tmp_path)["step"] == 8
