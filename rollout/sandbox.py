"""Run untrusted Python programs (model-written code) with bounded time, memory, output and reach.

Each program runs in a fresh process, `python -I -S rollout/sandbox_launcher.py`, in a new session /
process group, with a scrubbed environment (PATH, HOME=/tmp, LANG, thread caps), stdin from a file,
stdout and stderr going to root-owned files that RLIMIT_FSIZE caps, and a wall-clock timeout after
which everything it started is SIGKILLed. The launcher (a fresh single-threaded interpreter, so no `preexec_fn` runs
inside this threaded pool) isolates itself, drops privileges, then execs the program's code in-process.

What is isolated when the caller is root (the usual container case; tests/test_sandbox_security.py
checks each point):
- identity: a uid/gid of the program's own (random, in a range far above real accounts; 65534 `nobody`
  if that range is not mapped), no supplementary groups, PR_SET_NO_NEW_PRIVS. It cannot read files
  that are not world-readable (root's 0600 / 0700 files, tokens under /root), nor write files it does
  not own, nor signal any process outside the sandbox.
- environment: only PATH / HOME / LANG / *_NUM_THREADS=1; the caller's env vars (secrets) are not inherited.
- network: a new network namespace with only a down loopback: no TCP/UDP anywhere, 127.0.0.1 included,
  and no abstract unix sockets of the host.
- filesystem: a private mount namespace in which every mount is read-only (mount_setattr AT_RECURSIVE;
  on kernels < 5.12 only the root mount), plus a small private tmpfs on /tmp, /var/tmp and /dev/shm
  (the working directory is /tmp/sandbox). Whatever the program writes vanishes with it and is bounded
  by `tmpfs_mb`. An interpreter under a private directory (pyenv / uv under /root) is bound back
  read-only over a tmpfs that hides the rest of that directory.
- processes: a new pid namespace with its own /proc: the program sees only its own processes, and when
  its first process ends or is killed the kernel kills every process inside (setsid() escapees too).
- resources: RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE (every file, stdout included), RLIMIT_NOFILE,
  RLIMIT_NPROC (binding because the uid is the program's own), no core dumps; wall-clock timeout.
Namespaces are tried from most to least (net+mount+pid, net+mount, net); what was achieved comes back in
`SandboxResult.isolation`, and a missing piece is logged once as a warning. Without a pid namespace,
cleanup falls back to killpg plus `kill -9 -1` run as the program's uid.

Without root, a user namespace (if the kernel allows unprivileged ones) brings the same network, mount
(read-only tree, private /tmp) and pid namespaces, and RLIMIT_NPROC counts per namespace; but the program
runs as the calling user, so it can READ everything that user can (home directory, tokens, keys). If user
namespaces are refused too, only the rlimits, the timeout and the process-group kill remain.

What is NOT isolated, even as root:
- world-readable files (repository, site-packages, /etc) stay readable: keep secrets out of them.
- filesystem unix sockets whose mode lets anyone connect are reachable (a network namespace does not
  cover paths). The kernel is shared (no seccomp filter, no VM): a kernel exploit escapes.
- CPU share: no cgroup; a program may keep `max_processes` busy processes running until the timeout.
- in-process forgery: a harness running inside the program's interpreter (the test runner of
  `rollout.tasks.code_task`) shares memory with it; a program that inspects frames can forge its markers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import select
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

LAUNCHER = str(Path(__file__).with_name("sandbox_launcher.py"))
NOBODY = 65534
UID_BASE, UID_SPAN = 1_600_000_000, 1 << 24
"""Per-run uids are drawn from [UID_BASE, UID_BASE + UID_SPAN): far above any real account."""
SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip
"""The program's whole environment: nothing inherited from the caller; BLAS pools capped at one thread."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0
    """Wall-clock limit; the whole process tree is SIGKILLed when it passes."""
    cpu_s: int | None = None
    """RLIMIT_CPU per process; default ceil(timeout_s) + 1 (the wall clock usually fires first)."""
    memory_mb: int = 1024
    """RLIMIT_AS: address space per process, so a 10 GB allocation fails with MemoryError."""
    file_size_mb: int = 16
    """RLIMIT_FSIZE: largest file any process may write, stdout / stderr files included."""
    max_processes: int = 32
    """RLIMIT_NPROC for the program's own uid (processes and threads): stops fork bombs."""
    max_open_files: int = 64
    max_output_bytes: int = 1 << 16
    """How much of stdout and of stderr comes back in the result."""
    tmpfs_mb: int = 64
    """Size of the private /tmp (the working directory) when a mount namespace is available."""

    @property
    def cpu_seconds(self) -> int:
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1


@dataclass(frozen=True)
class Program:
    code: str
    stdin: str = ""


@dataclass(frozen=True)
class SandboxResult:
    returncode: int | None
    """Exit status; negative = killed by that signal (-9 after the timeout). Python ignores SIGXFSZ, so a
    write past RLIMIT_FSIZE raises OSError (EFBIG) in the program instead."""
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float
    truncated: bool = False
    """True when stdout or stderr was longer than `max_output_bytes` (only that much comes back)."""
    isolation: dict[str, Any] = field(default_factory=dict)
    """What the launcher achieved: network / mount / pid / readonly_root (bools), uid (int or None),
    exposed (interpreter dirs bound back), errors (why a namespace was refused). Empty = no launch."""
    error: str | None = None
    """Set when the sandbox itself failed (the program did not run)."""

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out and self.returncode == 0


class _UidPool:
    """Hands out a uid per concurrent run, so runs cannot signal each other or share RLIMIT_NPROC."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: set[int] = set()
        self._rng = random.Random()
        self.range_mapped = self._range_mapped()

    @staticmethod
    def _range_mapped() -> bool:
        try:
            lines = Path("/proc/self/uid_map").read_text().split()
        except OSError:
            return False
        triples = [tuple(int(x) for x in lines[i : i + 3]) for i in range(0, len(lines) - 2, 3)]
        return any(lo <= UID_BASE and UID_BASE + UID_SPAN <= lo + n for lo, _, n in triples)

    def acquire(self) -> tuple[int, bool]:
        """(uid, unique): unique is False when only the shared `nobody` is available."""
        if not self.range_mapped:
            return NOBODY, False
        with self._lock:
            while True:
                uid = UID_BASE + self._rng.randrange(UID_SPAN)
                if uid not in self._used:
                    self._used.add(uid)
                    return uid, True

    def release(self, uid: int) -> None:
        with self._lock:
            self._used.discard(uid)


_UIDS = _UidPool()
_SITE_PACKAGES = [p for p in site.getsitepackages() if os.path.isdir(p)]
"""Put on the program's sys.path by the launcher, which starts with -S: `site` and its .pth files (an
editable install, setuptools' distutils hack) cost more start-up time than a typical test program."""
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def _stop(proc: subprocess.Popen, status: dict[str, Any], unique_uid: int | None) -> None:
    """Kill whatever is left of a run, then reap the launcher.

    With a pid namespace, the launcher SIGKILLs the namespace's init on SIGUSR1 (the kernel then kills
    every process inside) and reaps it. Without one, SIGKILL the process group, then every process of the
    program's own uid (`kill -9 -1` as that uid), which also reaches children that called setsid().
    """
    if status.get("pid") and proc.poll() is None:
        proc.send_signal(signal.SIGUSR1)
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if unique_uid is not None and not status.get("pid"):
        killer = shutil.which("kill")
        cmd = [killer, "-9", "-1"] if killer else [sys.executable, "-I", "-S", "-c", "import os; os.kill(-1, 9)"]
        for _ in range(2):  # a second pass catches children forked while the first was running
            subprocess.run(cmd, user=unique_uid, group=unique_uid, extra_groups=[], env=SAFE_ENV, check=False)
    proc.wait()


def _wait_exit(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Block until the process exits or the timeout passes; True if it exited.

    A pidfd wakes up the moment the process exits; `Popen.wait(timeout)` instead polls with sleeps of up
    to 50 ms, which costs more than running a typical test program.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        exited = bool(poller.poll(max(0, int(timeout_s * 1000))))
    finally:
        os.close(pidfd)
    if exited:
        proc.wait()
    return exited


def _read_capped(path: Path, cap: int) -> tuple[str, bool]:
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    return data[:cap].decode("utf-8", errors="replace"), len(data) > cap


def run_program(code: str, limits: SandboxLimits = SandboxLimits(), stdin: str = "") -> SandboxResult:
    """Run one program to completion or timeout; never raises for anything the program does."""
    is_root = os.geteuid() == 0
    uid, unique_uid = _UIDS.acquire() if is_root else (None, False)
    run_dir = Path(tempfile.mkdtemp(prefix="layersweep-sandbox-"))
    start = time.monotonic()
    try:
        host_workdir = run_dir / "work"
        host_workdir.mkdir(mode=0o700)
        if uid is not None:
            os.chmod(run_dir, 0o711)  # the uid may traverse to work/ but not list or read the rest
            os.chown(host_workdir, uid, uid)
        (run_dir / "code.py").write_text(code, encoding="utf-8")
        (run_dir / "stdin").write_text(stdin, encoding="utf-8")
        spec = {
            "code_path": str(run_dir / "code.py"),
            "status_path": str(run_dir / "status.json"),
            "host_workdir": str(host_workdir),
            "uid": uid,
            "cpu_s": limits.cpu_seconds,
            "memory_mb": limits.memory_mb,
            "file_size_mb": limits.file_size_mb,
            "max_processes": limits.max_processes,
            "max_open_files": limits.max_open_files,
            "tmpfs_mb": limits.tmpfs_mb,
            "site_packages": _SITE_PACKAGES,
        }
        with open(run_dir / "stdin", "rb") as fin, open(run_dir / "stdout", "wb") as fout, open(
            run_dir / "stderr", "wb"
        ) as ferr:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", LAUNCHER, json.dumps(spec)],
                stdin=fin, stdout=fout, stderr=ferr, cwd=host_workdir, env=SAFE_ENV,
                start_new_session=True, close_fds=True,
            )  # fmt: skip
        try:
            timed_out = not _wait_exit(proc, limits.timeout_s)
        finally:
            isolation = _read_status(run_dir / "status.json")
            _stop(proc, isolation, uid if unique_uid else None)
        duration = time.monotonic() - start
        stdout, cut_out = _read_capped(run_dir / "stdout", limits.max_output_bytes)
        stderr, cut_err = _read_capped(run_dir / "stderr", limits.max_output_bytes)
        error = None if isolation else f"the launcher failed before running the program: {stderr[-500:]!r}"
        return SandboxResult(proc.returncode, stdout, stderr, timed_out, duration, cut_out or cut_err, isolation, error)
    except Exception as exc:  # the sandbox's own failure (fork refused, disk full): the program did not run
        logger.warning("sandbox: could not run a program: %s: %s", type(exc).__name__, exc)
        return SandboxResult(None, "", "", False, time.monotonic() - start, error=f"{type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        if unique_uid and uid is not None:
            _UIDS.release(uid)


def _read_status(path: Path) -> dict[str, Any]:
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not status.get("network"):
        _warn_once(f"sandbox: no private network namespace, programs can reach the network ({status['errors']})")
    if not status.get("mount"):
        _warn_once("sandbox: no private mount namespace, programs can write wherever their uid may")
    if status.get("uid") is None:
        _warn_once("sandbox: not started as root, programs run as the calling user and can read its files")
    return status


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_programs(
    programs: Sequence[str | Program], limits: SandboxLimits = SandboxLimits(), max_workers: int | None = None
) -> list[SandboxResult]:
    """Run programs concurrently, at most `max_workers` (default: usable CPUs) at a time; results in order."""
    items = [p if isinstance(p, Program) else Program(p) for p in programs]
    if not items:
        return []
    workers = max(1, min(len(items), max_workers or default_workers()))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda p: run_program(p.code, limits, p.stdin), items))
