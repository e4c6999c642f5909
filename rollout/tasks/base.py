"""What a task is: examples (prompt + reference answer + metadata) and a reward function.

Reward functions follow the TRL convention, `(prompts, completions, **meta) -> list[float]`, where each
keyword of `meta` is a list aligned with `completions` (e.g. `answer=[...]`). That keeps user plugins and
built-in rewards interchangeable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Protocol, Sequence, TypeGuard, runtime_checkable

if TYPE_CHECKING:
    from rollout.config import AgenticConfig, SamplingConfig
    from rollout.engine import RolloutEngine
    from rollout.envs.base import TextEnv
    from rollout.multiturn import MultiTurnSettings

RewardFn = Callable[..., list[float]]
"""`reward(prompts: list[str], completions: list[str], **meta: list) -> list[float]`."""


@dataclass(frozen=True)
class TaskExample:
    prompt: str
    """The text fed to the policy (already rendered with the prompt template)."""
    answer: str
    """Reference answer or test code; what the reward compares against."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """Extra per-example fields handed to the reward as keyword lists (e.g. tests, difficulty)."""


class Task(Protocol):
    name: str

    def train_examples(self) -> Sequence[TaskExample]: ...

    def eval_examples(self) -> Sequence[TaskExample]: ...

    def reward(self, prompts: Sequence[str], completions: Sequence[str], **meta: Sequence[Any]) -> list[float]:
        """Scalar reward per completion; `meta` holds `answer` and every key of the examples' `meta`."""
        ...

    def is_correct(self, completion: str, example: TaskExample) -> bool:
        """Strict correctness used for evaluation accuracy (no format bonus)."""
        ...


@runtime_checkable
class MultiTurnTask(Protocol):
    """A task played in an environment: episodes from seeds instead of prompts, rewards from the environment.

    The trial collects and evaluates it with the multi-turn collector; algorithms that need per-step
    credit (GiGPO) only run on such tasks."""

    name: str
    cfg: "AgenticConfig"
    train_seeds: list[int]
    eval_seeds: list[int]

    def env_factory(self) -> Callable[[], "TextEnv"]: ...

    def settings(self, sampling: "SamplingConfig", seed: int | None, greedy: bool = False) -> "MultiTurnSettings": ...

    def eval_success(self, engine: "RolloutEngine", sampling: "SamplingConfig", decoding: Literal["greedy", "sample"],
                     seeds: Sequence[int] | None = None) -> float: ...

    def pretrain_pairs(self) -> list[tuple[str, str]]: ...


def is_multi_turn(task: "Task | MultiTurnTask") -> TypeGuard[MultiTurnTask]:
    """Whether the task is played in an environment (the one test every caller uses, instead of attribute probes)."""
    return isinstance(task, MultiTurnTask)


def reward_meta(examples: Sequence[TaskExample]) -> dict[str, list[Any]]:
    """Column-wise keyword lists for a reward call: `answer` plus each key of the examples' meta."""
    columns: dict[str, list[Any]] = {"answer": [example.answer for example in examples]}
    keys = sorted({key for example in examples for key in example.meta})
    for key in keys:
        columns[key] = [example.meta.get(key) for example in examples]
    return columns
