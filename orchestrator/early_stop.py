"""Early-stopped sweeps: successive halving (Ray Tune's ASHA) over the layer trials only.

Every layer trial reports a running signal each step (the moving mean of its training reward); at steps
grace, grace·η, grace·η², … ASHA stops the trials whose signal is below the top 1/η of those that reached
that step. The base evaluation and the full-parameter reference always run to the end: they are the two
ends of the contribution scale. A stopped trial has no held-out score; it is reported as `stopped`, never
ranked.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from orchestrator.config import EarlyStopConfig
from orchestrator.results import spec_from_config

SIGNAL = "reward_moving_mean"
"""The result key ASHA compares (see workers.runner.TrialRunner.advance)."""


class LayerTrialsASHA(AsyncHyperBandScheduler):
    """ASHA that never stops base or full-parameter trials (nor trained sets)."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if spec_from_config(trial.config).kind != "layers":
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def layer_scheduler(cfg: EarlyStopConfig, steps: int) -> LayerTrialsASHA:
    return LayerTrialsASHA(time_attr="step", metric=SIGNAL, mode="max", max_t=steps, grace_period=cfg.grace_steps,
                           reduction_factor=cfg.reduction_factor)
