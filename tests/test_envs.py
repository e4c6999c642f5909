"""Text environments: reproducibility, invalid actions, revisited state keys, slipping, oracle demonstrations."""

import pytest

from rollout.envs.base import StepResult
from rollout.envs.demonstrations import demonstrations, success_rate, training_pairs
from rollout.envs.frozenlake import FrozenLakeTextEnv
from rollout.envs.keydoor import KeyDoorEnv, random_layout
from rollout.envs.registry import env_names, make_env, register_env
from rollout.multiturn import PromptFormat

OPEN_LAKE = ["SFFF", "FFFF", "FFFF", "FFFG"]


def play(env, seed, actions):
    observations = [env.reset(seed)]
    keys = [env.state_key()]
    for action in actions:
        result = env.step(action)
        observations.append(result.observation)
        keys.append(env.state_key())
        if result.done:
            break
    return observations, keys


@pytest.mark.parametrize("name,options", [("frozenlake", {}), ("frozenlake", {"is_slippery": True}), ("keydoor", {})])
def test_same_seed_same_episode_and_layouts_differ_across_seeds(name, options):
    actions = ["right", "down", "right", "down", "pick", "up", "open", "right", "right", "down"]
    first = play(make_env(name, **options), 7, actions)
    second = play(make_env(name, **options), 7, actions)
    assert first == second
    layouts = {make_env(name, **options).reset(seed) for seed in range(20)}
    assert len(layouts) > 5


def test_frozenlake_render_is_compact_and_marks_the_agent():
    env = FrozenLakeTextEnv(desc=["SFFH", "FHFF", "FFFF", "HFFG"])
    assert env.reset(0) == "P..H|.H..|....|H..G"
    env.step("right")
    assert env.render() == ".P.H|.H..|....|H..G"
    assert env.state_key() == (0, 1)
    prompt = PromptFormat(history_window=1).render(env.instruction, [("P..H|.H..|....|H..G", "right")], env.render())
    assert len(prompt) < 70


@pytest.mark.parametrize("env", [FrozenLakeTextEnv(invalid_penalty=0.25), KeyDoorEnv(invalid_penalty=0.25)])
def test_invalid_actions_are_penalised_and_never_end_the_episode(env):
    observation = env.reset(3)
    key = env.state_key()
    for text in ["", "jump", "###", "north left", "lef t", "\n\n", "x" * 500]:
        result = env.step(text)
        assert isinstance(result, StepResult)
        assert result == (observation, -0.25, False, {"action": None, "invalid_action": True, "success": False})
        assert env.state_key() == key and not env.done
    valid = env.step(" Left.\n")  # case, punctuation and surrounding text are tolerated
    assert valid.info["action"] == "left" and not valid.info["invalid_action"]


def test_invalid_penalty_must_not_be_negative_and_step_after_done_raises():
    with pytest.raises(ValueError):
        FrozenLakeTextEnv(invalid_penalty=-1.0)
    env = FrozenLakeTextEnv(desc=["SG"])
    env.reset(0)
    _, reward, done, info = env.step("right")
    assert (reward, done, info["success"]) == (1.0, True, True) and env.success
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("left")


def test_frozenlake_hole_ends_episode_without_success():
    env = FrozenLakeTextEnv(desc=["SH", "FG"])
    env.reset(0)
    _, reward, done, info = env.step("right")
    assert (reward, done, info["success"]) == (0.0, True, False)


def test_state_keys_revisit():
    env = FrozenLakeTextEnv(desc=OPEN_LAKE)
    _, keys = play(env, 0, ["right", "left", "right", "down", "up"])
    assert keys == [(0, 0), (0, 1), (0, 0), (0, 1), (1, 1), (0, 1)]
    door = KeyDoorEnv()
    door.reset(0)
    start = door.state_key()
    door.step("pick")  # not on the key: a wasted turn, the state is revisited
    assert door.state_key() == start
    assert len(start) == 3 and start[1:] == (False, False)


def test_slippery_on_and_off_differ():
    def first_moves(slippery):
        cells = set()
        for seed in range(30):
            env = FrozenLakeTextEnv(desc=OPEN_LAKE, is_slippery=slippery)
            env.reset(seed)
            env.step("down")
            cells.add(env.state_key())
        return cells

    assert first_moves(False) == {(1, 0)}
    assert len(first_moves(True)) > 1  # sometimes slides sideways


def test_keydoor_needs_key_and_door():
    env = KeyDoorEnv()
    env.reset(0)
    layout = env.layout
    assert layout == random_layout(0, 3, 5)
    # walking right along the start row never crosses the closed wall
    for _ in range(6):
        env.step("right")
    assert env.state_key()[0][1] < layout.wall_col
    assert not env.done
    # the oracle's plan picks the key and opens the door before it reaches the goal
    actions = []
    while not env.done and len(actions) < 30:
        actions.append(env.oracle_action())
        result = env.step(actions[-1])
    assert env.success and result.reward == 1.0
    assert actions.index("pick") < actions.index("open")
    assert env.render().endswith(" key") and "d" in env.render()


def test_keydoor_subgoal_reward_paid_once():
    env = KeyDoorEnv(subgoal_reward=0.1)
    env.reset(5)
    rewards = []
    while not env.done:
        rewards.append(env.step(env.oracle_action()).reward)
    assert sum(rewards) == pytest.approx(1.2)


@pytest.mark.parametrize("name,options", [("frozenlake", {}), ("frozenlake", {"size": 6}), ("keydoor", {})])
def test_oracle_demonstrations_succeed_and_noise_lowers_success(name, options):
    factory = lambda: make_env(name, **options)  # noqa: E731
    clean = demonstrations(factory, range(60), noise=0.0, max_turns=30)
    noisy = demonstrations(factory, range(60), noise=0.6, max_turns=30, rng_seed=1)
    assert success_rate(clean) == 1.0
    assert success_rate(noisy) < 0.9
    assert demonstrations(factory, range(5), 0.6, 30, rng_seed=1) == noisy[:5]


def test_demonstration_pairs_are_rendered_with_the_prompt_format():
    fmt = PromptFormat(history_window=1)
    episode = demonstrations(lambda: FrozenLakeTextEnv(desc=OPEN_LAKE), [0], 0.0, 10, prompt=fmt)[0]
    assert [a for _, a in episode.pairs] == ["down", "down", "down", "right", "right", "right"]
    assert episode.pairs[0][0] == "Go to G, avoid H.\nP...|....|....|...G>"
    assert episode.pairs[1][0] == "Go to G, avoid H.\nP...|....|....|...G>down\n....|P...|....|...G>"
    assert episode.pairs[3][0] == "Go to G, avoid H.\n....|....|P...|...G>down\n....|....|....|P..G>"
    assert len(training_pairs([episode, episode])) == 12


def test_registry_makes_and_rejects_duplicates():
    assert {"frozenlake", "keydoor"} <= set(env_names())
    assert isinstance(make_env("frozenlake", size=5), FrozenLakeTextEnv)
    with pytest.raises(ValueError, match="already registered"):
        register_env("keydoor")(KeyDoorEnv)
    with pytest.raises(KeyError, match="unknown environment"):
        make_env("nethack")
