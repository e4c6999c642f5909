"""Config sections owned by the trial: model, algorithm, optimiser, budget, evaluation; and the TrialConfig tree.

The orchestrator's SweepConfig extends TrialConfig with sweep-only sections, so one YAML file feeds both and
no value is stored twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rollout.basics import Section
from rollout.config import SamplingConfig, TaskConfig
from workers.algorithms import ALGORITHMS, LOSS_AGGREGATIONS, AdvantageOptions, Algorithm
from workers.algorithms.advantages import Norm


class EmbeddedModelConfig(Section):
    """The project's own tiny Qwen2-architecture model, built from config and pre-trained on the task."""

    num_layers: int = Field(6, ge=2)
    hidden_size: int = Field(128, ge=16)
    intermediate_size: int = Field(384, ge=16)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    pretrain_max_steps: int = Field(3000, ge=0)
    """Upper bound on supervised steps; pre-training stops earlier once eval accuracy reaches the target."""
    pretrain_target_accuracy: float = Field(0.45, ge=0, le=1)
    """Stop pre-training at the first check whose greedy eval accuracy reaches this, leaving room for RL."""
    pretrain_check_every: int = Field(10, ge=1)
    """Steps between accuracy checks; small, because accuracy jumps within a few dozen steps."""
    pretrain_batch_size: int = Field(128, ge=1)
    pretrain_lr: float = Field(1e-3, gt=0)
    seed: int = 0
    """Weight-init and pre-training seed; the same seed rebuilds the same model."""

    @model_validator(mode="after")
    def _heads_divide(self) -> "EmbeddedModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}")
        return self


class ModelConfig(Section):
    source: str = "embedded"
    """`embedded` for the project's tiny model; a GGUF file (`/path/model.gguf`, or `package:<module>/<file>.gguf`
    inside an installed package), converted once to a cached HF directory; else a local HF model directory or
    a hub id."""
    embedded: EmbeddedModelConfig = EmbeddedModelConfig()
    cache_dir: str | None = None
    """Where the embedded model and converted GGUF models are cached; default $LAYERSWEEP_CACHE or
    ~/.cache/layersweep."""
    dtype: Literal["float32", "bfloat16"] = "float32"


class GigpoConfig(Section):
    step_weight: float = Field(1.0, ge=0)
    """omega: weight of the step-level (anchor-state) advantage added to the episode advantage."""
    gamma: float = Field(0.95, ge=0, le=1)
    """Discount for step returns."""
    episode_norm: Norm = "mean_std_norm"
    step_norm: Norm = "mean_std_norm"


class AlgorithmConfig(Section):
    name: str = "grpo"
    """A registered algorithm (workers.algorithms.ALGORITHMS); built in: grpo, dr_grpo, gigpo."""
    clip_eps_low: float = Field(0.2, gt=0, lt=1)
    clip_eps_high: float = Field(0.2, gt=0)
    """Asymmetric PPO clip range [1 - eps_low, 1 + eps_high] (DAPO's clip-higher when eps_high > eps_low)."""
    kl_beta: float = Field(0.0, ge=0)
    """Weight of the k3 KL(pi || pi_ref) penalty; 0 disables it (Dr. GRPO's recipe)."""
    loss_aggregation: str | None = None
    """How token losses become one scalar (workers.algorithms.LOSS_AGGREGATIONS: token-mean,
    seq-mean-token-mean, constant-normalizer); default: the algorithm's own (constant-normalizer for Dr. GRPO,
    token-mean otherwise)."""
    truncated_is_cap: float | None = Field(None, gt=0)
    """If set, weight each token's policy loss by min(pi_trainer_old / pi_engine, cap) to correct the
    trainer/engine log-prob mismatch (truncated importance sampling). Off by default."""
    ppo_epochs: int = Field(1, ge=1)
    micro_batch_size: int = Field(64, ge=1)
    """Rows per forward/backward; the loss does not depend on it (sums are normalised once per batch)."""
    adv_eps: float = Field(1e-6, gt=0)
    gigpo: GigpoConfig = GigpoConfig()

    @field_validator("name")
    @classmethod
    def _registered_algorithm(cls, name: str) -> str:
        return ALGORITHMS.check(name)

    @field_validator("loss_aggregation")
    @classmethod
    def _registered_aggregation(cls, name: str | None) -> str | None:
        return None if name is None else LOSS_AGGREGATIONS.check(name)

    @property
    def entry(self) -> Algorithm:
        return ALGORITHMS.get(self.name)

    @property
    def aggregation(self) -> str:
        return self.loss_aggregation or self.entry.default_aggregation

    @property
    def advantage_options(self) -> AdvantageOptions:
        gigpo = self.gigpo
        return AdvantageOptions(self.adv_eps, gigpo.gamma, gigpo.step_weight, gigpo.episode_norm, gigpo.step_norm)


class OptimConfig(Section):
    lr_layers: float = Field(3e-4, gt=0)
    """Learning rate when only some layers train (one layer tolerates a larger step)."""
    lr_full: float = Field(1e-4, gt=0)
    """Learning rate of the full-parameter reference."""
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)

    def lr_for(self, kind: str) -> float:
        """The learning rate of a trial kind: `lr_full` for the full-parameter reference, `lr_layers` otherwise."""
        return self.lr_full if kind == "full" else self.lr_layers


class BudgetConfig(Section):
    steps: int = Field(100, ge=0)
    """RL steps (one rollout + update each); every trial of a sweep gets the same budget."""
    prompts_per_step: int = Field(16, ge=1)


class EvalConfig(Section):
    num_prompts: int | None = Field(None, ge=1)
    """Evaluate on the first N eval examples; None = the whole eval split."""
    every_steps: int = Field(0, ge=0)
    """Also evaluate every k steps during training (0 = only at the end)."""
    pass_k: int = Field(0, ge=0)
    """If > 0, also report pass@k with k samples at the rollout temperature."""
    batch_size: int = Field(256, ge=1)


class TrialConfig(Section):
    seed: int = 0
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    rollout: SamplingConfig = SamplingConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    optim: OptimConfig = OptimConfig()
    budget: BudgetConfig = BudgetConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint_every: int = Field(25, ge=0)
    """Save trainable tensors, optimiser and RNG state every k steps (0 = never)."""
    num_threads: int | None = Field(None, ge=1)
    """torch intra-op threads per trial; None = the CPUs the trial was given."""
    fail_at_step: int | None = Field(None, ge=1)
    """Fault injection for tests: the trial's process exits at this step, once."""


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("LAYERSWEEP_CACHE", Path.home() / ".cache" / "layersweep"))


def cache_root(cfg: ModelConfig) -> Path:
    """The model cache this config uses: `model.cache_dir`, else the default."""
    return Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
