"""The interface of a multi-turn text environment, as the rollout loop and GiGPO see it.

An environment renders its state as a short string, accepts the model's raw completion as an action, and
exposes a hashable `state_key()` so GiGPO can group steps of different trajectories that acted from the same
state (anchor states). Unparseable actions are part of normal play for a small model: they cost a
configurable penalty, leave the state unchanged, are flagged in `info`, and never end or crash the episode.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Hashable, NamedTuple

logger = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z]+")


class StepResult(NamedTuple):
    """What `step` returns; unpacks like gym's old 4-tuple: `obs, reward, done, info = env.step(text)`."""

    observation: str
    reward: float
    done: bool
    info: dict[str, Any]
    """Always holds `action` (the parsed action or None), `invalid_action` (bool) and `success` (bool)."""


class TextEnv(ABC):
    """Base class: subclasses implement `_reset`, `_apply`, `render`, `state_key` (and `oracle_action`)."""

    name: ClassVar[str]

    def __init__(self, invalid_penalty: float = 0.1) -> None:
        if invalid_penalty < 0:
            raise ValueError(f"invalid_penalty={invalid_penalty} must be >= 0 (it is subtracted)")
        self.invalid_penalty = invalid_penalty
        self._done = True
        self._success = False
        self._seed: int | None = None

    # -- what the policy is told ---------------------------------------------------------------------------
    @property
    @abstractmethod
    def instruction(self) -> str:
        """Short task statement put at the top of every prompt."""

    @property
    @abstractmethod
    def valid_actions(self) -> tuple[str, ...]:
        """Lower-case action words the parser accepts."""

    # -- lifecycle ------------------------------------------------------------------------------------------
    def reset(self, seed: int) -> str:
        """Start an episode; the same seed gives the same layout and dynamics. Returns the first observation."""
        self._seed = seed
        self._done = False
        self._success = False
        self._reset(seed)
        return self.render()

    def step(self, action_text: str) -> StepResult:
        """Apply the model's raw text as one action; an unparseable text costs `invalid_penalty`, state unchanged."""
        if self._done:
            raise RuntimeError(f"{self.name}: step() after the episode ended; call reset() first")
        action = self.parse_action(action_text)
        if action is None:
            logger.debug("%s: invalid action %r", self.name, action_text[:40])
            info = {"action": None, "invalid_action": True, "success": False}
            return StepResult(self.render(), -self.invalid_penalty, False, info)
        reward, done, extra = self._apply(action)
        self._done = done
        self._success = bool(extra.pop("success", False))
        info = {"action": action, "invalid_action": False, "success": self._success, **extra}
        return StepResult(self.render(), float(reward), done, info)

    def parse_action(self, text: str) -> str | None:
        """The first alphabetic word of the text, if it is a valid action; else None.

        Only the first word counts so that a completion cannot hedge by listing several actions.
        """
        match = _WORD.search(text.lower())
        if match is None or match.group(0) not in self.valid_actions:
            return None
        return match.group(0)

    @property
    def done(self) -> bool:
        return self._done

    @property
    def success(self) -> bool:
        """True once the episode ended by reaching the goal."""
        return self._success

    # -- subclass hooks ---------------------------------------------------------------------------------
    @abstractmethod
    def _reset(self, seed: int) -> None:
        """Build the layout / dynamics for this seed and put the agent at the start."""

    @abstractmethod
    def _apply(self, action: str) -> tuple[float, bool, dict[str, Any]]:
        """Apply a valid action -> (reward, done, info extras; `success` key marks reaching the goal)."""

    @abstractmethod
    def render(self) -> str:
        """The current state as a compact string (the observation)."""

    @abstractmethod
    def state_key(self) -> Hashable:
        """Hashable identity of the current state within one seed's layout (GiGPO anchor state)."""

    def oracle_action(self) -> str:
        """A shortest-path action from the current state on the known layout (for demonstrations)."""
        raise NotImplementedError(f"{self.name} has no oracle policy")
