"""Key-and-door grid world: pick up the key, open the door in the wall, reach the goal.

A second environment with longer horizons and many revisited states, where GiGPO's anchor-state groups
are large: the state is (position, has_key, door_open), so a trajectory that wanders comes back to the same
key often. Each seed draws a layout: a vertical wall with one door, agent and key on the left of it, goal on
the right. Observation (5x3 default): `P.#..|.K#..|..D.G`, plus ` key` while holding it; `d` is an open door.
Moves into walls, the closed door or the border leave the agent in place; `pick` / `open` where they do
nothing are valid but wasted turns (no penalty, only the lost time).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Hashable

from rollout.envs.base import TextEnv

ACTIONS: tuple[str, ...] = ("left", "down", "right", "up", "pick", "open")
_MOVES: dict[str, tuple[int, int]] = {"left": (0, -1), "down": (1, 0), "right": (0, 1), "up": (-1, 0)}

Cell = tuple[int, int]


@dataclass(frozen=True)
class KeyDoorState:
    position: Cell
    has_key: bool
    door_open: bool


@dataclass(frozen=True)
class Layout:
    height: int
    width: int
    wall_col: int
    door: Cell
    key: Cell
    goal: Cell
    start: Cell


def random_layout(seed: int, height: int, width: int) -> Layout:
    """A solvable layout: wall column with one door, agent and key left of it (distinct cells), goal right."""
    rng = random.Random(seed)
    wall_col = rng.randrange(1, width - 1)
    left = [(r, c) for r in range(height) for c in range(wall_col)]
    right = [(r, c) for r in range(height) for c in range(wall_col + 1, width)]
    start, key = rng.sample(left, 2)
    return Layout(height, width, wall_col, (rng.randrange(height), wall_col), key, rng.choice(right), start)


class KeyDoorEnv(TextEnv):
    name = "keydoor"

    def __init__(self, height: int = 3, width: int = 5, subgoal_reward: float = 0.0, invalid_penalty: float = 0.1) -> None:
        """subgoal_reward: optional shaping paid once for picking the key and once for opening the door."""
        super().__init__(invalid_penalty)
        if width < 3 or height < 2:
            raise ValueError(f"a {height}x{width} grid has no room for a wall, agent, key and goal")
        self.height, self.width = height, width
        self.subgoal_reward = subgoal_reward
        self.layout: Layout | None = None
        self.state = KeyDoorState((0, 0), False, False)

    @property
    def instruction(self) -> str:
        return "Get K, open D, go to G."

    @property
    def valid_actions(self) -> tuple[str, ...]:
        return ACTIONS

    def _reset(self, seed: int) -> None:
        self.layout = random_layout(seed, self.height, self.width)
        self.state = KeyDoorState(self.layout.start, False, False)

    def transition(self, state: KeyDoorState, action: str) -> KeyDoorState:
        """Deterministic dynamics, shared by `step` and the BFS oracle."""
        layout = self.layout
        assert layout is not None, "reset() first"
        if action == "pick":
            return KeyDoorState(state.position, state.has_key or state.position == layout.key, state.door_open)
        if action == "open":
            row, col = state.position
            adjacent = abs(row - layout.door[0]) + abs(col - layout.door[1]) == 1
            return KeyDoorState(state.position, state.has_key, state.door_open or (adjacent and state.has_key))
        d_row, d_col = _MOVES[action]
        row, col = state.position[0] + d_row, state.position[1] + d_col
        inside = 0 <= row < layout.height and 0 <= col < layout.width
        blocked = col == layout.wall_col and not ((row, col) == layout.door and state.door_open)
        return state if not inside or blocked else KeyDoorState((row, col), state.has_key, state.door_open)

    def _apply(self, action: str) -> tuple[float, bool, dict[str, Any]]:
        assert self.layout is not None
        before, self.state = self.state, self.transition(self.state, action)
        reward = self.subgoal_reward * ((self.state.has_key and not before.has_key) + (self.state.door_open and not before.door_open))
        success = self.state.position == self.layout.goal
        return reward + float(success), success, {"success": success}

    def render(self) -> str:
        layout = self.layout
        assert layout is not None, "reset() first"
        grid = [["." for _ in range(layout.width)] for _ in range(layout.height)]
        for row in range(layout.height):
            grid[row][layout.wall_col] = "#"
        grid[layout.door[0]][layout.door[1]] = "d" if self.state.door_open else "D"
        grid[layout.goal[0]][layout.goal[1]] = "G"
        if not self.state.has_key:
            grid[layout.key[0]][layout.key[1]] = "K"
        grid[self.state.position[0]][self.state.position[1]] = "P"
        text = "|".join("".join(row) for row in grid)
        return text + " key" if self.state.has_key else text

    def state_key(self) -> Hashable:
        return (self.state.position, self.state.has_key, self.state.door_open)

    def oracle_action(self) -> str:
        """First action of a shortest action sequence to the goal (BFS over (position, has_key, door_open))."""
        assert self.layout is not None, "reset() first"
        first: dict[KeyDoorState, str | None] = {self.state: None}
        queue = deque([self.state])
        while queue:
            state = queue.popleft()
            if state.position == self.layout.goal:
                return first[state] or ACTIONS[0]
            for action in ACTIONS:
                nxt = self.transition(state, action)
                if nxt not in first:
                    first[nxt] = first[state] or action
                    queue.append(nxt)
        raise RuntimeError("keydoor layout has no path to the goal")  # random_layout never builds one
