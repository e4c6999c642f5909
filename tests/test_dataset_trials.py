"""Math and code tasks through the task registry inside a real trial (local fixture files, tiny model)."""

from pathlib import Path

import pytest

from orchestrator.config import load_sweep_config
from workers.spec import TrialSpec

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    "kind, dataset",
    [
        ("math", {"path": str(FIXTURES / "gsm8k_sample.jsonl"), "prompt_field": "question", "answer_field": "answer",
                  "prompt_template": "Q: {prompt}\nA:"}),
        ("code", {"path": str(FIXTURES / "mbpp_sample.jsonl"), "prompt_field": "text", "answer_field": "code",
                  "meta_fields": ["test_list"], "prompt_template": "{prompt}\n"}),
    ],
)
def test_dataset_task_trial_runs_and_trains_one_layer(tiny_config_path, kind, dataset):
    from workers.trial import LayerTrial

    overrides = {"task.kind": kind, "task.dataset": dataset, "task.format_reward": 0.0, "budget.steps": 1,
                 "model.embedded.pretrain_max_steps": 2, "rollout.max_new_tokens": 8, "eval.num_prompts": 4}
    cfg = load_sweep_config(tiny_config_path, overrides).trial_config()
    trial = LayerTrial(cfg, TrialSpec("layers", (1,)))
    trial.setup()
    assert trial.task.name == kind
    record = trial.train_step()
    assert record["step"] == 1 and 0.0 <= record["reward_mean"] <= 1.0
    result = trial.evaluate()
    assert result["eval_size"] == 4 and result["score"] == 0.0  # an untrained 3-layer model solves nothing
    assert all(n.startswith("model.layers.1.") for n in trial.selection.parameter_names)
