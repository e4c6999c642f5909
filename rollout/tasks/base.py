"""What a task is: examples (prompt + reference answer + metadata) and a reward function.

Reward functions follow the TRL convention, `(prompts, completions, **meta) -> list[float]`, where each
keyword of `meta` is a list aligned with `completions` (e.g. `answer=[...]`). That keeps user plugins and
built-in rewards interchangeable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

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


def reward_meta(examples: Sequence[TaskExample]) -> dict[str, list[Any]]:
    """Column-wise keyword lists for a reward call: `answer` plus each key of the examples' meta."""
    columns: dict[str, list[Any]] = {"answer": [example.answer for example in examples]}
    keys = sorted({key for example in examples for key in example.meta})
    for key in keys:
        columns[key] = [example.meta.get(key) for example in examples]
    return columns
