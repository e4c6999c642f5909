"""Joining or starting Ray for a sweep, kept apart from the driver (no Tune, no model code) so the CLI can start
Ray first and let Ray's worker processes import the trial code while the driver imports its own.

A local Ray prestarts one worker process per CPU. With `preload`, each of them imports the trial code
(`PRELOADED_MODULES`: torch, transformers, the rollout engines, Tune) before it takes work, so the first trial
actors start warm instead of spending seconds on imports after the driver has finished its own set-up.
"""

from __future__ import annotations

import os

import ray

from orchestrator.config import ResourcesConfig

PRELOADED_MODULES = ("orchestrator.tune_trainable",)
"""What a trial actor imports: LayerTrainable and, through it, the worker and rollout packages."""

_dashboard_url: str | None = None


def start_ray(address: str | None, include_dashboard: bool = True, preload: bool = True) -> str | None:
    """Connect to (or start) Ray; returns the dashboard URL when a dashboard is up (also on a second call).
    `preload` applies to a Ray started here; a cluster's nodes are configured where they are started."""
    global _dashboard_url
    if ray.is_initialized():
        return _dashboard_url
    address = address or os.environ.get("RAY_ADDRESS")
    # Save Tune's experiment state every second (default: >= 10 s), so a driver killed right after a trial
    # finished does not make `layersweep resume` run that trial again.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # lets the local dashboard's /api answer without a token
    if address:
        context = ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)
    else:  # trials' own output (warnings, tracebacks) reaches this driver, hence `ray job logs`
        options = dict(include_dashboard=include_dashboard, ignore_reinit_error=True, log_to_driver=True)
        try:
            system_config = {"preload_python_modules": list(PRELOADED_MODULES)} if preload else None
            context = ray.init(**options, _system_config=system_config)
        except ValueError as error:  # a `ray start` cluster on this machine is joined instead: its config is its own
            if "_system_config must not be provided" not in str(error):
                raise
            context = ray.init(**options)
    url = getattr(context, "dashboard_url", None)
    _dashboard_url = f"http://{url}" if url and not url.startswith("http") else url
    return _dashboard_url


def preload_fits(resources: ResourcesConfig) -> bool:
    """Preload only where the prestarted workers (one per CPU of this machine) will all run trials: CPU trials of
    at most one CPU, with no cap on concurrency below the CPU count. Otherwise most of them would sit idle holding
    torch in memory."""
    cpus = os.cpu_count() or 1
    concurrency = resources.max_concurrent_trials
    return resources.cpus_per_trial <= 1 and resources.gpus_per_trial == 0 and (concurrency is None or concurrency >= cpus)
