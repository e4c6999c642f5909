"""Held-out success of the agentic task: greedy or sampled, through the rollout loop, with a real tiny model."""

import pytest

from rollout.config import AgenticConfig
from rollout.hf_engine import HFEngine
from rollout.multiturn import MultiTurnSettings, rollout_groups, rollout_metrics
from rollout.tasks.agentic import EVAL_SAMPLING_SEED, AgenticTask

LAKE = {"env": "frozenlake", "options": {"size": 3}, "max_turns": 4, "history_window": 0, "num_eval_seeds": 6}


@pytest.fixture()
def engine(tiny_model, tokenizer):
    return HFEngine(tiny_model, tokenizer)


def test_greedy_success_is_the_loops_greedy_play(engine):
    task = AgenticTask(AgenticConfig(**LAKE))
    settings = MultiTurnSettings(max_turns=4, prompt=task.prompt_format, max_new_tokens=3, greedy=True)
    groups = rollout_groups(engine, task.env_factory(), task.eval_seeds, 1, settings)
    expected = sum(g.trajectories[0].success for g in groups) / len(groups)
    assert task.eval_success(engine, 3, 1.0, 1.0, "greedy") == expected
    first = groups[0].trajectories[0].steps[0]
    assert first.action_text == engine.greedy([first.prompt], 3)[0]


def test_sampled_success_uses_fixed_random_numbers_and_k_episodes_per_seed(engine):
    task = AgenticTask(AgenticConfig(**LAKE, eval_episodes_per_seed=3))
    first = task.eval_success(engine, 3, 1.0, 1.0, "sample")
    assert task.eval_success(engine, 3, 1.0, 1.0, "sample") == first  # same weights -> same score, every trial
    settings = MultiTurnSettings(max_turns=4, prompt=task.prompt_format, max_new_tokens=3, seed=EVAL_SAMPLING_SEED)
    groups = rollout_groups(engine, task.env_factory(), task.eval_seeds, 3, settings)
    assert len(groups) * len(groups[0].trajectories) == 18
    assert first == rollout_metrics(groups)["success_rate"]


def test_collector_scores_with_the_configured_decoding_and_reports_both(tiny_config_path):
    from orchestrator.config import load_sweep_config
    from workers.spec import TrialSpec
    from workers.trial import LayerTrial

    agentic = {**LAKE, "num_eval_seeds": 4, "demo_episodes": 20, "eval_decoding": "sample", "eval_episodes_per_seed": 2}
    cfg = load_sweep_config(tiny_config_path, {"task.kind": "agentic", "task.agentic": agentic, "rollout.max_new_tokens": 3}).trial_config()
    trial = LayerTrial(cfg, TrialSpec("base"))
    trial.setup()
    result = trial.evaluate()
    assert result["score"] == result["success_sampled"] and 0.0 <= result["success_greedy"] <= 1.0
    assert result["success_sampled"] * 8 == int(result["success_sampled"] * 8)  # 4 seeds x 2 episodes
    assert result["eval_size"] == 4
