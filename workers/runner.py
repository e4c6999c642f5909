"""Drive one LayerTrial to completion in this process: metrics JSON lines, checkpoints, resume, score file.

Used by `layersweep trial` and, step by step, mirrored by the Ray Tune trainable.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from workers.checkpoint import load_checkpoint, save_checkpoint
from workers.config import TrialConfig
from workers.metrics_log import MetricsLog
from workers.spec import TrialSpec
from workers.trial import LayerTrial

log = logging.getLogger(__name__)

SCORE_FILE = "score.json"
METRICS_FILE = "metrics.jsonl"


def maybe_inject_fault(cfg: TrialConfig, step: int, trial_dir: Path) -> None:
    """Test hook: kill this process at `fail_at_step`, once per trial (a marker file prevents a second time)."""
    if cfg.fail_at_step is None or step != cfg.fail_at_step:
        return
    marker = trial_dir / f"fault_injected_at_{step}"
    if marker.exists():
        return
    marker.write_text("1")
    log.warning("fault injection: exiting the trial process at step %d", step)
    os._exit(13)


def final_record(trial: LayerTrial, evaluation: dict[str, float]) -> dict[str, Any]:
    checksum = trial.trainable_checksum()
    return {
        "spec": trial.spec.to_dict(),
        "trial": trial.spec.name,
        "num_layers": trial.num_layers,
        "steps": trial.step,
        "trainable_parameters": sum(p.numel() for p in trial.trainable.values()),
        "trainable_checksum": checksum,
        "learned": trial.learned(checksum),
        **evaluation,
    }


def advance(trial: LayerTrial, trial_dir: Path, metrics: MetricsLog) -> dict[str, Any]:
    """One RL step (with the optional periodic evaluation), appended to the metrics log."""
    cfg = trial.cfg
    maybe_inject_fault(cfg, trial.step + 1, trial_dir)
    record = trial.train_step()
    if cfg.eval.every_steps and trial.step % cfg.eval.every_steps == 0 and not trial.done:
        record.update({f"eval_{k}": v for k, v in trial.evaluate().items()})
    metrics.append(record)
    return record


def finish(trial: LayerTrial, trial_dir: Path) -> dict[str, Any]:
    """Held-out evaluation of the trained weights, written to score.json."""
    result = final_record(trial, trial.evaluate())
    (trial_dir / SCORE_FILE).write_text(json.dumps(result, indent=2))
    return result


def run_trial(
    cfg: TrialConfig,
    spec: TrialSpec,
    trial_dir: Path,
    on_metrics: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    trial_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(trial_dir / METRICS_FILE)
    trial = LayerTrial(cfg, spec)
    trial.setup()
    checkpoint_dir = trial_dir / "checkpoint"
    if (checkpoint_dir / "trial_state.pt").exists():
        trial.load_state_dict(load_checkpoint(checkpoint_dir))
        log.info("%s: resumed from step %d", spec.name, trial.step)
    metrics.truncate_after(trial.step)
    try:
        while not trial.done:
            record = advance(trial, trial_dir, metrics)
            if on_metrics:
                on_metrics(record)
            if cfg.checkpoint_every and trial.step % cfg.checkpoint_every == 0:
                save_checkpoint(checkpoint_dir, trial.state_dict())
        return finish(trial, trial_dir)
    finally:
        trial.close()
