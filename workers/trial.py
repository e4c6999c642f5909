"""One trial: RL with a chosen trainable set, in coarse steps (setup / train_step / evaluate / state I/O).

workers.runner.TrialRunner drives it for both the `layersweep trial` command and the Ray Tune trainable, so
a sweep trial and a hand-run trial execute identical code. Every trial of a sweep shares model, data order,
rollout seeds and budget; only the trainable set differs.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rollout.engine import RolloutEngine
from rollout.factory import build_engine
from rollout.tasks.base import MultiTurnTask, Task, is_multi_turn
from rollout.tasks.registry import build_task
from workers.base_model import load_model_and_tokenizer, resolve_model_dir
from workers.checkpoint import rng_state, set_rng_state, tensors_checksum
from workers.collect import Collected, build_collector
from workers.config import TrialConfig
from workers.policy import PolicyScorer
from workers.reference import ReferenceWeights
from workers.spec import TrialSpec
from workers.trainable import select_trainable
from workers.update import NonFiniteLossError, build_adamw, policy_update


class LayerTrial:
    def __init__(self, cfg: TrialConfig, spec: TrialSpec) -> None:
        self.cfg = cfg
        self.spec = spec
        self.step = 0

    # -- lifecycle -------------------------------------------------------------------------------------
    def setup(self, num_threads: int | None = None) -> None:
        cfg = self.cfg
        torch.set_num_threads(cfg.num_threads or num_threads or torch.get_num_threads())
        self.model_dir = resolve_model_dir(cfg)
        self.model, self.tokenizer = load_model_and_tokenizer(self.model_dir, cfg.model.dtype)
        self.task: Task | MultiTurnTask = build_task(cfg.task, self.tokenizer)
        self.selection = select_trainable(self.model, self.spec)
        params = dict(self.model.named_parameters())
        self.trainable = {name: params[name] for name in self.selection.parameter_names}
        self.num_layers = self.selection.layout.num_layers
        lr = cfg.optim.lr_for(self.spec.kind)
        self.optimizer = build_adamw(list(self.trainable.values()) or [torch.nn.Parameter(torch.zeros(1))], lr,
                                     cfg.optim.betas, cfg.optim.weight_decay)
        warmup = max(cfg.optim.warmup_steps, 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup))
        self.reference = ReferenceWeights(self.model, self.selection.parameter_names) if cfg.algorithm.kl_beta > 0 else None
        self.scorer = PolicyScorer(self.model, self.selection.layout, self.selection.lowest_layer, cfg.rollout.temperature,
                                   group_size=cfg.rollout.group_size)
        self.engine: RolloutEngine = build_engine(cfg.rollout, self.model, self.tokenizer, Path(self.model_dir), self.cfg.seed)
        eval_examples = [] if is_multi_turn(self.task) else list(self.task.eval_examples())
        if cfg.eval.num_prompts:
            eval_examples = eval_examples[: cfg.eval.num_prompts]
        self.collector = build_collector(self.task, self.engine, cfg, eval_examples, self.tokenizer.pad_token_id)
        self.records_prefix = (self.scorer.reuses_generation_prefix and not is_multi_turn(self.task)
                               and getattr(self.engine, "model", None) is self.model)
        """Whether each step keeps the hidden states generation computed below the trainable layer, so the update
        runs no prefix pass: single-turn rollouts (one generate call per batch) from an engine sampling with the
        trainer's own module (HF `generate`; vLLM holds its own copy)."""
        self.initial_checksum = self.trainable_checksum()
        self.signal_steps = 0
        """Steps whose batch had a non-zero advantage: the update had something to learn from."""
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)

    @property
    def total_steps(self) -> int:
        return 0 if self.spec.kind == "base" else self.cfg.budget.steps

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    # -- training --------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, Any]:
        cfg = self.cfg
        started = time.perf_counter()
        collected = self._collect()
        rollout_seconds = time.perf_counter() - started
        update_started = time.perf_counter()
        self.engine.sleep()  # frees the engine's GPU memory for the update when configured; update_weights wakes it
        try:
            stats = policy_update(
                self.scorer,
                self.optimizer,
                list(self.trainable.values()),
                collected.batch,
                cfg.algorithm,
                cfg.rollout.max_new_tokens,
                cfg.optim.max_grad_norm,
                self.reference,
            )
        except NonFiniteLossError as error:
            raise NonFiniteLossError(f"step {self.step + 1}: {error}; trial stopped, earlier steps are kept") from None
        self.scheduler.step()
        sync = self.engine.update_weights(self.trainable.items())
        update_seconds = time.perf_counter() - update_started
        self.step += 1
        self.signal_steps += int(collected.metrics.get("nonzero_advantage_rows", 1.0) > 0)
        seconds = time.perf_counter() - started
        tokens = float(collected.batch.inputs.completion_mask_NT.sum())
        return {
            "step": self.step,
            **collected.metrics,
            "tokens_per_second": tokens / seconds,
            "step_seconds": seconds,
            "rollout_seconds": rollout_seconds,
            "update_seconds": update_seconds,
            "lr": self.scheduler.get_last_lr()[0],
            **stats,
            **sync,
        }

    def _collect(self) -> Collected:
        if not self.records_prefix:
            return self.collector.collect(self.step, self.cfg.seed)
        with self.scorer.recording_prefix() as recorded:
            collected = self.collector.collect(self.step, self.cfg.seed)
        collected.batch.prefix_hidden_NLH = recorded.hidden_for(collected.batch.inputs, self.cfg.rollout.group_size)
        return collected

    # -- evaluation ------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        started = time.perf_counter()
        result = self.collector.evaluate(self.engine)
        result["eval_seconds"] = time.perf_counter() - started
        return result

    # -- state -----------------------------------------------------------------------------------------
    def trainable_checksum(self) -> str:
        return tensors_checksum(self.trainable)

    def learned(self, checksum: str) -> bool | None:
        """Whether training moved the weights with a learning signal: some step had a non-zero advantage and
        the trainable tensors (`checksum`, this trial's `trainable_checksum()`) differ from the base's. None for
        the base evaluation, which trains nothing."""
        if self.spec.kind == "base":
            return None
        return self.signal_steps > 0 and checksum != self.initial_checksum

    def state_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "step": self.step,
            "trainable": {name: p.detach().clone() for name, p in self.trainable.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "signal_steps": self.signal_steps,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if TrialSpec.from_dict(state["spec"]) != self.spec:
            raise ValueError(f"checkpoint is for trial {state['spec']}, not {self.spec.to_dict()}")
        for name, value in state["trainable"].items():
            self.trainable[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.signal_steps = int(state.get("signal_steps", self.step))
        self.engine.update_weights(self.trainable.items())

    def close(self) -> None:
        self.engine.close()
