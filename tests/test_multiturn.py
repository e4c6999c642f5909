"""The multi-turn loop and its flattening, driven by a scripted policy that implements the RolloutEngine protocol.

`ScriptedPolicy` is a real engine-like object (character-level token ids, EOS, per-token log-probs,
left-padded prompts), not a mock of the loop: it tests the loop / environment plumbing, not an engine.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Iterable, Sequence

import pytest
import torch

from workers.collect import trajectory_groups
from workers.config import AlgorithmConfig, GigpoConfig

from rollout.engine import RolloutBatch, RolloutEngine, SamplingSettings
from rollout.envs.demonstrations import demonstrations
from rollout.envs.frozenlake import FrozenLakeTextEnv
from rollout.envs.keydoor import KeyDoorEnv
from rollout.multiturn import (
    GroupRollout,
    MultiTurnSettings,
    PromptFormat,
    StepRecord,
    Trajectory,
    flatten_groups,
    rollout_groups,
    rollout_metrics,
)

EOS, PAD = 0, 1
OPEN_LAKE = ["SFFF", "FFFF", "FFFF", "FFFG"]
Chooser = Callable[[str, random.Random, int], str]
"""(prompt, rng, call index) -> completion text."""


def encode(text: str) -> list[int]:
    return [ord(char) + 2 for char in text]


def decode(ids: Iterable[int]) -> str:
    return "".join(chr(i - 2) for i in ids if i not in (EOS, PAD))


class ScriptedPolicy:
    """A RolloutEngine whose 'model' is a Python function of the prompt; every choice has logp log(1/4)."""

    def __init__(self, choose: Chooser, seed: int = 0) -> None:
        self.choose = choose
        self.rng = random.Random(seed)
        self.calls: list[tuple[list[str], SamplingSettings]] = []

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> RolloutBatch:
        rng = random.Random(settings.seed) if settings.seed is not None else self.rng
        call = len(self.calls)
        self.calls.append((list(prompts), settings))
        rows = [p for p in prompts for _ in range(settings.group_size)]
        completions = [(encode(self.choose(p, rng, call)) + [EOS])[: settings.max_new_tokens] for p in rows]
        prompt_ids = [encode(p) for p in rows]
        width_s, width_t = max(map(len, prompt_ids)), max(map(len, completions))
        ids_NS = torch.full((len(rows), width_s), PAD)
        mask_NS = torch.zeros(len(rows), width_s, dtype=torch.long)
        ids_NT = torch.full((len(rows), width_t), PAD)
        mask_NT = torch.zeros(len(rows), width_t, dtype=torch.long)
        for n, (p, c) in enumerate(zip(prompt_ids, completions)):
            ids_NS[n, width_s - len(p) :], mask_NS[n, width_s - len(p) :] = torch.tensor(p), 1
            ids_NT[n, : len(c)], mask_NT[n, : len(c)] = torch.tensor(c), 1
        return RolloutBatch(
            prompt_ids_NS=ids_NS,
            prompt_mask_NS=mask_NS,
            completion_ids_NT=ids_NT,
            completion_mask_NT=mask_NT,
            sample_logp_NT=mask_NT * math.log(0.25),
            group_index_N=torch.arange(len(prompts)).repeat_interleave(settings.group_size),
            completions_text=[decode(c) for c in completions],
        )

    def greedy(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        return [decode(encode(self.choose(p, self.rng, -1))[:max_new_tokens]) for p in prompts]

    def update_weights(self, named_tensors):
        return {"sync_bytes": 0.0, "sync_seconds": 0.0}

    def close(self) -> None:
        pass


def current_grid(prompt: str) -> str:
    return prompt.split("\n")[-1].rstrip(">")


def lake_walker(invalid_rate: float) -> Chooser:
    """Reads the grid in the prompt: down until the last row, then right; sometimes says nonsense."""

    def choose(prompt: str, rng: random.Random, call: int) -> str:
        if rng.random() < invalid_rate:
            return rng.choice(["jump", "", "up?!", "dow n"])
        return "right" if "P" in current_grid(prompt).split("|")[-1] else "down"

    return choose


def random_actor(actions: Sequence[str]) -> Chooser:
    return lambda prompt, rng, call: rng.choice(list(actions) + ["??"])


SETTINGS = MultiTurnSettings(max_turns=12, prompt=PromptFormat(history_window=1), max_new_tokens=8, seed=11)


def test_scripted_policy_satisfies_the_protocol():
    engine: RolloutEngine = ScriptedPolicy(random_actor(["left"]))
    batch = engine.generate(["ab", "c"], SamplingSettings(group_size=2, max_new_tokens=8))
    assert batch.num_rows == 4 and batch.prompt_mask_NS[3].tolist() == [0, 1]


def test_groups_start_from_their_seed_and_sample_one_action_per_prompt():
    engine = ScriptedPolicy(random_actor(["left", "down", "right", "up"]))
    groups = rollout_groups(engine, lambda: FrozenLakeTextEnv(), [3, 4], 5, SETTINGS)
    assert [g.seed for g in groups] == [3, 4]
    for group in groups:
        assert len(group.trajectories) == 5
        assert len({t.steps[0].prompt for t in group.trajectories}) == 1
        assert len({t.steps[0].state_key for t in group.trajectories}) == 1
    assert groups[0].trajectories[0].steps[0].prompt != groups[1].trajectories[0].steps[0].prompt
    prompts, settings = engine.calls[0]
    assert len(prompts) == 10 and settings.group_size == 1 and settings.max_new_tokens == 8
    assert len({s.seed for _, s in engine.calls}) == len(engine.calls)  # a fresh sampling seed per turn


def test_stops_at_done_or_max_turns():
    env = lambda: FrozenLakeTextEnv(desc=OPEN_LAKE)  # noqa: E731
    done = rollout_groups(ScriptedPolicy(lake_walker(0.0)), env, [0], 2, SETTINGS)[0]
    for trajectory in done.trajectories:
        assert [s.action for s in trajectory.steps] == ["down"] * 3 + ["right"] * 3
        assert trajectory.success and trajectory.episode_return == 1.0 and trajectory.steps[-1].done
    cut = rollout_groups(ScriptedPolicy(lake_walker(0.0)), env, [0], 2, MultiTurnSettings(max_turns=4, max_new_tokens=8))[0]
    for trajectory in cut.trajectories:
        assert len(trajectory.steps) == 4 and not trajectory.success and not trajectory.steps[-1].done


def test_invalid_actions_cost_the_penalty_keep_the_state_and_show_as_question_mark():
    engine = ScriptedPolicy(lambda prompt, rng, call: "jump" if call < 2 else "down")
    group = rollout_groups(engine, lambda: FrozenLakeTextEnv(desc=OPEN_LAKE, invalid_penalty=0.5), [0], 1, SETTINGS)[0]
    steps = group.trajectories[0].steps
    assert [s.reward for s in steps[:2]] == [-0.5, -0.5] and steps[0].action is None
    assert steps[0].state_key == steps[1].state_key == steps[2].state_key == (0, 0)
    assert steps[1].prompt.split("\n")[1] == "P...|....|....|...G>?"
    assert group.trajectories[0].invalid_actions == 2


def test_truncated_completion_is_an_invalid_action_not_a_crash():
    short = MultiTurnSettings(max_turns=3, max_new_tokens=3)
    group = rollout_groups(ScriptedPolicy(lake_walker(0.0)), lambda: FrozenLakeTextEnv(desc=OPEN_LAKE), [0], 1, short)[0]
    assert [s.action_text for s in group.trajectories[0].steps] == ["dow"] * 3
    assert all(s.action is None for s in group.trajectories[0].steps)


def test_history_window_bounds_the_prompt():
    settings = MultiTurnSettings(max_turns=6, prompt=PromptFormat(history_window=2), max_new_tokens=8)
    group = rollout_groups(ScriptedPolicy(lambda p, r, c: "left"), lambda: FrozenLakeTextEnv(desc=OPEN_LAKE), [0], 1, settings)[0]
    lines = [s.prompt.count("\n") for s in group.trajectories[0].steps]
    assert lines == [1, 2, 3, 3, 3, 3]  # instruction + at most 2 remembered turns + current observation


def test_steps_record_the_engines_tokens_and_logp():
    group = rollout_groups(ScriptedPolicy(lake_walker(0.3)), lambda: FrozenLakeTextEnv(desc=OPEN_LAKE), [0], 3, SETTINGS)[0]
    for trajectory in group.trajectories:
        for step in trajectory.steps:
            assert list(step.prompt_token_ids) == encode(step.prompt)
            assert list(step.action_token_ids) == (encode(step.action_text) + [EOS])[:8]
            assert step.action_logp == pytest.approx([math.log(0.25)] * len(step.action_token_ids))


def test_rollouts_are_reproducible_with_a_seed():
    def run():
        engine = ScriptedPolicy(random_actor(KeyDoorEnv().valid_actions), seed=99)
        return rollout_groups(engine, KeyDoorEnv, [1, 2], 3, SETTINGS)

    assert run() == run()


def test_flatten_layout_matches_steps_and_advantages_match_gigpo():
    engine = ScriptedPolicy(random_actor(KeyDoorEnv().valid_actions))
    groups = rollout_groups(engine, KeyDoorEnv, [5, 6], 4, SETTINGS)
    rows = flatten_groups(groups, pad_token_id=PAD, completion_width=8)
    steps = [s for g in groups for t in g.trajectories for s in t.steps]
    batch = rows.batch
    assert batch.num_rows == len(steps) and batch.completion_ids_NT.shape[1] == 8
    for n, step in enumerate(steps):
        prompt_len, action_len = len(step.prompt_token_ids), len(step.action_token_ids)
        assert batch.prompt_mask_NS[n].tolist() == [0] * (batch.prompt_ids_NS.shape[1] - prompt_len) + [1] * prompt_len
        assert decode(batch.prompt_ids_NS[n]) == step.prompt
        assert batch.completion_mask_NT[n].tolist() == [1] * action_len + [0] * (8 - action_len)
        assert batch.completion_ids_NT[n, :action_len].tolist() == list(step.action_token_ids)
        assert (batch.completion_ids_NT[n, action_len:] == PAD).all()
        assert batch.completions_text[n] == step.action_text and rows.reward_N[n] == pytest.approx(step.reward)
    sizes = [len(t.steps) for g in groups for t in g.trajectories]
    assert rows.trajectory_index_N.tolist() == [i for i, size in enumerate(sizes) for _ in range(size)]
    assert rows.turn_index_N.tolist() == [turn for size in sizes for turn in range(size)]
    assert rows.batch.group_index_N.tolist() == [g for g in (0, 1) for _ in range(sum(sizes[4 * g : 4 * g + 4]))]

    adv_N = row_advantages(groups, AlgorithmConfig(name="gigpo", gigpo=GigpoConfig(gamma=0.9, step_weight=1.0)))
    assert adv_N.shape == (batch.num_rows,) and torch.isfinite(adv_N).all()


def row_advantages(groups, algorithm: AlgorithmConfig) -> torch.Tensor:
    return algorithm.entry.advantages(trajectory_groups(groups), algorithm.advantage_options)


def _step(state_key, reward: float) -> StepRecord:
    return StepRecord("p", (1,), "a", (2,), (-0.5,), state_key, "a", reward, False)


def test_gigpo_row_advantages_hand_computed_in_row_order():
    """Two groups, rows in flatten order (group, trajectory, turn). gamma 0.5, omega 1, mean_norm.

    Group 0: A visits a, b, a, c with rewards 0, 0, 0, 1; B visits a, d, b with rewards 0.
      A^E: returns 1 and 0, mean 0.5 -> A +0.5, B -0.5.
      step returns: A [0.125, 0.25, 0.5, 1], B [0, 0, 0]; group a = {A0 .125, A2 .5, B0 0} (mean 5/24),
      b = {A1 .25, B2 0} (mean .125), c and d singletons (0).
    Group 1: two one-step trajectories from state s with rewards 1 and 0: A^E +-0.5, A^S +-0.5.
    """
    mean_a = 5 / 24
    group0 = GroupRollout(0, [Trajectory([_step("a", 0), _step("b", 0), _step("a", 0), _step("c", 1)]),
                              Trajectory([_step("a", 0), _step("d", 0), _step("b", 0)])])
    group1 = GroupRollout(1, [Trajectory([_step("s", 1)]), Trajectory([_step("s", 0)])])
    adv_N = row_advantages([group0, group1], AlgorithmConfig(
        name="gigpo", gigpo=GigpoConfig(gamma=0.5, step_weight=1.0, episode_norm="mean_norm", step_norm="mean_norm")))
    expected = [0.5 + 0.125 - mean_a, 0.5 + 0.125, 0.5 + 0.5 - mean_a, 0.5 + 0.0,
                -0.5 - mean_a, -0.5 + 0.0, -0.5 - 0.125,
                1.0, -1.0]
    assert adv_N.tolist() == pytest.approx(expected, abs=1e-6)
    # GRPO on the same rollouts: the episode advantage only, (R - mean) / std per group, on every step
    grpo_N = row_advantages([group0, group1], AlgorithmConfig(name="grpo"))
    episode = 0.5 / math.sqrt(0.5)  # returns [1, 0]: unbiased std sqrt(0.5)
    assert grpo_N.tolist() == pytest.approx([episode] * 4 + [-episode] * 3 + [episode, -episode], abs=1e-5)


def test_random_play_revisits_anchor_states():
    engine = ScriptedPolicy(random_actor(KeyDoorEnv().valid_actions))
    groups = rollout_groups(engine, KeyDoorEnv, [0, 1, 2], 4, SETTINGS)
    metrics = rollout_metrics(groups)
    assert metrics["anchored_step_fraction"] > 0.5
    assert 0 < metrics["invalid_action_rate"] < 1 and metrics["turns_mean"] > 1
    assert (row_advantages(groups, AlgorithmConfig(name="gigpo", gigpo=GigpoConfig(gamma=0.95, step_weight=1.0))) != 0).any()


def test_demonstration_prompts_are_the_loops_prompts():
    fmt = PromptFormat(history_window=1)
    episode = demonstrations(KeyDoorEnv, [4], noise=0.3, max_turns=20, prompt=fmt, rng_seed=2)[0]
    actions = [action for _, action in episode.pairs]
    engine = ScriptedPolicy(lambda prompt, rng, call: actions[call])
    settings = MultiTurnSettings(max_turns=len(actions), prompt=fmt, max_new_tokens=8)
    steps = rollout_groups(engine, KeyDoorEnv, [4], 1, settings)[0].trajectories[0].steps
    assert [(s.prompt, s.action_text) for s in steps] == list(episode.pairs)


def test_flatten_rejects_empty_and_too_narrow():
    groups = rollout_groups(ScriptedPolicy(lake_walker(0.0)), FrozenLakeTextEnv, [0], 2, MultiTurnSettings(max_turns=0))
    with pytest.raises(ValueError, match="no steps"):
        flatten_groups(groups, PAD)
    groups = rollout_groups(ScriptedPolicy(lake_walker(0.0)), FrozenLakeTextEnv, [0], 2, SETTINGS)
    with pytest.raises(ValueError, match="completion_width"):
        flatten_groups(groups, PAD, completion_width=2)


def test_greedy_mode_acts_with_the_engines_greedy_completion_and_records_no_tokens():
    """Greedy evaluation goes through the same loop: every action is `engine.greedy`, nothing is sampled."""
    engine = ScriptedPolicy(lambda prompt, rng, call: "right" if call == -1 else "left")  # greedy calls pass -1
    settings = MultiTurnSettings(max_turns=12, max_new_tokens=8, greedy=True)
    group = rollout_groups(engine, lambda: FrozenLakeTextEnv(desc=["SFFG"]), [0], 2, settings)[0]
    assert engine.calls == []  # generate() was never called
    for trajectory in group.trajectories:
        assert [s.action for s in trajectory.steps] == ["right"] * 3 and trajectory.success
        assert all(s.action_token_ids == () and s.action_logp == () and s.prompt_token_ids == () for s in trajectory.steps)
