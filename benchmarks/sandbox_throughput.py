"""Code-reward throughput of the sandbox pool, and what one hostile program costs, measured in one run.

1. benign: N small MBPP-style programs (the fixture tasks' reference solutions, wrapped as chat
   completions) judged by `code_reward` with the default pool (one worker per usable CPU);
2. hostile, alone: sleep-forever, fork bomb (stops itself at 300 processes) and a 10 GB allocation, each
   judged on its own: its wall time is the worst case one such completion adds to a reward call;
3. mixed: the benign batch plus the three hostile programs in one call, to show the pool keeps going.

    .venv/bin/python benchmarks/sandbox_throughput.py [--n 200 --timeout 5]

The machine may be shared: the load average at start and end is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rollout.sandbox import SandboxLimits, default_workers  # noqa: E402
from rollout.tasks.code_task import code_reward  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "mbpp_sample.jsonl"
HOSTILE = {
    "sleep forever": "import time\ntime.sleep(10 ** 6)",
    "fork bomb (300 max)": (
        "import os, time\nfor _ in range(300):\n    try:\n        pid = os.fork()\n    except OSError:\n"
        "        break\n    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\ntime.sleep(60)"
    ),
    "10 GB allocation": "block = bytearray(10 * 2 ** 30)",
}


def judge(completions: list[str], tests: list[list[str]], limits: SandboxLimits) -> tuple[list[float], float]:
    start = time.monotonic()
    rewards = code_reward([""] * len(completions), completions, limits, test_list=tests)
    return rewards, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="benign programs")
    parser.add_argument("--timeout", type=float, default=5.0, help="wall-clock limit per program (s)")
    args = parser.parse_args()
    limits = SandboxLimits(timeout_s=args.timeout)
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    rows = [rows[i % len(rows)] for i in range(args.n)]
    benign = [f"Here is the function:\n```python\n{row['code']}\n```" for row in rows]
    tests = [row["test_list"] for row in rows]
    load_start = os.getloadavg()[0]

    judge(benign[:4], tests[:4], limits)  # warm-up: page cache, first-use imports
    print(f"pool: {default_workers()} workers, timeout {args.timeout:g} s, load average {load_start:.1f}")
    print(f"{'case':<36}{'programs':>9}{'wall s':>9}{'programs/s':>12}{'mean reward':>13}")

    def row(name: str, n: int, seconds: float, rewards: list[float]) -> None:
        print(f"{name:<36}{n:>9}{seconds:>9.2f}{n / seconds:>12.2f}{sum(rewards) / len(rewards):>13.2f}")

    rewards, seconds = judge(benign, tests, limits)
    row("benign MBPP references", len(benign), seconds, rewards)
    hostile_tests = [["assert add(1, 2) == 3"]]
    for name, code in HOSTILE.items():
        completion = f"```python\n{code}\ndef add(a, b):\n    return a + b\n```"
        rewards, seconds = judge([completion], hostile_tests, limits)
        row(f"hostile alone: {name}", 1, seconds, rewards)
    mixed = benign + [f"```python\n{code}\n```" for code in HOSTILE.values()]
    rewards, seconds = judge(mixed, tests + hostile_tests * len(HOSTILE), limits)
    row("benign + 3 hostile in one call", len(mixed), seconds, rewards[: len(benign)])
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
