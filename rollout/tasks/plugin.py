"""User reward functions from a config string: `task.reward: "my_pkg.rewards:length_penalty"`.

A plugin has the TRL reward signature `(prompts, completions, **meta) -> list[float]`. It is imported and
its signature checked when the config is loaded, so a typo fails the sweep before any GPU is allocated,
with one line naming `task.reward` and the value instead of a traceback from inside a trial.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Sequence

from rollout.errors import first_line
from rollout.tasks.base import RewardFn

logger = logging.getLogger(__name__)


def _accepts_reward_call(fn: RewardFn) -> bool:
    """True if `fn(prompts, completions, answer=...)` binds: two positional lists plus the meta keywords
    (a `**meta` catch-all, or at least `answer`, which every task passes)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: trust them
        return True
    try:
        signature.bind([], [], answer=[])
    except TypeError:
        return False
    return True


def load_reward_plugin(spec: str) -> RewardFn:
    """Import `package.module:function` and return the callable; ValueError on any problem."""
    where = f"task.reward={spec!r}"
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"{where}: expected 'package.module:function'")
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or any error raised while importing the module
        raise ValueError(f"{where}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from exc
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{where}: module {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{where}: {attr_path!r} is a {type(target).__name__}, not a function")
    if not _accepts_reward_call(target):
        raise ValueError(f"{where}: signature {inspect.signature(target)} cannot take (prompts, completions, **meta)")
    return target


class RewardPluginError(RuntimeError):
    """The plugin raised on too many calls: the trial stops with the plugin's own (first) error message."""


@dataclass
class RewardFailures:
    """How often a plugin raised. A raising call scores its batch 0, so one flaky call does not end a trial;
    but a plugin that always raises would otherwise give every completion 0, zero advantages, and a trial
    that "finishes" without having learnt anything."""

    calls: int = 0
    failed: int = 0
    first_error: str = ""

    def record(self, error: BaseException | None) -> None:
        self.calls += 1
        if error is not None:
            self.failed += 1
            if not self.first_error:
                self.first_error = first_line(error, with_type=True)


def call_reward_plugin(
    fn: RewardFn, spec: str, prompts: Sequence[str], completions: Sequence[str], meta: dict[str, Sequence[Any]],
    failures: RewardFailures | None = None,
) -> list[float]:
    """Call a plugin like a built-in reward: an exception scores the batch 0 with a logged traceback and is
    counted in `failures`; a result of the wrong length is a bug in the plugin and raises."""
    try:
        rewards = [float(r) for r in fn(prompts, completions, **meta)]
    except Exception as error:
        first = failures is None or failures.failed == 0  # one warning line per trial; tracebacks at debug level
        if failures is not None:
            failures.record(error)
        level = logging.WARNING if first else logging.DEBUG
        logger.log(level, "task.reward=%r raised (%s); this batch of %d completions scored 0", spec,
                   first_line(error, with_type=True), len(completions))
        logger.debug("task.reward=%r traceback", spec, exc_info=True)
        return [0.0] * len(completions)
    if failures is not None:
        failures.record(None)
    if len(rewards) != len(completions):
        raise ValueError(f"task.reward={spec!r} returned {len(rewards)} rewards for {len(completions)} completions")
    return rewards


class PluginRewardTask:
    """Any task with its reward replaced by a `task.reward` plugin; data and correctness stay the task's own.

    Wrapping at task construction makes the plugin work the same for every task kind.
    """

    def __init__(self, task: Any, spec: str, failure_share: float = 0.5, grace_steps: int = 3) -> None:
        self.task = task
        self.spec = spec
        self.plugin = load_reward_plugin(spec)
        self.failures = RewardFailures()
        self.failure_share, self.grace_steps = failure_share, grace_steps

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def reward(self, prompts: Sequence[str], completions: Sequence[str], **meta: Sequence[Any]) -> list[float]:
        return call_reward_plugin(self.plugin, self.spec, prompts, completions, meta, self.failures)

    def check_failures(self) -> None:
        """Raise RewardPluginError once `grace_steps` calls (one per step) have run in this process and more
        than `failure_share` of them raised (defaults: a plugin raising on most calls of the first 3 steps ends
        the trial). Counted per process, so a trial resumed from a checkpoint gets a fresh grace period."""
        f = self.failures
        if f.calls >= self.grace_steps and f.failed > self.failure_share * f.calls:
            raise RewardPluginError(
                f"task.reward={self.spec!r} raised on {f.failed} of {f.calls} calls "
                f"(limit task.reward_failure_share={self.failure_share:g}); first error: {f.first_error}"
            )


def reward_plugin_of(task: Any) -> PluginRewardTask | None:
    """The task's reward plugin wrapper, when `task.reward` configured one."""
    return task if isinstance(task, PluginRewardTask) else None
