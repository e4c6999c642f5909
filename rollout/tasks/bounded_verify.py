"""`math_verify` behind a hard time limit that holds in any thread.

math_verify bounds its parse / verify calls with `signal.alarm`, which only works on a main thread (a
Ray Tune trial's reward may run elsewhere) and cannot interrupt C-level work such as a huge integer
power (`2^{10^{10^{10}}}` keeps one core busy until killed). So the calls run in one long-lived child
process, where they are on the child's main thread and their own alarms work; the parent waits with a
deadline and kills and restarts the child when an answer overruns it.

The child is a plain `python -c` subprocess speaking JSON lines, not `multiprocessing`: spawn re-imports
the parent's `__main__`, which fails for `python -c` / stdin scripts and some embedded interpreters.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
from typing import Any

logger = logging.getLogger(__name__)

_BOOT = "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); from {module} import serve; serve({args})"


def math_verify_equal(gold: str, pred: str, timeout_s: int | None) -> bool:
    """math_verify's judgement of two answer strings; raises TimeoutError on its own timeout."""
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException  # a BaseException: convert it

    alarm = timeout_s if threading.current_thread() is threading.main_thread() else None
    try:
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=alarm, raise_on_error=True)
        pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=alarm, raise_on_error=True)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=alarm, raise_on_error=True))
    except TimeoutException as exc:
        raise TimeoutError(str(exc)) from None


def serve(timeout_s: int, memory_mb: int) -> None:
    """Child loop: `[gold, pred]` lines in, `["ok", bool]` or `["err", message]` lines out."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints from sympy & co. must not corrupt the protocol
    import math_verify  # noqa: F401  (import before announcing readiness)

    out.write('["ready", null]\n')
    out.flush()
    for line in sys.stdin:
        gold, pred = json.loads(line)
        try:
            reply: list[Any] = ["ok", math_verify_equal(gold, pred, timeout_s)]
        except Exception as exc:  # TimeoutError, MemoryError, sympy / latex2sympy errors
            reply = ["err", f"{type(exc).__name__}: {str(exc)[:200]}"]
        out.write(json.dumps(reply) + "\n")
        out.flush()


class BoundedVerifier:
    """Thread-safe; answers are cached, since the G samples of a group often state the same answer.

    One child judges one answer at a time, so each pathological answer costs up to `timeout_s` (math_verify's
    alarm, 2 s by default; real answers take milliseconds) and at worst `hard_timeout_s` plus a restart.
    """

    def __init__(self, timeout_s: int = 2, memory_mb: int = 4096, startup_timeout_s: float = 60.0) -> None:
        self.timeout_s = max(1, int(timeout_s))
        self.hard_timeout_s = 3 * self.timeout_s + 2.0  # two parses and a verify, each alarm-bounded
        self.memory_mb = memory_mb
        self.startup_timeout_s = startup_timeout_s
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._cache: dict[tuple[str, str], bool] = {}
        self._in_process = False

    def _start(self) -> None:
        boot = _BOOT.format(module=__name__, args=f"{self.timeout_s}, {self.memory_mb}")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", boot, json.dumps(sys.path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        ready = self._read_reply(self.startup_timeout_s)
        if ready is None or ready[0] != "ready":
            raise RuntimeError(f"no 'ready' from the verifier process within {self.startup_timeout_s:.0f}s")

    def _read_reply(self, timeout_s: float) -> list[Any] | None:
        assert self._proc is not None and self._proc.stdout is not None
        readable, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        if not readable:
            return None
        line = self._proc.stdout.readline()
        return json.loads(line) if line else None

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    stream.close()
        self._proc = None

    def _equal_in_process(self, gold: str, pred: str) -> bool:
        """Fallback when no child can start: math_verify's own alarms, which exist on the main thread only."""
        try:
            return math_verify_equal(gold, pred, self.timeout_s)
        except Exception as exc:
            logger.warning("math_verify failed on answer %.80r (%s: %s); scored 0", pred, type(exc).__name__, exc)
            return False

    def _ask_child(self, gold: str, pred: str) -> bool:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                try:
                    self._start()
                except Exception as exc:
                    self.close()
                    self._in_process = True
                    logger.warning("math_verify process failed to start (%s: %s); verifying in-process, bounded "
                                   "only on the main thread", type(exc).__name__, exc)  # fmt: skip
                    return self._equal_in_process(gold, pred)
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write(json.dumps([gold, pred]) + "\n")
                self._proc.stdin.flush()
                reply = self._read_reply(self.hard_timeout_s)
            except (OSError, ValueError) as exc:
                reply = ["err", f"verifier process died ({type(exc).__name__}: {exc})"]
            if reply is None:  # overran the deadline, or died (e.g. killed for memory): restart next time
                self.close()
                logger.warning("math_verify gave no answer within %.0fs on %.80r; scored 0", self.hard_timeout_s, pred)
                return False
        if reply[0] == "err":
            logger.warning("math_verify failed on answer %.80r (%s); scored 0", pred, reply[1])
            return False
        return bool(reply[1])

    def equal(self, gold: str, pred: str) -> bool:
        """True if math_verify judges `pred` equal to `gold`; False (and a warning) on a timeout or error."""
        key = (gold, pred)
        if key not in self._cache:
            result = self._equal_in_process(gold, pred) if self._in_process else self._ask_child(gold, pred)
            if len(self._cache) < 100_000:
                self._cache[key] = result
        return self._cache[key]


_shared: BoundedVerifier | None = None
_shared_lock = threading.Lock()


def shared_verifier() -> BoundedVerifier:
    """One verifier process per Python process, shared by every MathTask and reward call."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = BoundedVerifier()
        return _shared
