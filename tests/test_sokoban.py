"""Sokoban: pushes and blocked pushes on hand-written rooms, shaping, solvable seeded rooms, the memoised oracle."""

from collections import deque
from pathlib import Path

import pytest

from orchestrator.config import load_sweep_config
from rollout.envs.demonstrations import demonstrations, success_rate
from rollout.envs.registry import env_names, make_env
from rollout.envs.sokoban import SokobanEnv, SokobanState, plan, reverse_play
from rollout.multiturn import PromptFormat
from rollout.tasks.agentic import AgenticTask

CORRIDOR = ["######", "#PB.T#", "#....#", "######"]
"""One box two pushes from its target; the box sits against the top wall."""
TWO_IN_A_ROW = ["######", "#....#", "#PBB.#", "#T.T.#", "######"]
"""Two boxes side by side: pushing right from the start moves neither."""
TWO_ROWS = ["#######", "#PB.T.#", "#.....#", "#.B.T.#", "#######"]
"""A box in the top row and one in the bottom row, each two pushes right of done."""


def steps(env, actions):
    return [env.step(action) for action in actions]


def shortest_solution(env):
    """Independent check: BFS over (player, boxes) with env.transition, to any state with every box on a target."""
    start = env.state
    depth = {start: 0}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        if all(box in env.layout.targets for box in state.boxes):
            return depth[state]
        for action in env.valid_actions:
            nxt = env.transition(state, action)
            if nxt not in depth:
                depth[nxt] = depth[state] + 1
                queue.append(nxt)
    return None


def test_push_render_and_success():
    env = SokobanEnv(desc=CORRIDOR)
    assert env.reset(0) == "######|#PB.T#|#....#|######"
    assert len(env.reset(0)) == 27 and env.instruction == "Push B onto T."
    first, second = steps(env, ["right", "right"])
    assert first == ("######|#.PBT#|#....#|######", 0.0, False, {"action": "right", "invalid_action": False, "success": False})
    assert second == ("######|#..PX#|#....#|######", 1.0, True, {"action": "right", "invalid_action": False, "success": True})
    assert env.success and env.done
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("left")


def test_walls_and_blocked_pushes_waste_the_turn():
    env = SokobanEnv(desc=CORRIDOR)
    start = env.reset(0)
    wall = env.step("left")  # the border
    assert (wall.observation, wall.reward, wall.done, wall.info["invalid_action"]) == (start, 0.0, False, False)
    steps(env, ["down", "right"])
    assert env.render() == "######|#.B.T#|#.P..#|######"
    into_wall = env.step("up")  # the box is against the top wall
    assert (into_wall.observation, into_wall.reward, into_wall.done) == ("######|#.B.T#|#.P..#|######", 0.0, False)
    assert env.state == SokobanState((2, 2), ((1, 2),))

    env = SokobanEnv(desc=TWO_IN_A_ROW)
    start = env.reset(0)
    key = env.state_key()
    blocked = env.step("right")  # box behind box
    assert (blocked.observation, blocked.reward, blocked.done) == (start, 0.0, False)
    assert env.state_key() == key == ((2, 1), ((2, 2), (2, 3)))
    steps(env, ["down"])  # onto a target: lower-case p
    assert env.render() == "######|#....#|#.BB.#|#p.T.#|######"


def test_box_reward_shaping_on_and_off_targets():
    shaped = SokobanEnv(desc=TWO_ROWS, box_reward=0.25)
    shaped.reset(0)
    rewards = [r.reward for r in steps(shaped, ["right", "right", "right"])]
    assert rewards == [0.0, 0.25, -0.25]  # onto the target, then off it again
    assert shaped.render() == "#######|#...pB#|#.....#|#.B.T.#|#######"
    plain = SokobanEnv(desc=TWO_ROWS)
    plain.reset(0)
    assert [r.reward for r in steps(plain, ["right", "right", "right"])] == [0.0, 0.0, 0.0]
    # solving pays 1.0 plus box_reward per box that ends on a target: 0.25 + (0.25 + 1.0)
    shaped.reset(0)
    rewards = []
    while not shaped.done:
        rewards.append(shaped.step(shaped.oracle_action()).reward)
    assert rewards == [0.0, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 1.25] and shaped.success


def test_oracle_on_hand_checked_rooms_and_deadlock_fallback():
    env = SokobanEnv(desc=TWO_IN_A_ROW)
    env.reset(0)
    actions = []
    while not env.done:
        actions.append(env.oracle_action())
        env.step(actions[-1])
    # walk above the right box, push it down, push the left box left, walk above it, push it down
    assert actions == ["up", "right", "right", "down", "left", "up", "left", "down"]
    assert env.render() == "######|#....#|#P...#|#X.X.#|######"

    env = SokobanEnv(desc=TWO_ROWS)
    env.reset(0)
    steps(env, ["right", "right", "right"])  # the top box is now in the top-right corner: a deadlock
    assert env.state not in plan(env.layout)
    assert env.oracle_action() == env.oracle_action() == "left"  # the first action that moves


def test_state_keys_revisit_and_invalid_actions_are_penalised():
    env = SokobanEnv(desc=CORRIDOR)
    env.reset(0)
    keys = [env.state_key()]
    for action in ["down", "right", "left", "right"]:
        env.step(action)
        keys.append(env.state_key())
    assert keys == [((1, 1), ((1, 2),)), ((2, 1), ((1, 2),)), ((2, 2), ((1, 2),)), ((2, 1), ((1, 2),)), ((2, 2), ((1, 2),))]

    env = SokobanEnv(invalid_penalty=0.25)
    observation = env.reset(3)
    key = env.state_key()
    for text in ["", "jump", "push", "north left", "\n"]:
        assert env.step(text) == (observation, -0.25, False, {"action": None, "invalid_action": True, "success": False})
        assert env.state_key() == key and not env.done
    assert env.step(" Up.\n").info["action"] == "up"


def test_same_seed_same_episode_and_layouts_differ_across_seeds():
    def play(seed):
        env = SokobanEnv(num_boxes=2)
        observations = [env.reset(seed)]
        for action in ["left", "up", "up", "right", "down", "down", "left", "right"]:
            observations.append(env.step(action).observation)
            if env.done:
                break
        return observations, env.state_key()

    assert play(7) == play(7)
    rooms = [SokobanEnv().reset(seed) for seed in range(20)]
    assert len(set(rooms)) == 20
    assert all(len(room) == 41 and room.count("#") == 20 + 2 and room.count("B") == 1 for room in rooms)
    assert all(room.count("T") + room.count("p") == 1 for room in rooms)


@pytest.mark.parametrize("num_boxes", [1, 2])
def test_oracle_solves_every_seed_optimally(num_boxes):
    env = SokobanEnv(num_boxes=num_boxes)
    lengths = []
    for seed in range(50):
        env.reset(seed)
        optimum = shortest_solution(env)
        floor, targets = env.layout.floor, env.layout.targets
        assert 1 <= optimum <= env.reverse_steps
        assert optimum == reverse_play(floor, targets, env.reverse_steps)[env.state] == plan(env.layout)[env.state][0]
        turns = 0
        while not env.done and turns < env.reverse_steps:
            env.step(env.oracle_action())
            turns += 1
        assert env.success and turns == optimum, seed
        lengths.append(optimum)
    assert len(set(lengths)) > 5  # a spread of difficulties, not one length


def test_registry_demonstrations_and_prompt_length():
    assert "sokoban" in env_names()
    env = make_env("sokoban", height=7, width=7, num_boxes=2, internal_walls=3)
    assert isinstance(env, SokobanEnv) and len(env.reset(0)) == 7 * 8 - 1
    factory = lambda: make_env("sokoban")  # noqa: E731
    clean = demonstrations(factory, range(60), noise=0.0, max_turns=15)
    noisy = demonstrations(factory, range(60), noise=0.5, max_turns=15, rng_seed=1)
    assert success_rate(clean) == 1.0
    assert success_rate(noisy) < 0.9
    assert demonstrations(factory, range(5), 0.5, 15, rng_seed=1) == noisy[:5]
    room = SokobanEnv().reset(0)
    assert clean[0].pairs[0][0] == "Push B onto T.\n" + room + ">"
    assert len(PromptFormat(history_window=2).render("Push B onto T.", [(room, "right"), (room, "down")], room)) == 152


@pytest.mark.parametrize(
    "options,named",
    [({"height": 2}, "height=2"), ({"width": 1}, "width=1"), ({"num_boxes": 0}, "num_boxes=0"),
     ({"internal_walls": -1}, "internal_walls=-1"), ({"internal_walls": 14}, "internal_walls=14"),
     ({"num_boxes": 13}, "num_boxes=13"), ({"reverse_steps": 0}, "reverse_steps=0"),
     ({"box_reward": -0.5}, "box_reward=-0.5"), ({"invalid_penalty": -1.0}, "invalid_penalty=-1.0")],
)
def test_bad_options_name_the_option(options, named):
    with pytest.raises(ValueError, match=named):
        SokobanEnv(**options)


@pytest.mark.parametrize(
    "desc,message",
    [(["####", "#PB#", "#T#"], "same length"), (["######", "#PBT?#"], "unknown"),
     (["######", "#PBTP#", "#..T.#", "######"], "one player"), (["#####", "#PB.#", "#####"], "as many boxes"),
     (["#####", "#PX.#", "#####"], "already solved"), (["#####", "#BPT#", "#####"], "not solvable")],
)
def test_bad_desc_is_rejected(desc, message):
    with pytest.raises(ValueError, match=message):
        SokobanEnv(desc=desc)


def test_cluster_preset_loads_with_sokoban():
    path = Path(__file__).resolve().parent.parent / "configs" / "qwen2.5-1.5b-sokoban-gigpo.yaml"
    cfg = load_sweep_config(path, {})
    assert (cfg.task.kind, cfg.task.agentic.env, cfg.algorithm.name) == ("agentic", "sokoban", "gigpo")
    assert cfg.model.source == "Qwen/Qwen2.5-1.5B-Instruct" and cfg.rollout.engine == "vllm"
    task = AgenticTask(cfg.task.agentic)  # builds the environment from the preset's options
    assert isinstance(task.env_factory()(), SokobanEnv)
