"""Code reward: program extraction, MBPP / HumanEval tests in the sandbox, reward hacks, accuracy."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from rollout.config import CodeConfig, DatasetConfig, TaskConfig
from rollout.sandbox import SandboxLimits
from rollout.tasks.base import reward_meta
from rollout.tasks.code_task import CodeTask, code_reward, extract_code, function_under_test

FIXTURES = Path(__file__).parent / "fixtures"
LIMITS = SandboxLimits(timeout_s=3.0, cpu_s=1)
"""Several fixture candidates loop forever on purpose: 1 CPU-second ends them; the wall clock allows for
a loaded machine."""
MBPP_KEYS = ["test_list", "test_setup_code"]
HUMANEVAL_KEYS = ["test", "entry_point", "prompt"]
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def _add_reward(completions: list[str], **kwargs) -> list[float]:
    n = len(completions)
    return code_reward([""] * n, completions, LIMITS, test_list=[ADD_TESTS] * n, **kwargs)


def test_extract_code_picks_the_block_defining_the_tested_function():
    completion = (
        "Usage first:\n```python\nprint(add(1, 2))\n```\nSolution:\n```python\ndef add(a, b):\n    return a + b\n```\n"
        "Tests:\n```python\ndef test_add():\n    assert add(1, 2) == 3\n```"
    )
    assert extract_code(completion, "add").startswith("def add(a, b)")
    assert extract_code("```py\ndef f():\n    return 1\n```", None).startswith("def f()")
    assert extract_code("```python\ndef f():\n    return 1\n", "f").startswith("def f()")  # truncated: no closing fence
    assert extract_code("def f():\n    return 1", "f") == "def f():\n    return 1"  # raw code


def test_tested_function_name():
    circle = {"test_list": ["assert math.isclose(circle_area(2), 12.56, rel_tol=0.01)"]}
    assert function_under_test(circle) == "circle_area"
    assert function_under_test({"test_list": ["assert set(similar(1, 2)) == set()"]}) == "similar"
    assert function_under_test({"entry_point": "has_close_elements"}) == "has_close_elements"


def test_all_or_nothing_and_partial_credit():
    almost = "```python\ndef add(a, b):\n    return a + b if a >= 0 else 99\n```"
    right = "```python\ndef add(a, b):\n    return a + b\n```"
    assert _add_reward([right, almost]) == [1.0, 0.0]
    assert _add_reward([right, almost], partial_credit=True) == pytest.approx([1.0, 2 / 3])


@pytest.mark.parametrize(
    "hack",
    [
        "import sys\nsys.exit(0)",  # leave with a success code before the tests run
        "import os\nos._exit(0)",
        "import os\nos.write(1, b'PASS 0\\nPASS 1\\nPASS 2\\nDONE\\n')\nos._exit(0)",  # forged markers, no nonce
        "print(open(__file__).read())\nraise SystemExit(0)",  # the nonce is not in any file
        "def add(a, b):\n    raise SystemExit(0)",  # exiting inside a test counts as a failure
        "import __main__, os\nos.write(1, repr(vars(__main__)).encode())",  # no nonce in module globals
        "import builtins\nbuiltins.exec = lambda *args, **kwargs: None",  # tests still run
    ],
)
def test_reward_hacks_score_zero(hack):
    assert _add_reward([f"```python\n{hack}\n```"]) == [0.0]
    assert _add_reward([f"```python\n{hack}\n```"], partial_credit=True) == [0.0]


def test_setup_code_and_imports_are_visible_to_the_tests():
    solution = "```python\ndef f(x):\n    return x\n```"
    rewards = code_reward([""], [solution], LIMITS, test_list=[["assert f(CONST) == 3 and math.pi > 3"]],
                          test_setup_code=["CONST = 3"], test_imports=[["import math"]])  # fmt: skip
    assert rewards == [1.0]


def test_examples_without_tests_or_broken_meta_score_zero(caplog):
    with caplog.at_level(logging.WARNING):
        rewards = code_reward(["", ""], ["def f(): pass", "def f(): pass"], LIMITS, answer=["x", "y"])
    assert rewards == [0.0, 0.0]
    assert "no tests" in caplog.text


def test_format_reward_for_a_fenced_python_block():
    right = "def add(a, b):\n    return a + b\n"
    assert _add_reward([f"```python\n{right}```", right], format_weight=0.25) == [1.25, 1.0]


@pytest.mark.parametrize("name, keys", [("mbpp", MBPP_KEYS), ("humaneval", HUMANEVAL_KEYS)])
def test_reward_accuracy_on_fixture_candidates(name, keys):
    rows = _jsonl(f"{name}_sample.jsonl")
    candidates = _jsonl(f"{name}_candidates.jsonl")
    meta = {key: [rows[c["row"]][key] for c in candidates] for key in keys}
    rewards = code_reward([""] * len(candidates), [c["completion"] for c in candidates], LIMITS, **meta)
    wrong = [(c, r) for c, r in zip(candidates, rewards) if (r == 1.0) != c["expected"]]
    assert not wrong, wrong


@pytest.mark.parametrize(
    "name, keys, solution", [("mbpp", MBPP_KEYS, "code"), ("humaneval", HUMANEVAL_KEYS, "canonical_solution")]
)
def test_reference_solutions_pass(name, keys, solution):
    rows = _jsonl(f"{name}_sample.jsonl")
    meta = {key: [row[key] for row in rows] for key in keys}
    assert code_reward([""] * len(rows), [row[solution] for row in rows], LIMITS, **meta) == [1.0] * len(rows)


def test_code_task_on_humaneval_fixture():
    path = str(FIXTURES / "humaneval_sample.jsonl")
    dataset = DatasetConfig(path=path, eval_path=path, prompt_field="prompt", answer_field="canonical_solution",
                            meta_fields=HUMANEVAL_KEYS, prompt_template="Complete:\n{prompt}", max_eval=4)  # fmt: skip
    task = CodeTask(TaskConfig(kind="code", dataset=dataset, code=CodeConfig(timeout_s=3.0, partial_credit=True)))
    examples = list(task.eval_examples())
    assert len(examples) == 4 and examples[0].prompt.startswith("Complete:\n")
    rewards = task.reward([e.prompt for e in examples], [e.answer for e in examples], **reward_meta(examples))
    assert rewards == [1.0] * 4
    assert task.is_correct(examples[1].answer, examples[1])
    assert not task.is_correct("    return -1\n", examples[1])
