"""The Ray Tune adapter: one Tune trial (one actor) drives one TrialRunner, one RL step per Tune iteration.

Only this module and the driver know Ray. Each result is a flat dict of floats plus `step`; the final one
carries the held-out score, so the driver can build the results table from Tune's results alone (no shared
filesystem needed on a cluster).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray import tune

from orchestrator.results import spec_from_config
from workers.config import TrialConfig
from workers.runner import TrialRunner


class LayerTrainable(tune.Trainable):
    """config = {"trial": {"spec": TrialSpec dict, "trial_config": TrialConfig dict}, "trials_dir": str}."""

    def setup(self, config: dict[str, Any]) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        spec = spec_from_config(config)
        cfg = TrialConfig.model_validate(config["trial"]["trial_config"])
        cpus = int(max(1, self.trial_resources.required_resources.get("CPU", 1))) if self.trial_resources else 1
        self.runner = TrialRunner(cfg, spec, Path(config["trials_dir"]) / spec.name, num_threads=cpus)

    def step(self) -> dict[str, Any]:
        runner = self.runner
        if runner.done:  # base trial, or a restored trial whose training had finished
            return self._final({"step": runner.step})
        record = runner.advance()
        if runner.done:
            return self._final(record)
        return {**record, "trial_name": runner.spec.name}

    def _final(self, record: dict[str, Any]) -> dict[str, Any]:
        final = dict(self.runner.finish())
        final.pop("spec")
        return {**record, **final, "trial_name": self.runner.spec.name, "done": True}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        self.runner.save(Path(checkpoint_dir))

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.runner.restore(Path(checkpoint_dir))

    def cleanup(self) -> None:
        self.runner.close()
