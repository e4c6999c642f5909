"""Joining or starting Ray for a sweep, kept apart from the driver (no Tune, no model code), so the CLI can start
Ray before it imports the driver.

No worker is preloaded with the trial code: Ray hands an actor only a worker started with the actor's runtime
env and never a worker that already ran a task, and Ray Tune gives every trial actor its own env (a few env
vars), so neither the workers a local Ray prestarts at boot nor warm-up tasks can become trial actors. Both were
measured (raylet log: two new workers at the first trial, the warmed ones disconnected idle): preloading only
spent 6-15 CPU-seconds of a 2-core machine during start-up.
"""

from __future__ import annotations

import os

import ray

_dashboard_url: str | None = None


def start_ray(address: str | None, include_dashboard: bool = True) -> str | None:
    """Connect to (or start) Ray; returns the dashboard URL when a dashboard is up (also on a second call)."""
    global _dashboard_url
    if ray.is_initialized():
        return _dashboard_url
    address = address or os.environ.get("RAY_ADDRESS")
    # Save Tune's experiment state every second (default: >= 10 s), so a driver killed right after a trial
    # finished does not make `layersweep resume` run that trial again.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # lets the local dashboard's /api answer without a token
    # trials' own output (warnings, tracebacks) reaches this driver, hence `ray job logs`
    if address:
        context = ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)
    else:
        context = ray.init(include_dashboard=include_dashboard, ignore_reinit_error=True, log_to_driver=True)
    url = getattr(context, "dashboard_url", None)
    _dashboard_url = f"http://{url}" if url and not url.startswith("http") else url
    return _dashboard_url
