"""GiGPO and GRPO trials on a real text key-and-door environment with a real (tiny) model: the multi-turn path end to end."""

import pytest
import torch

from orchestrator.config import load_sweep_config
from workers.spec import TrialSpec

AGENTIC = {
    "task.kind": "agentic",
    "task.agentic": {"env": "keydoor", "options": {"height": 3, "width": 4}, "max_turns": 6, "history_window": 0,
                     "num_eval_seeds": 8, "demo_episodes": 40, "demo_noise": 0.2},
    "algorithm.name": "gigpo",
    "rollout.max_new_tokens": 3,
    "budget.prompts_per_step": 2,
}


@pytest.mark.parametrize("algorithm", ["gigpo", "grpo", "dr_grpo"])
def test_env_trial_trains_only_the_selected_layer(tiny_config_path, algorithm):
    from workers.trial import LayerTrial

    cfg = load_sweep_config(tiny_config_path, {**AGENTIC, "algorithm.name": algorithm, "budget.steps": 2}).trial_config()
    trial = LayerTrial(cfg, TrialSpec("layers", (2,)))
    trial.setup()
    before = {n: p.detach().clone() for n, p in trial.model.named_parameters()}
    records = [trial.train_step() for _ in range(2)]
    assert all(r["rows"] >= 2 * 4 for r in records)  # at least one turn per trajectory, G=4, 2 groups
    assert all(0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["anchored_step_fraction"] <= 1.0 for r in records)
    changed = {n for n, p in trial.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("model.layers.2.") for n in changed)
    result = trial.evaluate()
    assert result["eval_size"] == 8 and 0.0 <= result["score"] <= 1.0


def test_gigpo_on_a_single_turn_task_is_a_config_error(tiny_config_path):
    from workers.trial import LayerTrial

    cfg = load_sweep_config(tiny_config_path, {"algorithm.name": "gigpo"}).trial_config()
    with pytest.raises(ValueError, match="algorithm.name='gigpo' needs a multi-turn task"):
        LayerTrial(cfg, TrialSpec("layers", (0,))).setup()


def test_unknown_environment_is_a_one_line_config_error(tiny_config_path):
    from workers.trial import LayerTrial

    cfg = load_sweep_config(tiny_config_path, {**AGENTIC, "task.agentic": {"env": "sokoban9000"}}).trial_config()
    with pytest.raises(ValueError, match=r"task.agentic.env='sokoban9000' is not a registered environment"):
        LayerTrial(cfg, TrialSpec("base")).setup()
