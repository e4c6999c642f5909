"""Hostile model-written programs must score 0 and leave the host untouched.

Each hostile program is a code-task completion that first attempts an escape and defines the tested
function only if the escape worked, so reward 1 means isolation failed. All of them run once, side by
side in the sandbox pool (module fixture); each test then checks one attack's reward, the evidence on
the host (canary file, loopback listener, leftover processes, secrets) and the time it took. Hostile
programs stop themselves at a few hundred processes and only ever target 127.0.0.1, so a sandbox
failure cannot take the machine down or reach the network.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest

from rollout.sandbox import SandboxLimits, SandboxResult, run_programs
from rollout.tasks.code_task import build_program, score
from rollout.sandbox import Program

TIMEOUT_S = 3.0
LIMITS = SandboxLimits(timeout_s=TIMEOUT_S)
MAX_WALL_S = TIMEOUT_S + 5.0
"""Worst case for one hostile program: the timeout plus the kill and cleanup."""
TESTS = {"test_list": ["assert add(1, 2) == 3"]}
IS_ROOT = os.geteuid() == 0
ESCAPED = "\nif hits:\n    def add(a, b):\n        return a + b\n    import sys; print('escaped:', hits, file=sys.stderr)\n"

HOSTILE = {
    "files": """
import os, shutil
hits = []
attempts = {
    "overwrite canary": lambda: open({canary!r}, "w").write("overwritten"),
    "delete canary": lambda: os.remove({canary!r}),
    "delete canary dir": lambda: shutil.rmtree({canary_dir!r}),
    "write host tmp": lambda: open({host_tmp!r}, "w").write("x"),
    "write repo": lambda: open({repo_file!r}, "w").write("x"),
}
for name, attempt in attempts.items():
    try:
        attempt()
        if name != "write host tmp":  # the private /tmp accepts it; the test checks the host's /tmp
            hits.append(name)
    except Exception:
        pass
""",
    "network": """
import socket
hits = []
try:
    s = socket.create_connection(("127.0.0.1", {port}), timeout=1.0)
    s.sendall(b"escaped")
    hits.append("tcp connect")
except OSError:
    pass
""",
    "fork": """
import os, time
hits, children = [], 0
for _ in range(300):  # bounded by the program itself: a sandbox failure cannot exhaust the host
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        try:
            os.setsid()  # try to leave the process group the sandbox kills
        except OSError:
            pass
        time.sleep(60)
        os._exit(0)
    children += 1
if children >= 300:
    hits.append("forked %d" % children)
else:
    time.sleep(60)  # leave the children running; the sandbox must kill them all
""",
    "sleep": """
import time
time.sleep(10 ** 6)
hits = ["slept"]
""",
    "memory": """
hits = []
try:
    block = bytearray(10 * 2 ** 30)
    hits.append("allocated %d bytes" % len(block))
except MemoryError:
    pass
""",
    "output": """
import os
hits = []
chunk = b"x" * 2 ** 20
try:
    for _ in range(1024):
        os.write(1, chunk)
    hits.append("printed 1 GB")
except OSError:
    pass
""",
    "kill_parent": """
import os, signal
hits = []
for pid in ({caller_pid}, os.getppid()):
    if pid in (0, os.getpid()):
        continue
    try:
        os.kill(pid, signal.SIGKILL)
        hits.append("killed %d" % pid)
    except OSError:
        pass
""",
    "secrets": """
import os
hits = []
secret = {secret!r}
if any(secret in value for value in os.environ.values()):
    hits.append("env")
for path in ("/proc/{caller_pid}/environ", "/proc/1/environ", "/proc/self/environ"):
    try:
        with open(path, "rb") as f:
            if secret.encode() in f.read():
                hits.append(path)
    except OSError:
        pass
print(hits, secret if hits else "")
""",
}


def _fill(template: str, values: dict) -> str:
    """`{key}` -> str(value), `{key!r}` -> repr(value); other braces (dict literals) stay."""
    for key, value in values.items():
        template = template.replace("{%s!r}" % key, repr(value)).replace("{%s}" % key, str(value))
    return template


def _uid_processes(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            if int(uid_line.split()[1]) == uid:
                pids.append(int(entry))
    return pids


class _Listener:
    """A loopback TCP server that records every connection it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """{attack: (reward, SandboxResult, wall seconds of the whole batch)} plus the host-side evidence."""
    canary_dir = tmp_path_factory.mktemp("canary")
    canary = canary_dir / "canary.txt"
    canary.write_text("original")
    os.chmod(canary_dir, 0o777)  # world-writable: only the sandbox's isolation protects it
    os.chmod(canary, 0o666)
    listener = _Listener()
    secret = "fake-secret-" + secrets.token_hex(8)
    os.environ["LAYERSWEEP_TEST_SECRET"] = secret
    values = {
        "canary": str(canary), "canary_dir": str(canary_dir), "port": listener.port, "secret": secret,
        "host_tmp": f"/tmp/layersweep-escape-{secrets.token_hex(4)}", "caller_pid": os.getpid(),
        "repo_file": str(Path(__file__).resolve().parent / f"escape-{secrets.token_hex(4)}.txt"),
    }  # fmt: skip
    attacks = [a for a in HOSTILE if IS_ROOT or a not in ("files", "kill_parent")]
    programs, nonces = [], []
    for attack in attacks:
        nonce = secrets.token_hex(16)
        code, _ = build_program("```python\n" + _fill(HOSTILE[attack], values) + ESCAPED + "```", TESTS)
        programs.append(Program(code, stdin=nonce + "\n"))
        nonces.append(nonce)
    start = time.monotonic()
    try:
        results = run_programs(programs, LIMITS, max_workers=len(programs))
    finally:
        wall = time.monotonic() - start
        del os.environ["LAYERSWEEP_TEST_SECRET"]
        listener.close()
    out = {a: (score(r, n, 1, False), r) for a, r, n in zip(attacks, results, nonces)}
    yield {"results": out, "wall": wall, "listener": listener, "values": values, "canary": canary}


def _check(outcomes, attack: str) -> SandboxResult:
    if attack not in outcomes["results"]:
        pytest.skip("needs root: without it the program runs as the calling user")
    reward, result = outcomes["results"][attack]
    assert result.error is None, result.error
    assert reward == 0.0, f"{attack}: isolation failed: {result.stderr[-500:]}"
    assert "escaped: [" not in result.stderr
    assert result.duration_s < MAX_WALL_S
    return result


def test_whole_batch_is_bounded(outcomes):
    assert outcomes["wall"] < MAX_WALL_S + 5.0


@pytest.mark.skipif(not IS_ROOT, reason="file isolation needs root (uid drop + mount namespace)")
def test_files_outside_the_sandbox_are_untouched(outcomes):
    _check(outcomes, "files")
    assert outcomes["canary"].read_text() == "original"
    assert not Path(outcomes["values"]["host_tmp"]).exists()
    assert not Path(outcomes["values"]["repo_file"]).exists()


def test_loopback_tcp_is_unreachable(outcomes):
    _check(outcomes, "network")
    assert outcomes["listener"].connections == 0


def test_fork_bomb_is_capped_and_every_process_killed(outcomes):
    result = _check(outcomes, "fork")
    assert result.timed_out
    if result.isolation.get("uid") is not None:
        assert _uid_processes(result.isolation["uid"]) == []


def test_sleep_forever_is_killed_at_the_timeout(outcomes):
    result = _check(outcomes, "sleep")
    assert result.timed_out
    assert TIMEOUT_S <= result.duration_s < TIMEOUT_S + 3.0


def test_10gb_allocation_fails(outcomes):
    result = _check(outcomes, "memory")
    assert not result.timed_out


def test_1gb_of_output_is_capped(outcomes):
    result = _check(outcomes, "output")
    assert len(result.stdout.encode()) <= LIMITS.max_output_bytes
    assert result.truncated


@pytest.mark.skipif(not IS_ROOT, reason="without a uid of its own the program could signal the caller")
def test_signalling_the_parent_fails(outcomes):
    _check(outcomes, "kill_parent")
    assert os.getpid() == outcomes["values"]["caller_pid"]  # still here


def test_secrets_in_the_callers_environment_stay_hidden(outcomes):
    result = _check(outcomes, "secrets")
    secret = outcomes["values"]["secret"]
    assert secret not in result.stdout and secret not in result.stderr


def test_isolation_report_when_root(outcomes):
    if not IS_ROOT:
        pytest.skip("root-only isolation")
    _, result = outcomes["results"]["network"]
    assert result.isolation["network"] and result.isolation["uid"] is not None


UNPRIVILEGED_SCRIPT = """
import json, sys
sys.path.insert(0, {repo!r})
from rollout.sandbox import run_program
code = '''
import os, socket
hits = []
for attempt in (lambda: socket.create_connection(("127.0.0.1", 9), timeout=1),
                lambda: open({repo_file!r}, "w"),
                lambda: os.kill({caller_pid}, 9)):
    try:
        attempt()
        hits.append(1)
    except OSError:
        pass
print(len(hits), len(os.listdir("/proc")) < 80)
'''
r = run_program(code)
print(json.dumps({{"stdout": r.stdout, "stderr": r.stderr, "isolation": r.isolation}}))
"""


def test_unprivileged_caller_still_gets_namespaces():
    """The non-root path (a user namespace carrying net / mount / pid namespaces), run as `nobody`."""
    import json
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    python, setpriv = shutil.which("python3", path="/usr/bin:/bin"), shutil.which("setpriv")
    reachable = repo.stat().st_mode & 0o005 == 0o005 and all(p.stat().st_mode & 0o001 for p in repo.parents)
    if not IS_ROOT or not python or not setpriv or not reachable:
        pytest.skip("needs root, setpriv and a system python3 that `nobody` can run on a world-readable repo "
                    "whose parent directories it can traverse")
    script = UNPRIVILEGED_SCRIPT.format(repo=str(repo), repo_file=str(repo / "escape.txt"), caller_pid=os.getpid())
    done = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", script],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    if done.returncode != 0 and "SyntaxError" in done.stderr:
        pytest.skip(f"system python too old: {done.stderr[-200:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if not report["isolation"].get("userns"):
        pytest.skip(f"unprivileged user namespaces are refused here: {report['isolation'].get('errors')}")
    assert report["isolation"]["network"] and report["isolation"]["mount"] and report["isolation"]["pid"]
    assert report["stdout"].split() == ["0", "True"], report
    assert not (repo / "escape.txt").exists()
