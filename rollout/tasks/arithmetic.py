"""The embedded default task: zero-padded multi-digit addition, `045+123=` -> `168`.

Procedural, so it needs no download; verifiable, so the reward is exact; graded by digit count, so its
difficulty can be tuned until a tiny model's base accuracy leaves room for RL.
"""

from __future__ import annotations

import random
import re
from typing import Any, Sequence

from rollout.config import ArithmeticConfig
from rollout.tasks.base import TaskExample

_DIGITS_ONLY = re.compile(r"^\d+$")


def make_example(a: int, b: int, width: int, reverse_answer: bool) -> TaskExample:
    answer = str(a + b)
    return TaskExample(prompt=f"{a:0{width}d}+{b:0{width}d}=", answer=answer[::-1] if reverse_answer else answer)


def generate_examples(cfg: ArithmeticConfig) -> tuple[list[TaskExample], list[TaskExample]]:
    """Disjoint train/eval splits: every (a, b) pair appears in at most one split."""
    rng = random.Random(cfg.seed)
    width = cfg.max_digits
    seen: set[tuple[int, int]] = set()
    wanted = cfg.num_train + cfg.num_eval
    capacity = (10**cfg.max_digits - 10 ** (cfg.min_digits - 1)) ** 2
    if wanted > capacity:
        raise ValueError(f"task.arithmetic: num_train+num_eval={wanted} exceeds the {capacity} distinct problems")
    pairs: list[tuple[int, int]] = []
    while len(pairs) < wanted:
        digits_a = rng.randint(cfg.min_digits, cfg.max_digits)
        digits_b = rng.randint(cfg.min_digits, cfg.max_digits)
        low_a = 0 if digits_a == 1 else 10 ** (digits_a - 1)
        low_b = 0 if digits_b == 1 else 10 ** (digits_b - 1)
        pair = (rng.randint(low_a, 10**digits_a - 1), rng.randint(low_b, 10**digits_b - 1))
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    examples = [make_example(a, b, width, cfg.reverse_answer) for a, b in pairs]
    return examples[: cfg.num_train], examples[cfg.num_train :]


class ArithmeticTask:
    name = "arithmetic"

    def __init__(self, cfg: ArithmeticConfig, format_reward: float = 0.0) -> None:
        self.format_reward = format_reward
        self._train, self._eval = generate_examples(cfg)

    def train_examples(self) -> Sequence[TaskExample]:
        return self._train

    def eval_examples(self) -> Sequence[TaskExample]:
        return self._eval

    def is_correct(self, completion: str, example: TaskExample) -> bool:
        return completion.strip() == example.answer

    def reward(self, prompts: Sequence[str], completions: Sequence[str], **meta: Sequence[Any]) -> list[float]:
        """1 for the exact sum, plus `format_reward` for a digits-only completion."""
        answers = meta["answer"]
        rewards = []
        for completion, answer in zip(completions, answers):
            text = completion.strip()
            reward = 1.0 if text == answer else 0.0
            if self.format_reward and _DIGITS_ONLY.match(text):
                reward += self.format_reward
            rewards.append(reward)
        return rewards
