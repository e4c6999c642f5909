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
def test_dataset_task_trial_runs_and_trains_one_layer(tiny_config_path, kind, dataset, monkeypatch):
    from workers.trial import LayerTrial

    overrides = {"task.kind": kind, "task.dataset": dataset, "task.format_reward": 0.0, "budget.steps": 1,
                 "model.embedded.pretrain_max_steps": 2, "rollout.max_new_tokens": 8, "eval.num_prompts": 4}
    cfg = load_sweep_config(tiny_config_path, overrides).trial_config()
    trial = LayerTrial(cfg, TrialSpec("layers", (1,)))
    trial.setup()
    assert trial.task.name == kind
    engine = trial.engine
    real_generate, real_greedy = engine.generate, engine.greedy

    def solution(example):  # what earns reward 1: the gold number stated GSM8K-style, or the reference code
        return "#### " + example.answer.split("####")[-1].strip() if kind == "math" else example.answer

    by_prompt = {e.prompt: e for e in trial.task.train_examples()}

    def generate_known(prompts, settings):  # every third row states its own prompt's solution, the rest nothing
        batch = real_generate(prompts, settings)
        batch.completions_text = [solution(by_prompt[prompts[int(g)]]) if row % 3 == 0 else ""
                                  for row, g in enumerate(batch.group_index_N)]
        return batch

    monkeypatch.setattr(engine, "generate", generate_known)
    record = trial.train_step()
    rows = 4 * 4  # prompts_per_step x group_size; rows 0, 3, ..., 15 solved
    assert record["step"] == 1 and record["reward_mean"] == 6 / rows and record["accuracy"] == 6 / rows
    assert record["reward_std"] == pytest.approx(((6 * (1 - 6 / rows) ** 2 + 10 * (6 / rows) ** 2) / (rows - 1)) ** 0.5)
    eval_examples = list(trial.task.eval_examples())[:4]
    planted = eval_examples[2].prompt

    def greedy_one_planted(prompts, max_new_tokens):  # the model's own answers, except eval example 2 is solved
        return [solution(eval_examples[2]) if p == planted else text for p, text in zip(prompts, real_greedy(prompts, max_new_tokens))]

    monkeypatch.setattr(engine, "greedy", greedy_one_planted)
    result = trial.evaluate()
    assert result["eval_size"] == 4 and result["score"] == 1 / 4  # the planted one; an untrained 3-layer model solves nothing
    assert all(n.startswith("model.layers.1.") for n in trial.selection.parameter_names)
