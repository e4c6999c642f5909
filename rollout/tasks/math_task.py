"""Math word problems (GSM8K, MATH, MATH-500) with a verifiable 0/1 reward.

The reward extracts the completion's final answer (last `\\boxed{...}` or `#### x`, else "the answer is
x", else the last number), then judges it against the reference in three steps, cheapest first:
normalised string equality; plain-number comparison (commas, `$`, units, `%`, fractions, `\\frac`);
`math_verify` for everything symbolic (LaTeX expressions, intervals, tuples, equations), in a child
process with a hard deadline (see bounded_verify). Any error or timeout scores 0 with a logged warning:
a reward must never end a trial.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Sequence

from rollout.config import TaskConfig
from rollout.tasks.base import TaskExample
from rollout.tasks.datasets_io import load_examples
from rollout.tasks.bounded_verify import BoundedVerifier, shared_verifier

logger = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 400
"""Longer 'answers' are garbage (a whole derivation); comparing them only costs time."""
_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+"
_LAST_NUMBER = re.compile(rf"({_NUMBER})(?:\s*/\s*(\d+))?")
_ANSWER_IS = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*:?\s*([^\n]+)", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_HASHES = re.compile(r"####\s*([^\n]*)")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf)\s*\{([^{}]*)\}")
_UNIT_TAIL = re.compile(rf"^({_NUMBER}(?:/\d+)?%?)\s*[a-zA-Z][a-zA-Z\s.]*$")
_FRAC = re.compile(r"^([-+]?)\\frac\{([-+]?\d+(?:\.\d+)?)\}\{([-+]?\d+(?:\.\d+)?)\}$")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}`, nested braces included; None if absent."""
    commands = list(_BOXED.finditer(text))
    if not commands:
        return None
    i = commands[-1].end()
    if not text.startswith("{", i):  # `\\boxed 5`: the next token is the answer
        token = re.match(r"[^\s$]+", text[i:])
        return token.group(0).rstrip(".") if token else None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None  # unbalanced: a truncated completion


def extract_answer(text: str) -> str | None:
    """The stated final answer of a solution text, or None if it states none."""
    boxed = last_boxed(text)
    hashes = [m.group(1).strip() for m in _HASHES.finditer(text) if m.group(1).strip()]
    boxed_at = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if boxed is not None and (not hashes or boxed_at > text.rfind("####")):
        return boxed.strip()
    if hashes:
        return hashes[-1]
    stated = _ANSWER_IS.findall(text)
    if stated:
        return stated[-1].strip().rstrip(".")
    numbers = _LAST_NUMBER.findall(text)
    if numbers:
        whole, denominator = numbers[-1]
        return f"{whole}/{denominator}" if denominator else whole
    return None


def has_answer_format(text: str) -> bool:
    """Whether the completion states its answer as `\\boxed{...}` or `#### ...` (the format bonus)."""
    boxed = last_boxed(text)
    return bool(boxed and boxed.strip()) or any(m.group(1).strip() for m in _HASHES.finditer(text))


def reference_answer(answer: str) -> str:
    """The gold answer: GSM8K's `#### 72` and MATH solutions' `\\boxed{}` are extracted, others kept."""
    if "####" in answer or "\\boxed" in answer or "\\fbox" in answer:
        return extract_answer(answer) or answer.strip()
    return answer.strip()


def normalize(answer: str) -> str:
    """Canonical string: no LaTeX spacing / `\\left` / `$` / `\\text{}` wrappers, units, commas or spaces."""
    s = _TEXT_CMD.sub(r"\1", answer.strip())
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\ ", " "),
                     ("dfrac", "frac"), ("tfrac", "frac"), ("^{\\circ}", ""), ("^\\circ", ""), ("°", ""),
                     ("\\$", ""), ("$", ""), ("\\%", "%")):  # fmt: skip
        s = s.replace(old, new)
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s.strip())  # `x = 5` -> `5`
    s = s.strip().rstrip(".").strip()
    unit = _UNIT_TAIL.match(s)  # `18 dollars`, `3 hours`
    if unit:
        s = unit.group(1)
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    return re.sub(r"\s+", "", s).lower()


def to_number(normalized: str) -> tuple[float, bool] | None:
    """(value, is_percent) for a plain number, `a/b` or `\\frac{a}{b}`; None for anything else (including
    numbers too large for a float, which math_verify then compares exactly)."""
    percent = normalized.endswith("%")
    s = normalized.rstrip("%")
    value = None
    try:
        if re.fullmatch(_NUMBER, s):
            value = float(s)
        elif re.fullmatch(r"[-+]?\d+/\d+", s):
            top, bottom = s.split("/")
            value = int(top) / int(bottom)
        elif frac := _FRAC.match(s):
            sign = -1.0 if frac.group(1) == "-" else 1.0
            value = sign * float(frac.group(2)) / float(frac.group(3))
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return (value, percent) if value is not None and math.isfinite(value) else None


def _numbers_equal(gold: tuple[float, bool], pred: tuple[float, bool]) -> bool:
    """A percentage may be meant as itself or as a fraction: 50% matches 50 and 0.5."""
    golds = {gold[0], gold[0] / 100} if gold[1] else {gold[0]}
    preds = {pred[0], pred[0] / 100} if pred[1] else {pred[0]}
    return any(math.isclose(g, p, rel_tol=1e-6, abs_tol=1e-9) for g in golds for p in preds)


def answers_match(gold: str, pred: str | None, verifier: BoundedVerifier | None = None) -> bool:
    """Strict correctness of an extracted answer against a reference answer."""
    if pred is None or not pred.strip() or len(pred) > MAX_ANSWER_CHARS:
        return False
    gold_norm, pred_norm = normalize(gold), normalize(pred)
    if gold_norm == pred_norm:
        return True
    gold_num, pred_num = to_number(gold_norm), to_number(pred_norm)
    if gold_num is not None and pred_num is not None:
        return _numbers_equal(gold_num, pred_num)
    return (verifier or shared_verifier()).equal(gold, pred)


def math_reward(
    prompts: Sequence[str],
    completions: Sequence[str],
    answer: Sequence[str],
    format_weight: float = 0.0,
    verifier: BoundedVerifier | None = None,
    **meta: Sequence[Any],
) -> list[float]:
    """1 for a correct final answer (+ `format_weight` for a boxed / #### answer); errors score 0."""
    rewards = []
    for completion, gold in zip(completions, answer):
        try:
            reward = float(answers_match(reference_answer(gold), extract_answer(completion), verifier))
            if format_weight and has_answer_format(completion):
                reward += format_weight
        except Exception as exc:
            logger.warning("math reward failed on a completion (%s: %s); scored 0", type(exc).__name__, exc)
            reward = 0.0
        rewards.append(reward)
    return rewards


class MathTask:
    """A `datasets` math dataset (see datasets_io) with `math_reward`."""

    name = "math"

    def __init__(self, cfg: TaskConfig, tokenizer: Any | None = None, verifier: BoundedVerifier | None = None) -> None:
        assert cfg.dataset is not None, "TaskConfig validation guarantees a dataset for kind=math"
        self.format_weight = cfg.format_reward
        self._verifier = verifier
        self._train = load_examples(cfg.dataset, "train", tokenizer)
        self._eval = load_examples(cfg.dataset, "eval", tokenizer)

    def train_examples(self) -> Sequence[TaskExample]:
        return self._train

    def eval_examples(self) -> Sequence[TaskExample]:
        return self._eval

    def reward(self, prompts: Sequence[str], completions: Sequence[str], **meta: Sequence[Any]) -> list[float]:
        return math_reward(prompts, completions, format_weight=self.format_weight, verifier=self._verifier, **meta)

    def is_correct(self, completion: str, example: TaskExample) -> bool:
        try:
            return answers_match(reference_answer(example.answer), extract_answer(completion), self._verifier)
        except Exception as exc:
            logger.warning("math correctness check failed (%s: %s); counted wrong", type(exc).__name__, exc)
            return False
