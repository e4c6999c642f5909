"""The one trial loop: a TrialRunner owns a LayerTrial's step / evaluate / save / restore / finish and its files.

`layersweep trial` calls `run_trial` (the whole loop in this process); the Ray Tune trainable calls the same
runner one step per Tune iteration and lets Tune decide when to checkpoint. Either way the trial directory
holds `metrics.jsonl` (one line per step, cut back to the restored step on resume) and, at the end,
`score.json` and `trained.safetensors` (the tensors that trained, nothing else).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from safetensors.torch import save_file

from workers.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from workers.config import TrialConfig
from workers.metrics_log import MetricsLog
from workers.spec import TrialSpec
from workers.trial import LayerTrial
from workers.trial_files import CHECKPOINT_DIR, METRICS_FILE, SCORE_FILE, TRAINED_FILE

log = logging.getLogger(__name__)



class TrialRunner:
    """One trial and its directory. Construct, optionally `restore`, then `advance` until `done`, then `finish`."""

    def __init__(self, cfg: TrialConfig, spec: TrialSpec, trial_dir: Path, num_threads: int | None = None) -> None:
        self.cfg, self.spec, self.trial_dir = cfg, spec, trial_dir
        trial_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsLog(trial_dir / METRICS_FILE)
        self.trial = LayerTrial(cfg, spec)
        self.trial.setup(num_threads=num_threads)
        self._log_aligned = False

    @property
    def done(self) -> bool:
        return self.trial.done

    @property
    def step(self) -> int:
        return self.trial.step

    def save(self, checkpoint_dir: Path) -> None:
        save_checkpoint(checkpoint_dir, self.trial.state_dict())

    def restore(self, checkpoint_dir: Path) -> None:
        self.trial.load_state_dict(load_checkpoint(checkpoint_dir))
        log.info("%s: restored at step %d", self.spec.name, self.trial.step)

    def _align_log(self) -> None:
        """Once, after setup and any restore: drop logged steps past the restored step (they will be redone)."""
        if not self._log_aligned:
            self.metrics.truncate_after(self.trial.step)
            self._log_aligned = True

    def advance(self) -> dict[str, Any]:
        """One RL step (plus the periodic evaluation when due), appended to the metrics log."""
        self._align_log()
        trial, cfg = self.trial, self.cfg
        self._maybe_inject_fault(trial.step + 1)
        record = trial.train_step()
        if cfg.eval.every_steps and trial.step % cfg.eval.every_steps == 0 and not trial.done:
            record.update({f"eval_{k}": v for k, v in trial.evaluate().items()})
        self.metrics.append(record)
        return record

    def finish(self) -> dict[str, Any]:
        """Held-out evaluation of the trained weights, written to score.json and returned; the trained tensors
        go to trained.safetensors."""
        self._align_log()
        trial = self.trial
        checksum = trial.trainable_checksum()
        result = {
            "spec": self.spec.to_dict(),
            "trial": self.spec.name,
            "num_layers": trial.num_layers,
            "steps": trial.step,
            "trainable_parameters": sum(p.numel() for p in trial.trainable.values()),
            "trainable_checksum": checksum,
            "learned": trial.learned(checksum),
            **trial.evaluate(),
        }
        if trial.trainable:  # after the evaluation succeeded, under a temporary name: a file here is a finished trial's
            staging = self.trial_dir / (TRAINED_FILE + ".tmp")
            save_file({name: p.detach().contiguous() for name, p in trial.trainable.items()}, str(staging),
                      metadata={"trial": self.spec.name, "checksum": checksum, "base_checksum": trial.initial_checksum})
            staging.replace(self.trial_dir / TRAINED_FILE)
        (self.trial_dir / SCORE_FILE).write_text(json.dumps(result, indent=2))
        return result

    def close(self) -> None:
        self.trial.close()

    def _maybe_inject_fault(self, step: int) -> None:
        """Test hook: kill this process at `fail_at_step`, once per trial (a marker file prevents a second time)."""
        if self.cfg.fail_at_step is None or step != self.cfg.fail_at_step:
            return
        marker = self.trial_dir / f"fault_injected_at_{step}"
        if marker.exists():
            return
        marker.write_text("1")
        log.warning("fault injection: exiting the trial process at step %d", step)
        os._exit(13)


def run_trial(
    cfg: TrialConfig,
    spec: TrialSpec,
    trial_dir: Path,
    on_metrics: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The whole trial in this process, resuming from `<trial_dir>/checkpoint` when one exists and saving
    there every `checkpoint_every` steps."""
    runner = TrialRunner(cfg, spec, trial_dir)
    checkpoint_dir = trial_dir / CHECKPOINT_DIR
    try:
        if has_checkpoint(checkpoint_dir):
            runner.restore(checkpoint_dir)
        while not runner.done:
            record = runner.advance()
            if on_metrics:
                on_metrics(record)
            if cfg.checkpoint_every and runner.step % cfg.checkpoint_every == 0:
                runner.save(checkpoint_dir)
        return runner.finish()
    finally:
        runner.close()
