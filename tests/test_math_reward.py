"""Math reward: answer extraction, equivalence (fractions, LaTeX, commas, units, %), robustness, accuracy."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rollout.config import DatasetConfig, TaskConfig
from rollout.tasks.base import reward_meta
from rollout.tasks.bounded_verify import BoundedVerifier
from rollout.tasks.math_task import (
    MathTask,
    answers_match,
    extract_answer,
    has_answer_format,
    last_boxed,
    math_reward,
    reference_answer,
)

FIXTURES = Path(__file__).parent / "fixtures"
PATHOLOGICAL = "\\boxed{2^{10^{10^{10}}}}"


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def verifier():
    v = BoundedVerifier(timeout_s=1)
    assert v.equal("x + 1", "1 + x")  # start the child now: its start-up is not part of any timing below
    yield v
    v.close()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the total is 18.\n#### 18", "18"),
        ("The answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("first \\boxed{4}, then on reflection \\boxed{5}", "5"),
        ("\\boxed{\\text{(C)}}", "\\text{(C)}"),
        ("\\boxed 7", "7"),
        ("\\fbox{12}", "12"),
        ("#### 3\nThen I reconsidered: \\boxed{4}", "4"),
        ("\\boxed{3} but the format wants\n#### 4", "4"),
        ("So the final answer is 1,000 dollars.", "1,000 dollars"),
        ("She ends up with 12 apples and 3/4 of a pie", "3/4"),
        ("no numbers here", None),
        ("", None),
        ("\\boxed{unbalanced", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_keeps_nested_braces():
    assert last_boxed("x \\boxed{\\frac{\\sqrt{3}}{2}} y") == "\\frac{\\sqrt{3}}{2}"


@pytest.mark.parametrize(
    "gold, completion, correct",
    [
        ("#### 1,000", "The total is 1000 dollars.", True),  # commas, units
        ("1000", "#### $1,000.", True),  # $, commas, trailing period
        ("18", "#### 18 dollars", True),
        ("0.5", "\\boxed{\\frac{1}{2}}", True),  # fractions vs decimals
        ("\\frac{1}{2}", "\\boxed{1/2}", True),
        ("\\frac{14}{3}", "\\boxed{\\dfrac{14}{3}}", True),  # LaTeX variants
        ("-\\frac{3}{4}", "\\boxed{-0.75}", True),
        ("\\frac{1}{3}", "\\boxed{0.3}", False),
        ("40\\%", "\\boxed{40}", True),  # percentages
        ("0.4", "\\boxed{40\\%}", True),
        ("40\\%", "\\boxed{4\\%}", False),
        ("120^\\circ", "\\boxed{120}", True),  # degrees
        ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\frac{\\sqrt2}{2}}", True),  # symbolic: math_verify
        ("x^2 - x - 6", "\\boxed{-6 - x + x^2}", True),
        ("x^2 - x - 6", "\\boxed{x^2 + x - 6}", False),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\frac{\\pi}{2})}", True),
        ("[3,\\infty)", "\\boxed{(3, \\infty)}", False),
        ("\\text{(A)}", "\\boxed{A}", True),
        ("4", "\\boxed{x = 4}", True),
        ("5", "\\boxed{4} no wait \\boxed{5}", True),  # the last boxed answer counts
        ("5", "\\boxed{5} no wait \\boxed{4}", False),
        ("5", "I cannot solve this.", False),  # no answer
        ("5", "", False),
        ("5", "}}}{{\\boxed{ #### $$ \\frac{ garbage", False),  # garbage
        ("5", "\\boxed{" + "9" * 1000 + "}", False),  # absurdly long
    ],
)
def test_answers_match(gold, completion, correct, verifier):
    assert answers_match(reference_answer(gold), extract_answer(completion), verifier) is correct


def test_format_reward_is_added_only_for_a_stated_final_answer(verifier):
    completions = ["\\boxed{7}", "#### 7", "the answer is 7", "\\boxed{8}"]
    rewards = math_reward([""] * 4, completions, answer=["7"] * 4, format_weight=0.1, verifier=verifier)
    assert rewards == pytest.approx([1.1, 1.1, 1.0, 0.1])
    assert not has_answer_format("#### ") and not has_answer_format("\\boxed{}")


def test_pathological_answer_is_bounded_and_scores_zero(verifier, caplog):
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        rewards = math_reward([""], [PATHOLOGICAL], answer=["5"], verifier=verifier)
    assert rewards == [0.0]
    assert time.monotonic() - start < verifier.hard_timeout_s + 2
    assert "scored 0" in caplog.text


def test_a_hung_verifier_process_is_killed_and_restarted(caplog):
    v = BoundedVerifier(timeout_s=5)
    try:
        v.hard_timeout_s = 0.5  # shorter than math_verify's own 5 s alarm: the parent must give up first
        start = time.monotonic()
        with caplog.at_level(logging.WARNING):
            assert not v.equal("5", "2^{10^{10^{10}}}")
        assert time.monotonic() - start < 5
        assert "no answer within" in caplog.text
        v.hard_timeout_s = 20
        assert v.equal("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}")  # a fresh child answers again
    finally:
        v.close()


def test_reward_from_worker_threads_is_bounded(verifier):
    """Ray Tune may call the reward off the main thread, where math_verify's own alarm cannot work."""
    golds = ["\\frac{\\sqrt{2}}{2}", "5", "x+3"]
    completions = ["\\boxed{\\frac{1}{\\sqrt{2}}}", "\\boxed{3^{10^{10^{10}}}}", "\\boxed{3+x}"]
    with ThreadPoolExecutor(2) as pool:
        calls = [([""], [c], [g]) for g, c in zip(golds, completions)]
        futures = [pool.submit(math_reward, p, c, answer=g, verifier=verifier) for p, c, g in calls]
        assert [f.result(timeout=60)[0] for f in futures] == [1.0, 0.0, 1.0]
    assert threading.current_thread() is threading.main_thread()


def test_reward_errors_score_zero_and_do_not_raise(verifier, caplog):
    with caplog.at_level(logging.WARNING):
        rewards = math_reward(["", ""], ["\\boxed{3}", "\\boxed{3}"], answer=[None, "3"], verifier=verifier)
    assert rewards == [0.0, 1.0]
    assert "math reward failed" in caplog.text


@pytest.mark.parametrize("name, field", [("gsm8k", "answer"), ("math500", "answer"), ("math500", "solution")])
def test_reward_accuracy_on_fixture_candidates(name, field, verifier):
    rows = _jsonl(f"{name}_sample.jsonl")
    candidates = _jsonl(f"{name}_candidates.jsonl")
    golds = [rows[c["row"]][field] for c in candidates]
    completions = [c["completion"] for c in candidates]
    rewards = math_reward([""] * len(candidates), completions, answer=golds, verifier=verifier)
    wrong = [(c, r) for c, r in zip(candidates, rewards) if (r == 1.0) != c["expected"]]
    assert not wrong, wrong
    assert sum(c["expected"] for c in candidates) == len(candidates) // 2  # balanced correct / incorrect


def test_math_task_on_gsm8k_fixture(verifier):
    dataset = DatasetConfig(path=str(FIXTURES / "gsm8k_sample.jsonl"), eval_path=str(FIXTURES / "gsm8k_sample.jsonl"),
                            prompt_template="{prompt}\nEnd with '#### <answer>'.", max_train=20, max_eval=5)  # fmt: skip
    task = MathTask(TaskConfig(kind="math", dataset=dataset, format_reward=0.5), tokenizer=None, verifier=verifier)
    train, evals = task.train_examples(), task.eval_examples()
    assert len(train) == 20 and len(evals) == 5
    assert train[0].prompt.endswith("End with '#### <answer>'.") and "#### 18" in train[0].answer
    completions = [example.answer for example in train[:4]]  # the reference solutions themselves
    assert task.reward([e.prompt for e in train[:4]], completions, **reward_meta(train[:4])) == [1.5] * 4
    assert task.is_correct("#### 18", train[0]) and not task.is_correct("#### 19", train[0])
