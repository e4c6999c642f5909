"""Python programming problems (MBPP, HumanEval) rewarded by running the model's code against tests.

A completion's program (the fenced ```python block that defines the tested function, else the raw text)
runs in `rollout.sandbox` inside a small harness that executes the solution, then each test separately,
and reports `PASS i` / `FAIL i` / `DONE` on a saved copy of stdout, prefixed by a random nonce that only
arrives on stdin and lives in a local variable. So a program cannot fake success by exiting early
(`sys.exit(0)` / `os._exit(0)`: no DONE), by printing "PASS" (no nonce; its own stdout goes nowhere), by
reading its source file or `__main__` (the nonce is in neither) or by rebinding `builtins.exec`. What it
can still do is walk up the interpreter's frames to the harness's locals: see the sandbox docstring.

Tests come from the example's meta: MBPP `test_list` (+ `test_setup_code` / `test_imports`), HumanEval
`test` + `entry_point` (`check(candidate)`; the raw `prompt` stub, when listed in meta_fields, is put in
front of a completion that only continues the function body), or a generic `tests` list of snippets.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any, Mapping, Sequence

from rollout.config import TaskConfig
from rollout.sandbox import Program, SandboxLimits, SandboxResult, run_program, run_programs
from rollout.tasks.base import TaskExample
from rollout.tasks.datasets_io import load_examples

logger = logging.getLogger(__name__)

_FENCE = re.compile(r"```([\w+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CALLED = re.compile(r"([A-Za-z_][\w.]*)\s*\(")
_NOT_SOLUTION = {"assert", "set", "sorted", "list", "tuple", "dict", "len", "abs", "round", "str", "int", "float",
                 "math.isclose", "isclose", "frozenset", "any", "all", "sum", "min", "max", "bool", "print"}  # fmt: skip
_HARNESS = """\
def _judge(solution, setup, tests):
    # Locals only, captured before the solution runs: `import __main__` or rebinding builtins.exec cannot
    # reach the nonce or the report channel (frame inspection still can; see the module docstring).
    import os, sys
    run, build, failure, numbered = exec, compile, BaseException, enumerate
    nonce = sys.stdin.readline().strip()
    report = os.fdopen(os.dup(1), "w")
    sys.stdout = open(os.devnull, "w")

    def say(word):
        report.write(nonce + " " + word + "\\n")
        report.flush()

    namespace = {{"__name__": "solution", "__builtins__": __builtins__}}
    try:
        run(build(solution, "solution.py", "exec"), namespace)
        run(build(setup, "setup.py", "exec"), namespace)
    except failure:
        import traceback
        traceback.print_exc(limit=5)
        say("LOAD_FAIL")
        os._exit(1)
    for i, test in numbered(tests):
        try:
            run(build(test, "test_%d.py" % i, "exec"), namespace)
            say("PASS %d" % i)
        except failure:
            import traceback
            traceback.print_exc(limit=3)
            say("FAIL %d" % i)
    say("DONE")


_judge({solution!r}, {setup!r}, {tests!r})
"""


def function_under_test(meta: Mapping[str, Any]) -> str | None:
    """Name of the function the tests call: HumanEval's entry_point, else the first call in an MBPP assert."""
    if meta.get("entry_point"):
        return str(meta["entry_point"])
    for test in meta.get("test_list") or meta.get("tests") or []:
        for name in _CALLED.findall(test):
            if name not in _NOT_SOLUTION:
                return name
    return None


def extract_code(completion: str, function: str | None = None) -> str:
    """The first fenced block defining `function` (else the first defining anything, else the last block);
    the raw completion when it has no fence (a base model continuing a stub)."""
    blocks = _FENCE.findall(completion)
    if not blocks:
        return completion
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3", "")]
    candidates = python or [body for _, body in blocks]
    if function is not None:
        defining = [b for b in candidates if re.search(rf"^\s*def\s+{re.escape(function)}\s*\(", b, re.M)]
        if defining:
            return defining[0]
    defining = [b for b in candidates if re.search(r"^\s*(?:def|class)\s", b, re.M)]
    return defining[0] if defining else candidates[-1]


def tests_for(meta: Mapping[str, Any]) -> tuple[str, list[str]]:
    """(setup code, independent test snippets) for one example."""
    if meta.get("test_list"):
        imports = meta.get("test_imports") or []
        setup = "\n".join([*imports, meta.get("test_setup_code") or ""])
        return setup, [str(t) for t in meta["test_list"]]
    if meta.get("test") and meta.get("entry_point"):
        return "", [f"{meta['test']}\n\ncheck({meta['entry_point']})\n"]
    if meta.get("tests"):
        return "", [str(t) for t in meta["tests"]]
    return "", []


def build_program(completion: str, meta: Mapping[str, Any]) -> tuple[str, int]:
    """(harness program, number of tests) for one completion."""
    function = function_under_test(meta)
    code = extract_code(completion, function)
    stub = meta.get("prompt") if meta.get("entry_point") else None  # HumanEval's signature + docstring
    if stub and function and not re.search(rf"^\s*def\s+{re.escape(function)}\s*\(", code, re.M):
        code = f"{stub}{code}"  # HumanEval continuation: the body follows the signature + docstring
    elif stub:
        imports = [line for line in str(stub).splitlines() if re.match(r"(?:from\s+\S+\s+)?import\s", line)]
        code = "\n".join([*imports, code])
    setup, tests = tests_for(meta)
    return _HARNESS.format(solution=code, setup=setup, tests=tests), len(tests)


def score(result: SandboxResult, nonce: str, num_tests: int, partial_credit: bool) -> float:
    """Fraction of tests passed (partial credit) or 1.0 only when every test passed and the run finished."""
    if num_tests == 0 or result.error is not None:
        return 0.0
    words = [line[len(nonce) + 1 :] for line in result.stdout.splitlines() if line.startswith(nonce + " ")]
    passed = len({w for w in words if w.startswith("PASS ")})
    if partial_credit:
        return min(passed, num_tests) / num_tests
    return 1.0 if "DONE" in words and passed == num_tests and not result.timed_out else 0.0


def code_reward(
    prompts: Sequence[str],
    completions: Sequence[str],
    limits: SandboxLimits = SandboxLimits(),
    partial_credit: bool = False,
    max_workers: int | None = None,
    format_weight: float = 0.0,
    **meta: Sequence[Any],
) -> list[float]:
    """Run every completion's program against its example's tests, all at once in the sandbox pool."""
    rows = [{key: values[i] for key, values in meta.items()} for i in range(len(completions))]
    programs, nonces, counts = [], [], []
    for completion, row in zip(completions, rows):
        nonce = secrets.token_hex(16)
        try:
            program, count = build_program(completion, row)
        except Exception as exc:
            logger.warning("code reward: could not build a program (%s: %s); scored 0", type(exc).__name__, exc)
            program, count = "", 0
        if count == 0:
            logger.warning("code reward: an example has no tests (meta keys %s); scored 0", sorted(row))
        programs.append(Program(program, stdin=nonce + "\n"))
        nonces.append(nonce)
        counts.append(count)
    try:
        results = run_programs(programs, limits, max_workers)
    except Exception as exc:
        logger.warning("code reward: the sandbox pool failed (%s: %s); batch scored 0", type(exc).__name__, exc)
        return [0.0] * len(completions)
    rewards = [score(r, n, c, partial_credit) for r, n, c in zip(results, nonces, counts)]
    if format_weight:
        rewards = [r + format_weight * bool(re.search(r"```(?:python|py)\s*\n.*?```", c, re.DOTALL))
                   for r, c in zip(rewards, completions)]  # fmt: skip
    return rewards


class CodeTask:
    """A `datasets` code dataset (see datasets_io) with `code_reward`."""

    name = "code"

    def __init__(self, cfg: TaskConfig, tokenizer: Any | None = None) -> None:
        assert cfg.dataset is not None, "TaskConfig validation guarantees a dataset for kind=code"
        self.limits = SandboxLimits(timeout_s=cfg.code.timeout_s, memory_mb=cfg.code.memory_mb)
        self.partial_credit = cfg.code.partial_credit
        self.max_workers = cfg.code.max_workers
        self.format_weight = cfg.format_reward
        self._train = load_examples(cfg.dataset, "train", tokenizer)
        self._eval = load_examples(cfg.dataset, "eval", tokenizer)
        check_sandbox(self.limits)

    def train_examples(self) -> Sequence[TaskExample]:
        return self._train

    def eval_examples(self) -> Sequence[TaskExample]:
        return self._eval

    def reward(self, prompts: Sequence[str], completions: Sequence[str], **meta: Sequence[Any]) -> list[float]:
        return code_reward(prompts, completions, self.limits, self.partial_credit, self.max_workers,
                           self.format_weight, **meta)  # fmt: skip

    def is_correct(self, completion: str, example: TaskExample) -> bool:
        meta = {"answer": [example.answer], **{k: [v] for k, v in example.meta.items()}}
        return code_reward([example.prompt], [completion], self.limits, False, 1, **meta)[0] == 1.0


def check_sandbox(limits: SandboxLimits) -> None:
    """Fail at setup, not with silent zero rewards, when the sandbox cannot run a trivial program
    (e.g. an interpreter the unprivileged uid cannot read)."""
    result = run_program("import json, math, re, collections\nprint(json.dumps(math.gcd(12, 18)))", limits)
    if not result.ok or result.stdout.strip() != "6":
        raise RuntimeError(f"the code sandbox cannot run a trivial program: returncode={result.returncode} "
                           f"error={result.error} stderr={result.stderr[-400:]!r}")  # fmt: skip
