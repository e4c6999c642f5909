"""Addition problems, procedurally generated: the embedded default task, and a chat question for real models.

Procedural, so it needs no download; verifiable, so the reward is exact; graded by digit count, so its
difficulty can be tuned until a model's base accuracy leaves room for RL. Two styles:
- `compact` (the embedded tiny model's): `045+123=` -> `168` (or reversed, `861`), exact match.
- `chat` (a pretrained instruct model's): "What is 45 + 123?" as the user turn of the tokenizer's chat template;
  the reply is free-form ("45 + 123 = 168.") and is judged by the last number it states, the usual rule for
  chat answers to arithmetic (GSM8K-style graders do the same).
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from typing import Any, Sequence

from rollout.config import ArithmeticConfig
from rollout.tasks.base import TaskExample
from rollout.tasks.datasets_io import render_prompt

_DIGITS_ONLY = re.compile(r"^\d+$")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number written in `text` (`1,234` and `12.5` included), or None if it states none."""
    numbers = _NUMBER.findall(text)
    return float(numbers[-1].replace(",", "")) if numbers else None


def _operand_range(min_digits: int, max_digits: int) -> tuple[int, int]:
    """Inclusive bounds of numbers with min..max digits (one digit includes 0)."""
    return (0 if min_digits == 1 else 10 ** (min_digits - 1)), 10**max_digits - 1


def _draw_pair(rng: random.Random, first: tuple[int, int], second: tuple[int, int]) -> tuple[int, int]:
    """Each operand's digit count uniformly from its range, then numbers of those many digits (this draw
    order is part of the data: changing it would change every sweep's examples)."""
    digits_a = rng.randint(*first)
    digits_b = rng.randint(*second)
    low_a, high_a = _operand_range(digits_a, digits_a)
    low_b, high_b = _operand_range(digits_b, digits_b)
    return rng.randint(low_a, high_a), rng.randint(low_b, high_b)


@lru_cache(maxsize=8)
def operand_pairs(cfg: ArithmeticConfig) -> tuple[tuple[int, int], ...]:
    """num_train + num_eval distinct (a, b) pairs, in a seeded order (train first, then eval).

    Cached per process (the config is frozen, so hashable): a sweep's driver builds the task four times before its
    first trial (the embedded model's cache key, the data check, the probe's model and rollouts) and a trial twice,
    each draw of the default 20 400 pairs costing ~0.05 s, their examples another ~0.05 s."""
    first, second = (cfg.min_digits, cfg.max_digits), cfg.second_digits
    low_a, high_a = _operand_range(*first)
    low_b, high_b = _operand_range(*second)
    capacity = (high_a - low_a + 1) * (high_b - low_b + 1)
    wanted = cfg.num_train + cfg.num_eval
    if wanted > capacity:
        raise ValueError(f"task.arithmetic: num_train+num_eval={wanted} exceeds the {capacity} distinct problems")
    rng = random.Random(cfg.seed)
    seen: set[tuple[int, int]] = set()
    pairs: list[tuple[int, int]] = []
    while len(pairs) < wanted:
        pair = _draw_pair(rng, first, second)
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    return tuple(pairs)


def make_example(a: int, b: int, width: int, reverse_answer: bool) -> TaskExample:
    answer = str(a + b)
    return TaskExample(prompt=f"{a:0{width}d}+{b:0{width}d}=", answer=answer[::-1] if reverse_answer else answer)


def make_chat_example(a: int, b: int, cfg: ArithmeticConfig, tokenizer: Any | None) -> TaskExample:
    question = cfg.question.format(a=a, b=b)
    return TaskExample(prompt=render_prompt(question, tokenizer, True, cfg.system_prompt), answer=str(a + b))


def generate_examples(cfg: ArithmeticConfig, tokenizer: Any | None = None) -> tuple[Sequence[TaskExample], Sequence[TaskExample]]:
    """Disjoint train/eval splits: every (a, b) pair appears in at most one split."""
    if cfg.style == "chat":  # rendered with the tokenizer's chat template, so not cached with the config alone
        examples = tuple(make_chat_example(a, b, cfg, tokenizer) for a, b in operand_pairs(cfg))
        return examples[: cfg.num_train], examples[cfg.num_train :]
    return _compact_examples(cfg)


@lru_cache(maxsize=8)
def _compact_examples(cfg: ArithmeticConfig) -> tuple[tuple[TaskExample, ...], tuple[TaskExample, ...]]:
    """The compact style's splits, a function of the config alone; immutable, so tasks built from one config share them."""
    width = max(cfg.max_digits, cfg.second_digits[1])
    examples = tuple(make_example(a, b, width, cfg.reverse_answer) for a, b in operand_pairs(cfg))
    return examples[: cfg.num_train], examples[cfg.num_train :]


class ArithmeticTask:
    name = "arithmetic"

    def __init__(self, cfg: ArithmeticConfig, format_reward: float = 0.0, tokenizer: Any | None = None) -> None:
        self.format_reward = format_reward
        self.chat = cfg.style == "chat"
        self._train, self._eval = generate_examples(cfg, tokenizer)

    def train_examples(self) -> Sequence[TaskExample]:
        return self._train

    def eval_examples(self) -> Sequence[TaskExample]:
        return self._eval

    def is_correct(self, completion: str, example: TaskExample) -> bool:
        return self._states(completion, example.answer)

    def _states(self, completion: str, answer: str) -> bool:
        """Chat: the reply's last number is the answer. Compact: the completion is exactly the answer."""
        if self.chat:
            return last_number(completion) == float(answer)
        return completion.strip() == answer

    def is_well_formed(self, completion: str) -> bool:
        """Compact: digits only. Chat: the reply states some number."""
        if self.chat:
            return last_number(completion) is not None
        return bool(_DIGITS_ONLY.match(completion.strip()))

    def reward(self, prompts: Sequence[str], completions: Sequence[str], **meta: Sequence[Any]) -> list[float]:
        """1 for the right sum, plus `format_reward` for a well-formed completion."""
        rewards = []
        for completion, answer in zip(completions, meta["answer"]):
            reward = 1.0 if self._states(completion, answer) else 0.0
            if self.format_reward and self.is_well_formed(completion):
                reward += self.format_reward
            rewards.append(reward)
        return rewards
