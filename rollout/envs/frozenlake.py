"""FrozenLake as a text game: gymnasium's `FrozenLake-v1` dynamics, a compact grid string as observation.

Each reset seed draws its own solvable map (`generate_random_map`, seeded) unless `map_seed` or `desc`
pins one map; the same seed also drives the slippery dynamics, so the G trajectories of a GiGPO group
(same seed) face the same lake. The observation is the grid with the agent as `P`, rows joined by `|`
(`P..H|....|..H.|...G`, 19 characters for 4x4), short enough for a tiny byte-level model. The state key
is the agent's cell: within one seed the map is fixed, so the cell is the whole state.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Hashable, Sequence

import gymnasium
from gymnasium.envs.toy_text.frozen_lake import generate_random_map

from rollout.envs.base import TextEnv

ACTIONS: tuple[str, ...] = ("left", "down", "right", "up")
"""In gymnasium's action order: 0 LEFT, 1 DOWN, 2 RIGHT, 3 UP."""
_MOVES: dict[str, tuple[int, int]] = {"left": (0, -1), "down": (1, 0), "right": (0, 1), "up": (-1, 0)}


class FrozenLakeTextEnv(TextEnv):
    name = "frozenlake"

    def __init__(
        self,
        size: int = 4,
        is_slippery: bool = False,
        p_frozen: float = 0.8,
        map_seed: int | None = None,
        desc: Sequence[str] | None = None,
        invalid_penalty: float = 0.1,
    ) -> None:
        """size: side of random maps; p_frozen: chance a random cell is ice; map_seed / desc: one fixed map."""
        super().__init__(invalid_penalty)
        if desc is not None and len({len(row) for row in desc}) != 1:
            raise ValueError("desc rows must all have the same length")
        if size < 2:
            raise ValueError(f"size={size} must be >= 2")
        self.size = size
        self.is_slippery = is_slippery
        self.p_frozen = p_frozen
        self.map_seed = map_seed
        self.fixed_desc = list(desc) if desc is not None else None
        self._gym: gymnasium.Env | None = None
        self.desc: list[str] = []

    @property
    def instruction(self) -> str:
        return "Go to G, avoid H."

    @property
    def valid_actions(self) -> tuple[str, ...]:
        return ACTIONS

    def _reset(self, seed: int) -> None:
        if self.fixed_desc is not None:
            self.desc = list(self.fixed_desc)
        else:
            layout_seed = seed if self.map_seed is None else self.map_seed
            self.desc = generate_random_map(size=self.size, p=self.p_frozen, seed=layout_seed)
        if self._gym is not None:
            self._gym.close()
        self._gym = gymnasium.make("FrozenLake-v1", desc=self.desc, is_slippery=self.is_slippery, disable_env_checker=True)
        self._gym.reset(seed=seed)

    def _apply(self, action: str) -> tuple[float, bool, dict[str, Any]]:
        assert self._gym is not None
        _, reward, terminated, truncated, _ = self._gym.step(ACTIONS.index(action))
        row, col = self.position
        success = self.desc[row][col] == "G"
        return float(reward), bool(terminated or truncated), {"success": success, "truncated": bool(truncated)}

    @property
    def position(self) -> tuple[int, int]:
        assert self._gym is not None, "reset() first"
        cell = int(self._gym.unwrapped.s)
        return divmod(cell, len(self.desc[0]))

    def render(self) -> str:
        row, col = self.position
        rows = [["." if c in "SF" else c for c in line] for line in self.desc]
        rows[row][col] = "P"
        return "|".join("".join(line) for line in rows)

    def state_key(self) -> Hashable:
        return self.position

    def _target(self, row: int, col: int, action: str) -> tuple[int, int]:
        """The intended (non-slipping) move; gymnasium keeps the agent in place at the border."""
        d_row, d_col = _MOVES[action]
        return min(max(row + d_row, 0), len(self.desc) - 1), min(max(col + d_col, 0), len(self.desc[0]) - 1)

    def oracle_action(self) -> str:
        """First action of a shortest hole-free path to G (BFS on the known map, ignoring slipping)."""
        start = self.position
        first: dict[tuple[int, int], str | None] = {start: None}
        queue = deque([start])
        while queue:
            cell = queue.popleft()
            if self.desc[cell[0]][cell[1]] == "G":
                return first[cell] or ACTIONS[0]
            for action in ACTIONS:
                nxt = self._target(*cell, action)
                if nxt not in first and self.desc[nxt[0]][nxt[1]] != "H":
                    first[nxt] = first[cell] or action
                    queue.append(nxt)
        safe = [a for a in ACTIONS if self.desc[self._target(*start, a)[0]][self._target(*start, a)[1]] != "H"]
        return safe[0] if safe else ACTIONS[0]
