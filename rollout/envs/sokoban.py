"""Sokoban as a text game: push every box onto a target in a small walled room.

A third environment, for GiGPO more than for its difficulty: the player walks around a box far more often
than it pushes it, so the trajectories of a group keep coming back to the same (player, boxes) state and
anchor-state groups are large; solutions are longer than frozenlake's; and a push into a corner is an
irreversible mistake (a deadlock) turns before the episode runs out, credit that an episode-level advantage
cannot assign to the step that made it.

Each seed draws a room: border walls, a few internal walls that keep the floor connected, targets; the start
is then found by REVERSE play from the solved room (the player walks and pulls boxes off their targets), so
every layout is solvable by construction, and the forward BFS checks it anyway. Reverse play is exhaustive
(a BFS to depth `reverse_steps`) and the start is drawn uniformly among the states it reaches: a random
walk of 12 reverse moves left 57% of starts within two moves of done (200 seeds, 6x6, 1 box), while the BFS
gives a spread of lengths up to `reverse_steps` and knows each start's exact optimal length.

Observation (6x6, seed 0, 41 characters): `######|#..T.#|#....#|#..B.#|##P.##|######`: `#` wall, `.` floor,
`T` target, `B` box, `X` box on target, `P` player, `p` player on target. A move into a wall or a blocked
push (box against a wall or another box) is a valid but wasted turn. The oracle solves each layout once
(forward BFS from the start, then distances back from the solved states) and caches it, so demonstrations
cost one BFS per layout. Measured on the defaults (6x6, 1 box, 2 internal walls, reverse_steps 12): optimal
solutions take 1-12 moves, median 6 (seeds 0-99); with 15 turns the noisy oracle succeeds 0.87 / 0.66 / 0.35
at noise 0.3 / 0.5 / 0.7 (seeds 0-299); 1000 oracle episodes take ~1.3 s on one CPU core.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Hashable, Sequence

from rollout.envs.base import TextEnv

ACTIONS: tuple[str, ...] = ("left", "down", "right", "up")
_MOVES: dict[str, tuple[int, int]] = {"left": (0, -1), "down": (1, 0), "right": (0, 1), "up": (-1, 0)}
_MAX_ATTEMPTS = 100
"""Rooms drawn per seed before giving up (a room is redrawn when no box can be pulled off its target)."""

Cell = tuple[int, int]


@dataclass(frozen=True)
class SokobanState:
    player: Cell
    boxes: tuple[Cell, ...]
    """Sorted, so that equal box configurations compare (and hash) equal."""


@dataclass(frozen=True)
class Layout:
    height: int
    width: int
    floor: frozenset[Cell]
    """Every non-wall cell; anything else (border, internal walls, outside the grid) blocks."""
    targets: frozenset[Cell]
    start: SokobanState


def push(layout: Layout, state: SokobanState, action: str) -> SokobanState:
    """Deterministic dynamics: walk, or push the box ahead if the cell beyond it is free floor; else stay."""
    d_row, d_col = _MOVES[action]
    ahead = (state.player[0] + d_row, state.player[1] + d_col)
    if ahead not in layout.floor:
        return state
    if ahead not in state.boxes:
        return SokobanState(ahead, state.boxes)
    beyond = (ahead[0] + d_row, ahead[1] + d_col)
    if beyond not in layout.floor or beyond in state.boxes:
        return state
    return SokobanState(ahead, tuple(sorted(beyond if box == ahead else box for box in state.boxes)))


def solved(layout: Layout, state: SokobanState) -> bool:
    return all(box in layout.targets for box in state.boxes)


@lru_cache(maxsize=64)
def plan(layout: Layout) -> dict[SokobanState, tuple[int, str | None]]:
    """Each state reachable from the start that can still be solved -> (moves left, first optimal action).

    BFS forward from the start (solved states end the episode, so they are not expanded), then BFS backward
    from the solved states over the recorded moves. Deadlocked states are absent. Ties between optimal actions
    go to the first in ACTIONS order. Cached per layout; callers must not mutate the result.
    """
    successors: dict[SokobanState, tuple[SokobanState, ...]] = {}
    predecessors: dict[SokobanState, list[SokobanState]] = {layout.start: []}
    queue = deque([layout.start])
    goals = []
    while queue:
        state = queue.popleft()
        if solved(layout, state):
            goals.append(state)
            continue
        successors[state] = tuple(push(layout, state, action) for action in ACTIONS)
        for nxt in successors[state]:
            if nxt not in predecessors:
                predecessors[nxt] = []
                queue.append(nxt)
            predecessors[nxt].append(state)
    distance = {goal: 0 for goal in goals}
    queue = deque(goals)
    while queue:
        state = queue.popleft()
        for prev in predecessors[state]:
            if prev not in distance:
                distance[prev] = distance[state] + 1
                queue.append(prev)
    result: dict[SokobanState, tuple[int, str | None]] = {goal: (0, None) for goal in goals}
    for state, moves in distance.items():
        if moves > 0:
            best = next(a for a, nxt in zip(ACTIONS, successors[state]) if distance.get(nxt) == moves - 1)
            result[state] = (moves, best)
    return result


def parse_desc(desc: Sequence[str]) -> Layout:
    """A layout from rows in the render's characters (`#.TBXPp`); the player and boxes give the start."""
    if len({len(row) for row in desc}) != 1:
        raise ValueError("desc rows must all have the same length")
    unknown = set("".join(desc)) - set("#.TBXPp")
    if unknown:
        raise ValueError(f"desc has unknown characters {sorted(unknown)}; use # . T B X P p")
    cells = {(r, c): ch for r, row in enumerate(desc) for c, ch in enumerate(row)}
    players = [cell for cell, ch in cells.items() if ch in "Pp"]
    boxes = tuple(sorted(cell for cell, ch in cells.items() if ch in "BX"))
    targets = frozenset(cell for cell, ch in cells.items() if ch in "TXp")
    if len(players) != 1:
        raise ValueError(f"desc needs exactly one player (P or p), found {len(players)}")
    if not boxes or len(boxes) != len(targets):
        raise ValueError(f"desc needs as many boxes as targets, at least one: {len(boxes)} B/X, {len(targets)} T/X/p")
    floor = frozenset(cell for cell, ch in cells.items() if ch != "#")
    layout = Layout(len(desc), len(desc[0]), floor, targets, SokobanState(players[0], boxes))
    if solved(layout, layout.start):
        raise ValueError("desc is already solved (every box is on a target)")
    if layout.start not in plan(layout):
        raise ValueError("desc is not solvable")
    return layout


def _connected(cells: set[Cell]) -> bool:
    start = next(iter(cells))
    seen, queue = {start}, deque([start])
    while queue:
        row, col = queue.popleft()
        for d_row, d_col in _MOVES.values():
            nxt = (row + d_row, col + d_col)
            if nxt in cells and nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return len(seen) == len(cells)


def _walls_and_targets(
    rng: random.Random, height: int, width: int, num_boxes: int, internal_walls: int
) -> tuple[frozenset[Cell], frozenset[Cell]]:
    """Border walls, `internal_walls` random interior walls that keep the floor connected, then the targets."""
    floor = {(r, c) for r in range(1, height - 1) for c in range(1, width - 1)}
    walls = 0
    for cell in rng.sample(sorted(floor), len(floor)):
        if walls == internal_walls:
            break
        if _connected(floor - {cell}):  # a connected grid always has a cell whose removal keeps it connected
            floor.discard(cell)
            walls += 1
    return frozenset(floor), frozenset(rng.sample(sorted(floor), num_boxes))


def reverse_play(floor: frozenset[Cell], targets: frozenset[Cell], max_moves: int) -> dict[SokobanState, int]:
    """Every state reverse play reaches within `max_moves` from a solved room -> its exact moves to solve.

    BFS backward from all solved states (boxes on the targets, player on any other floor cell): the player
    walks, and pulls a box that is right behind it (the inverse of a push) or leaves it. BFS depth in this
    inverse game is the forward optimal solution length.
    """
    boxes = tuple(sorted(targets))
    moves = {SokobanState(cell, boxes): 0 for cell in sorted(floor - targets)}
    queue = deque(moves)
    while queue:
        state = queue.popleft()
        if moves[state] == max_moves:
            continue
        (row, col), boxes = state.player, state.boxes
        for d_row, d_col in _MOVES.values():
            ahead, behind = (row + d_row, col + d_col), (row - d_row, col - d_col)
            if ahead not in floor or ahead in boxes:
                continue
            previous = [SokobanState(ahead, boxes)]
            if behind in boxes:
                previous.append(SokobanState(ahead, tuple(sorted(state.player if b == behind else b for b in boxes))))
            for prev in previous:
                if prev not in moves:
                    moves[prev] = moves[state] + 1
                    queue.append(prev)
    return moves


def random_layout(
    seed: int, height: int, width: int, num_boxes: int, internal_walls: int, reverse_steps: int
) -> Layout:
    """A solvable, unsolved layout whose start is solved in 1..reverse_steps moves, drawn uniformly among the
    states reverse play reaches; a room where no box can be pulled off its target is redrawn from the same
    seeded stream."""
    rng = random.Random(seed)
    for _ in range(_MAX_ATTEMPTS):
        floor, targets = _walls_and_targets(rng, height, width, num_boxes, internal_walls)
        starts = [state for state, moves in reverse_play(floor, targets, reverse_steps).items() if moves > 0]
        if not starts:
            continue
        layout = Layout(height, width, floor, targets, rng.choice(starts))
        if layout.start not in plan(layout):  # reverse play never builds one; the forward BFS checks
            raise RuntimeError(f"sokoban seed {seed}: reverse play built an unsolvable layout")
        return layout
    raise RuntimeError(f"sokoban seed {seed}: no box could be pulled off a target in {_MAX_ATTEMPTS} rooms")


class SokobanEnv(TextEnv):
    name = "sokoban"

    def __init__(
        self,
        height: int = 6,
        width: int = 6,
        num_boxes: int = 1,
        internal_walls: int = 2,
        reverse_steps: int = 12,
        box_reward: float = 0.0,
        desc: Sequence[str] | None = None,
        invalid_penalty: float = 0.1,
    ) -> None:
        """height/width: the whole room, border wall included; internal_walls: random extra wall cells;
        reverse_steps: the most moves of reverse play (so of optimal solution) between the solved room and the
        start; box_reward: optional shaping, + per box pushed onto a target, - per box pushed off one;
        desc: one fixed layout in the render's characters (the random-room options are then unused)."""
        super().__init__(invalid_penalty)
        for option, value, least in [("height", height, 3), ("width", width, 3), ("num_boxes", num_boxes, 1),
                                     ("internal_walls", internal_walls, 0), ("reverse_steps", reverse_steps, 1)]:
            if value < least:
                raise ValueError(f"{option}={value} must be >= {least}")
        free = (height - 2) * (width - 2) - internal_walls
        if free < num_boxes + 2:
            raise ValueError(f"internal_walls={internal_walls} leaves {free} floor cells in a {height}x{width} room; "
                             f"num_boxes={num_boxes} needs at least {num_boxes + 2}")
        if box_reward < 0:
            raise ValueError(f"box_reward={box_reward} must be >= 0 (it is paid for pushes onto targets)")
        self.height, self.width = height, width
        self.num_boxes, self.internal_walls, self.reverse_steps = num_boxes, internal_walls, reverse_steps
        self.box_reward = box_reward
        self.fixed_layout = parse_desc(desc) if desc is not None else None
        self.layout: Layout | None = None
        self.state = SokobanState((0, 0), ())

    @property
    def instruction(self) -> str:
        return "Push B onto T."

    @property
    def valid_actions(self) -> tuple[str, ...]:
        return ACTIONS

    def _reset(self, seed: int) -> None:
        if self.fixed_layout is not None:
            self.layout = self.fixed_layout
        else:
            self.layout = random_layout(
                seed, self.height, self.width, self.num_boxes, self.internal_walls, self.reverse_steps
            )
        self.state = self.layout.start

    def transition(self, state: SokobanState, action: str) -> SokobanState:
        """Deterministic dynamics on the current layout, shared by `step` and the BFS oracle (`push`)."""
        assert self.layout is not None, "reset() first"
        return push(self.layout, state, action)

    def _apply(self, action: str) -> tuple[float, bool, dict[str, Any]]:
        assert self.layout is not None
        before, self.state = self.state, self.transition(self.state, action)
        on_target = sum(box in self.layout.targets for box in self.state.boxes)
        gained = on_target - sum(box in self.layout.targets for box in before.boxes)
        success = on_target == len(self.state.boxes)
        return self.box_reward * gained + float(success), success, {"success": success}

    def render(self) -> str:
        layout = self.layout
        assert layout is not None, "reset() first"
        rows = []
        for row in range(layout.height):
            chars = []
            for col in range(layout.width):
                cell, target = (row, col), (row, col) in layout.targets
                if cell == self.state.player:
                    chars.append("p" if target else "P")
                elif cell in self.state.boxes:
                    chars.append("X" if target else "B")
                elif cell in layout.floor:
                    chars.append("T" if target else ".")
                else:
                    chars.append("#")
            rows.append("".join(chars))
        return "|".join(rows)

    def state_key(self) -> Hashable:
        return (self.state.player, self.state.boxes)

    def oracle_action(self) -> str:
        """First action of a shortest solution from here; in a deadlock, the first action that moves at all."""
        assert self.layout is not None, "reset() first"
        entry = plan(self.layout).get(self.state)
        if entry is not None and entry[1] is not None:
            return entry[1]
        moving = [a for a in ACTIONS if self.transition(self.state, a) != self.state]
        return moving[0] if moving else ACTIONS[0]
