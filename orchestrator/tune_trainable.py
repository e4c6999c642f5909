"""The Ray Tune adapter: one Tune trial drives one TrialRunner, one RL step per Tune iteration.

The driver runs Tune with reuse_actors: an actor that finished (or early-stopped) a trial takes the next one
through `reset_config`, so a sweep pays process start and imports once per CPU slot, not once per trial.

Only this module and the driver know Ray. Each result is a flat dict of floats plus `step`; the final one
carries the held-out score, so the driver can build the results table from Tune's results alone (no shared
filesystem needed on a cluster).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from orchestrator.config import EarlyStopConfig
from orchestrator.early_stop import SIGNAL
from orchestrator.resources import lent_threads
from orchestrator.results import spec_from_config
from workers.config import TrialConfig

log = logging.getLogger(__name__)


def _drop_unraisable_system_exit(unraisable: Any, _default: Any = sys.unraisablehook) -> None:
    """Ray's SIGTERM handler raises SystemExit. When the signal lands while Python runs a GC callback (often: a
    warm actor still finalizing when the driver shuts Ray down), Python cannot raise it there and prints an
    "Exception ignored ... SystemExit" traceback, which Ray forwards into the driver's output after a sweep's
    last line. The process is being terminated either way (Ray kills it after its grace period), so that
    SystemExit is dropped; every other unraisable exception is reported as before."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, SystemExit):
        return
    _default(unraisable)


LEND_CHECK_S = 5.0
"""Seconds between two looks at the CPUs no trial holds (`resources.lend_idle_cpus`)."""


class LayerTrainable(tune.Trainable):
    """config = {"trial": {"spec": TrialSpec dict, "trial_config": TrialConfig dict, "label": str | None},
    "trials_dir": str, "signal_window": int, "lend_idle_cpus": bool, "max_concurrent_trials": int | None}."""

    def setup(self, config: dict[str, Any]) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # the driver shows trial output: keep vLLM's start-up notes out
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # and the weight-loading bars of every trial start
        logging.getLogger("ray.train").setLevel(logging.WARNING)  # and a "Checkpoint successfully created" line per checkpoint
        sys.unraisablehook = _drop_unraisable_system_exit
        self._start(config)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """The next trial in this warm actor (Tune's reuse_actors): the process, its imports and its threads are
        kept, the previous trial's model, optimizer and engine are closed, and the new trial starts from scratch
        exactly as in a fresh actor."""
        previous, self.runner = self.runner, None
        previous.close()
        del previous  # the old model, optimizer and engine go before the next trial loads its own
        gc.collect()
        self._start(new_config)
        return True

    def _start(self, config: dict[str, Any]) -> None:
        spec = spec_from_config(config)
        cfg = TrialConfig.model_validate(config["trial"]["trial_config"])
        required = self.trial_resources.required_resources if self.trial_resources else {}
        self.cpus_per_trial = float(required.get("CPU", 1.0))
        self.own_threads = int(max(1, self.cpus_per_trial))
        from workers.runner import TrialRunner  # here, not at the top: the driver imports this module too

        self.runner = TrialRunner(cfg, spec, Path(config["trials_dir"]) / spec.name, num_threads=self.own_threads)
        self.lends = bool(config.get("lend_idle_cpus", False)) and cfg.num_threads is None and not required.get("GPU")
        """Whether this trial takes idle CPUs as extra threads (CPU trials whose thread count is not pinned)."""
        self.max_concurrent_trials: int | None = config.get("max_concurrent_trials")
        self.next_lend_check = time.monotonic()
        self.node = ray.get_runtime_context().get_node_id()
        """The Ray node this attempt runs on; reported with every result (a retried trial may move)."""
        self.recent_rewards: deque[float] = deque(maxlen=int(config.get("signal_window", EarlyStopConfig().smoothing_steps)))
        """The latest training rewards: their mean is the running signal early stopping compares."""
        self.restored_at_step: int | None = None
        """The checkpoint step this attempt resumed from (None: it started from scratch)."""

    def step(self) -> dict[str, Any]:
        runner = self.runner
        if runner.done:  # base trial, or a restored trial whose training had finished
            return self._final({"step": runner.step})
        self._take_idle_cpus()
        record = {**runner.advance(), "threads": torch.get_num_threads()}
        self.recent_rewards.append(float(record["reward_mean"]))
        if runner.done:
            return self._final(record)
        return {**record, **self._signal(), "trial_name": runner.spec.name, "node": self.node}

    def _take_idle_cpus(self) -> None:
        """Every LEND_CHECK_S, on a one-node cluster: run on this trial's own CPUs plus its share of the CPUs no
        trial holds (`lent_threads`); back to its own when other trials take them again. Ray's accounting is
        untouched, so a waiting trial still starts as soon as a CPU frees up."""
        now = time.monotonic()
        if not self.lends or now < self.next_lend_check:
            return
        self.next_lend_check = now + LEND_CHECK_S
        threads = self.own_threads
        try:
            if sum(1 for node in ray.nodes() if node.get("Alive")) == 1:
                threads = lent_threads(self.own_threads, ray.cluster_resources().get("CPU", 0.0),
                                       ray.available_resources().get("CPU", 0.0), self.cpus_per_trial,
                                       self.max_concurrent_trials)
        except Exception as error:  # noqa: BLE001 - a control-plane hiccup must not fail the trial: run on its own CPUs
            log.warning("lend_idle_cpus: Ray's resource view failed (%s); running on this trial's own CPUs", error)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    def _signal(self) -> dict[str, float]:
        """The running signal early stopping compares: the mean of the latest training rewards (0 before any)."""
        return {SIGNAL: sum(self.recent_rewards) / len(self.recent_rewards) if self.recent_rewards else 0.0}

    def _final(self, record: dict[str, Any]) -> dict[str, Any]:
        final = dict(self.runner.finish())
        final.pop("spec")
        return {**record, **final, **self._signal(), "trial_name": self.runner.spec.name, "node": self.node,
                "restored_at_step": self.restored_at_step, "done": True}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        self.runner.save(Path(checkpoint_dir))

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.runner.restore(Path(checkpoint_dir))
        self.restored_at_step = self.runner.step

    def cleanup(self) -> None:
        self.runner.close()
