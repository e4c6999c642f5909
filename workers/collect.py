"""Collectors turn the current policy into one training batch: rollouts, rewards, advantages, metrics.

Single-turn tasks (a prompt dataset + a reward function) and multi-turn environments (one row per action)
produce the same `UpdateBatch`, so the update step, checkpointing and the sweep never branch on task type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch

from rollout.config import SamplingConfig
from rollout.engine import RolloutEngine, derived_seed
from rollout.multiturn import GroupRollout, flatten_groups, rollout_groups, rollout_metrics
from rollout.tasks.base import MultiTurnTask, Task, TaskExample, is_multi_turn, reward_meta
from rollout.tasks.plugin import reward_plugin_of
from workers.algorithms.advantages import TrajectoryGroup
from workers.config import AlgorithmConfig, TrialConfig
from workers.evaluate import greedy_accuracy, pass_at_k
from workers.policy import ScoringInputs
from workers.update import NonFiniteLossError, UpdateBatch


@dataclass
class Collected:
    batch: UpdateBatch
    metrics: dict[str, float]


class Collector(Protocol):
    def collect(self, step: int, seed: int) -> Collected: ...

    def evaluate(self, engine: RolloutEngine) -> dict[str, float]: ...


def checked_advantages(algorithm: AlgorithmConfig, groups: Sequence[TrajectoryGroup], num_rows: int) -> torch.Tensor:
    """The registered estimator's advantages, refused unless there is exactly one finite value per row (a plugged-in
    estimator returning one per trajectory instead of one per step would otherwise credit the wrong rows)."""
    adv_N = algorithm.entry.advantages(groups, algorithm.advantage_options)
    if not isinstance(adv_N, torch.Tensor):
        raise ValueError(f"algorithm.name={algorithm.name!r}: its advantage estimator returned a {type(adv_N).__name__}, not a tensor")
    if tuple(adv_N.shape) != (num_rows,):
        raise ValueError(f"algorithm.name={algorithm.name!r}: its advantage estimator returned shape {tuple(adv_N.shape)} "
                         f"for {num_rows} rows; it must return one advantage per row")
    if not torch.isfinite(adv_N).all():
        raise NonFiniteLossError(f"algorithm.name={algorithm.name!r}: its advantage estimator returned a non-finite value")
    return adv_N.float()


def shuffled(items: Sequence[Any], data_seed: int) -> list[Any]:
    generator = torch.Generator().manual_seed(data_seed)
    return [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]


def step_window(order: Sequence[Any], step: int, count: int) -> list[Any]:
    """The `count` items of a step, cycling through `order`: data position is a pure function of the step,
    so a resumed trial sees exactly the same prompts (or environment seeds)."""
    start = step * count
    return [order[(start + k) % len(order)] for k in range(count)]


class SingleTurnCollector:
    def __init__(self, task: Task, engine: RolloutEngine, sampling: SamplingConfig, algorithm: AlgorithmConfig,
                 prompts_per_step: int, eval_examples: Sequence[TaskExample], eval_batch_size: int, pass_k: int, data_seed: int) -> None:
        self.task, self.engine, self.sampling, self.algorithm = task, engine, sampling, algorithm
        self.prompts_per_step = prompts_per_step
        self.data_order = shuffled(list(task.train_examples()), data_seed)
        self.eval_examples = list(eval_examples)
        self.eval_batch_size, self.pass_k = eval_batch_size, pass_k
        self.plugin = reward_plugin_of(task)
        """The `task.reward` plugin, whose raised calls are counted per step and can end the trial."""

    def collect(self, step: int, seed: int) -> Collected:
        examples = step_window(self.data_order, step, self.prompts_per_step)
        batch = self.engine.generate([e.prompt for e in examples], self.sampling.sampling_settings(derived_seed(seed, step)))
        failed_before = self.plugin.failures.failed if self.plugin is not None else 0
        grouped = [examples[int(i)] for i in batch.group_index_N]
        try:
            rewards = self.task.reward([e.prompt for e in grouped], batch.completions_text, **reward_meta(grouped))
        except Exception as error:  # a user reward plugin must not lose the trial's progress silently
            raise RuntimeError(f"step {step + 1}: task reward raised {type(error).__name__}: {error}") from error
        if self.plugin is not None:
            self.plugin.check_failures()
        rewards_N = torch.tensor(rewards, dtype=torch.float32)
        if rewards_N.shape != (batch.num_rows,) or not torch.isfinite(rewards_N).all():
            raise NonFiniteLossError(f"step {step + 1}: reward function returned a non-finite value or the wrong count")
        group_size = self.sampling.group_size
        groups = [TrajectoryGroup.single_step(rewards[start : start + group_size]) for start in range(0, len(rewards), group_size)]
        adv_N = checked_advantages(self.algorithm, groups, batch.num_rows)
        correct = [float(self.task.is_correct(c, e)) for c, e in zip(batch.completions_text, grouped)]
        metrics = {
            "reward_mean": float(rewards_N.mean()),
            "reward_std": float(rewards_N.std()),
            "accuracy": sum(correct) / len(correct),
            "completion_tokens_mean": float(batch.completion_mask_NT.sum()) / batch.num_rows,
            "nonzero_advantage_rows": float((adv_N != 0).sum()),
            **batch.stats,
        }
        if self.plugin is not None:
            metrics["reward_errors"] = float(self.plugin.failures.failed - failed_before)
        return Collected(UpdateBatch(ScoringInputs.from_batch(batch), adv_N, batch.sample_logp_NT), metrics)

    def evaluate(self, engine: RolloutEngine) -> dict[str, float]:
        result = {"score": greedy_accuracy(engine, self.task, self.eval_examples, self.sampling.max_new_tokens, self.eval_batch_size),
                  "eval_size": float(len(self.eval_examples))}
        if self.pass_k:
            result[f"pass@{self.pass_k}"] = pass_at_k(engine, self.task, self.eval_examples, self.pass_k, self.sampling, seed=0)
        return result


def trajectory_groups(groups: Sequence[GroupRollout]) -> list[TrajectoryGroup]:
    """What advantage estimators read of environment rollouts: per-step rewards and state keys."""
    return [
        TrajectoryGroup([[s.reward for s in t.steps] for t in group.trajectories],
                        [[s.state_key for s in t.steps] for t in group.trajectories])
        for group in groups
    ]


class MultiTurnCollector:
    def __init__(self, task: MultiTurnTask, engine: RolloutEngine, sampling: SamplingConfig, algorithm: AlgorithmConfig,
                 groups_per_step: int, pad_token_id: int, data_seed: int) -> None:
        self.task, self.engine, self.sampling, self.algorithm = task, engine, sampling, algorithm
        self.groups_per_step = groups_per_step
        self.pad_token_id = pad_token_id
        self.seed_order = shuffled(task.train_seeds, data_seed)

    def collect(self, step: int, seed: int) -> Collected:
        seeds = step_window(self.seed_order, step, self.groups_per_step)
        settings = self.task.settings(self.sampling, derived_seed(seed, step))
        groups = rollout_groups(self.engine, self.task.env_factory(), seeds, self.sampling.group_size, settings)
        rows = flatten_groups(groups, self.pad_token_id, completion_width=self.sampling.max_new_tokens)
        adv_N = checked_advantages(self.algorithm, trajectory_groups(groups), rows.batch.num_rows)
        stats = rollout_metrics(groups)
        metrics = {
            "reward_mean": stats["return_mean"],
            "reward_std": float(torch.tensor([t.episode_return for g in groups for t in g.trajectories]).std()),
            "accuracy": stats["success_rate"],
            "completion_tokens_mean": float(rows.batch.completion_mask_NT.sum()) / max(rows.batch.num_rows, 1),
            "rows": float(rows.batch.num_rows),
            "nonzero_advantage_rows": float((adv_N != 0).sum()),
            **{k: v for k, v in stats.items() if k not in ("return_mean", "success_rate")},
        }
        return Collected(UpdateBatch(ScoringInputs.from_batch(rows.batch), adv_N, rows.batch.sample_logp_NT), metrics)

    def evaluate(self, engine: RolloutEngine) -> dict[str, float]:
        """`score` is the success rate under the configured decoding; both greedy and sampled rates are reported."""
        rates = {
            decoding: self.task.eval_success(engine, self.sampling, decoding)
            for decoding in ("greedy", "sample")
        }
        return {"score": rates[self.task.cfg.eval_decoding], "success_greedy": rates["greedy"],
                "success_sampled": rates["sample"], "eval_size": float(len(self.task.eval_seeds))}


def build_collector(task: Task | MultiTurnTask, engine: RolloutEngine, cfg: TrialConfig,
                    eval_examples: Sequence[TaskExample], pad_token_id: int) -> Collector:
    """The multi-turn collector for a task played in environments, else the single-turn one."""
    if is_multi_turn(task):
        return MultiTurnCollector(task, engine, cfg.rollout, cfg.algorithm, cfg.budget.prompts_per_step, pad_token_id, cfg.seed)
    if cfg.algorithm.entry.needs_environment:
        raise ValueError(f"algorithm.name={cfg.algorithm.name!r} needs a multi-turn task (task.kind='agentic'), "
                         f"not task.kind={cfg.task.kind!r}")
    return SingleTurnCollector(task, engine, cfg.rollout, cfg.algorithm, cfg.budget.prompts_per_step, eval_examples,
                               cfg.eval.batch_size, cfg.eval.pass_k, cfg.seed)
