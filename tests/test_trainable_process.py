"""The trial actor's process: its threads, and how it ends when Ray terminates it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from orchestrator.resources import lent_threads

ROOT = Path(__file__).resolve().parent.parent

PROVOKE = textwrap.dedent("""
    import gc, weakref

    class Box:
        pass

    def raise_system_exit(_):  # what Ray's SIGTERM handler does when the signal lands in a GC callback
        raise SystemExit(1)

    def raise_value_error(_):
        raise ValueError("a real bug in a callback")

    first, second = Box(), Box()
    refs = [weakref.ref(first, raise_system_exit), weakref.ref(second, raise_value_error)]
    del first, second
    gc.collect()
    print("still running")
""")


def _run(install_hook: bool) -> subprocess.CompletedProcess:
    prologue = "import sys\nfrom orchestrator.tune_trainable import _drop_unraisable_system_exit\n"
    prologue += "sys.unraisablehook = _drop_unraisable_system_exit\n" if install_hook else ""
    return subprocess.run([sys.executable, "-c", prologue + PROVOKE], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_system_exit_python_cannot_raise_leaves_no_traceback_and_other_errors_still_show():
    plain = _run(install_hook=False)
    assert "SystemExit" in plain.stderr and "ValueError" in plain.stderr  # what the driver's output used to get
    hooked = _run(install_hook=True)
    assert hooked.returncode == 0 and "still running" in hooked.stdout
    assert "SystemExit" not in hooked.stderr
    assert "ValueError: a real bug in a callback" in hooked.stderr


def test_idle_cpus_are_shared_evenly_among_the_running_trials_in_whole_threads():
    assert lent_threads(1, total_cpus=2, free_cpus=0, cpus_per_trial=1) == 1  # both slots busy: nothing to lend
    assert lent_threads(1, total_cpus=2, free_cpus=1, cpus_per_trial=1) == 2  # the last trial takes the idle core
    assert lent_threads(1, total_cpus=16, free_cpus=12, cpus_per_trial=1) == 4  # 4 running share 12: 3 more each
    assert lent_threads(1, total_cpus=16, free_cpus=10, cpus_per_trial=1) == 2  # 6 running: 10 // 6 = 1 more each
    assert lent_threads(2, total_cpus=8, free_cpus=4, cpus_per_trial=2) == 4  # 2 running trials of 2 CPUs: 2 more each
    assert lent_threads(1, total_cpus=2, free_cpus=0.5, cpus_per_trial=0.5) == 1  # 3 half-CPU trials: half a core is no thread


def test_only_the_sweeps_own_empty_slots_are_lent_under_a_concurrency_cap():
    # 16 CPUs, at most 2 trials at a time: the 14 CPUs the cap leaves free stay free while both slots run ...
    assert lent_threads(1, total_cpus=16, free_cpus=14, cpus_per_trial=1, max_concurrent_trials=2) == 1
    # ... and the last trial gets only the one slot its finished neighbour left
    assert lent_threads(1, total_cpus=16, free_cpus=15, cpus_per_trial=1, max_concurrent_trials=2) == 2
    assert lent_threads(1, total_cpus=16, free_cpus=15, cpus_per_trial=1) == 16  # no cap: every idle core
