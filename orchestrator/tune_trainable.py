"""The Ray Tune adapter: one Tune trial (one actor) drives one LayerTrial, one RL step per Tune iteration.

Only this module and the driver know Ray. Each result is a flat dict of floats plus `step`; the final one
carries the held-out score, so the driver can build the results table from Tune's results alone (no shared
filesystem needed on a cluster).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ray import tune

from workers.checkpoint import load_checkpoint, save_checkpoint
from workers.config import TrialConfig
from workers.metrics_log import MetricsLog
from workers.runner import METRICS_FILE, advance, finish
from orchestrator.results import spec_from_config
from workers.trial import LayerTrial

log = logging.getLogger(__name__)


class LayerTrainable(tune.Trainable):
    """config = {"trial": {"spec": TrialSpec dict, "trial_config": TrialConfig dict}, "trials_dir": str}."""

    def setup(self, config: dict[str, Any]) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.spec = spec_from_config(config)
        self.cfg = TrialConfig.model_validate(config["trial"]["trial_config"])
        self.trial_dir = Path(config["trials_dir"]) / self.spec.name
        self.trial_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsLog(self.trial_dir / METRICS_FILE)
        cpus = int(max(1, self.trial_resources.required_resources.get("CPU", 1))) if self.trial_resources else 1
        self.trial = LayerTrial(self.cfg, self.spec)
        self.trial.setup(num_threads=cpus)
        self._log_aligned = False

    def step(self) -> dict[str, Any]:
        trial = self.trial
        if not self._log_aligned:  # after setup (and a possible checkpoint restore): drop steps past this point
            self.metrics.truncate_after(trial.step)
            self._log_aligned = True
        if trial.done:  # base trial, or a restored trial whose training had finished
            return self._final({"step": trial.step})
        record = advance(trial, self.trial_dir, self.metrics)
        if trial.done:
            return self._final(record)
        return {**record, "trial_name": self.spec.name}

    def _final(self, record: dict[str, Any]) -> dict[str, Any]:
        final = dict(finish(self.trial, self.trial_dir))
        final.pop("spec")
        return {**record, **final, "trial_name": self.spec.name, "done": True}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        save_checkpoint(Path(checkpoint_dir), self.trial.state_dict())

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.trial.load_state_dict(load_checkpoint(Path(checkpoint_dir)))
        log.info("%s: restored at step %d", self.spec.name, self.trial.step)

    def cleanup(self) -> None:
        self.trial.close()
