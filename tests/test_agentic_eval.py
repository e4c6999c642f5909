"""Held-out success of the agentic task: greedy or sampled, through the rollout loop, with a real tiny model."""

import pytest

from rollout.config import AgenticConfig, SamplingConfig
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
    assert task.eval_success(engine, SamplingConfig(max_new_tokens=3), "greedy") == expected
    first = groups[0].trajectories[0].steps[0]
    assert first.action_text == engine.greedy([first.prompt], 3)[0]


def test_sampled_success_uses_fixed_random_numbers_and_k_episodes_per_seed(engine):
    task = AgenticTask(AgenticConfig(**LAKE, eval_episodes_per_seed=3))
    first = task.eval_success(engine, SamplingConfig(max_new_tokens=3), "sample")
    assert task.eval_success(engine, SamplingConfig(max_new_tokens=3), "sample") == first  # same weights -> same score, every trial
    settings = MultiTurnSettings(max_turns=4, prompt=task.prompt_format, max_new_tokens=3, seed=EVAL_SAMPLING_SEED)
    groups = rollout_groups(engine, task.env_factory(), task.eval_seeds, 3, settings)
    assert len(groups) * len(groups[0].trajectories) == 18
    assert first == rollout_metrics(groups)["success_rate"]


def test_collector_scores_with_the_configured_decoding_and_reports_both(tiny_config_path, monkeypatch):
    from orchestrator.config import load_sweep_config
    from workers.spec import TrialSpec
    from workers.trial import LayerTrial

    agentic = {**LAKE, "num_eval_seeds": 4, "demo_episodes": 20, "eval_decoding": "sample", "eval_episodes_per_seed": 2}
    cfg = load_sweep_config(tiny_config_path, {"task.kind": "agentic", "task.agentic": agentic, "rollout.max_new_tokens": 3}).trial_config()
    trial = LayerTrial(cfg, TrialSpec("base"))
    trial.setup()
    task, engine, rollout = trial.task, trial.engine, cfg.rollout
    # The barely pre-trained model solves hardly any 3x3 lake (none when written), so both rates would be 0: the
    # oracle's action is substituted on the shortest path of seed 0 when greedy and of seeds 1-3 when sampling
    # (history_window=0: the prompt is the whole state). Greedy then solves >= 1 of 4 episodes and sampling
    # >= 6 of 8, so mixing the two up shows.
    greedy_oracle, sample_oracle = _oracle_prompts(task, task.eval_seeds[:1]), _oracle_prompts(task, task.eval_seeds[1:])
    real_greedy, real_generate = engine.greedy, engine.generate

    def greedy_with_oracle(prompts, max_new_tokens):
        return [greedy_oracle.get(p, text) for p, text in zip(prompts, real_greedy(prompts, max_new_tokens))]

    def generate_with_oracle(prompts, settings):
        batch = real_generate(prompts, settings)
        batch.completions_text = [sample_oracle.get(prompts[int(g)], text) for g, text in zip(batch.group_index_N, batch.completions_text)]
        return batch

    monkeypatch.setattr(engine, "greedy", greedy_with_oracle)
    monkeypatch.setattr(engine, "generate", generate_with_oracle)
    result = trial.evaluate()
    # both rates recounted from the episodes' own outcomes: greedy 4 seeds x 1, sampled 4 seeds x 2 episodes
    greedy = MultiTurnSettings(max_turns=4, prompt=task.prompt_format, max_new_tokens=3, greedy=True)
    played = rollout_groups(engine, task.env_factory(), task.eval_seeds, 1, greedy)
    greedy_solved = sum(g.trajectories[0].success for g in played)
    sampled = MultiTurnSettings(max_turns=4, prompt=task.prompt_format, max_new_tokens=3, temperature=rollout.temperature,
                                top_p=rollout.top_p, seed=EVAL_SAMPLING_SEED)
    played = rollout_groups(engine, task.env_factory(), task.eval_seeds, 2, sampled)
    assert [len(g.trajectories) for g in played] == [2] * 4
    sampled_solved = sum(t.success for g in played for t in g.trajectories)
    assert greedy_solved >= 1 and sampled_solved >= 6  # the oracle episodes, plus any the model solves itself
    assert result["success_greedy"] == greedy_solved / 4
    assert result["score"] == result["success_sampled"] == sampled_solved / 8  # eval_decoding="sample" picks it
    assert result["eval_size"] == 4


def _oracle_prompts(task, seeds):
    """prompt -> oracle action at every state on the oracle's path from each seed (prompts without history)."""
    table = {}
    for seed in seeds:
        env = task.env_factory()()
        observation, done = env.reset(seed), False
        for _ in range(task.cfg.max_turns):
            action = env.oracle_action()
            table[task.prompt_format.render(env.instruction, [], observation)] = action
            observation, _, done, _ = env.step(action)
            if done:
                break
        assert done and env.success, f"the oracle does not solve seed {seed} within max_turns"
    return table
