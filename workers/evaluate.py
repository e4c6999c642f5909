"""Held-out evaluation of single-turn tasks through the rollout engine: greedy accuracy, optionally pass@k."""

from __future__ import annotations

from typing import Sequence

from rollout.config import SamplingConfig
from rollout.engine import RolloutEngine
from rollout.tasks.base import Task, TaskExample


def greedy_accuracy(engine: RolloutEngine, task: Task, examples: Sequence[TaskExample], max_new_tokens: int, batch_size: int) -> float:
    correct = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        completions = engine.greedy([e.prompt for e in chunk], max_new_tokens)
        correct += sum(task.is_correct(c, e) for c, e in zip(completions, chunk))
    return correct / max(len(examples), 1)


def pass_at_k(engine: RolloutEngine, task: Task, examples: Sequence[TaskExample], k: int, sampling: SamplingConfig, seed: int) -> float:
    """Share of examples with at least one correct answer among k samples (the unbiased estimator with n = k)."""
    batch = engine.generate([e.prompt for e in examples], sampling.sampling_settings(seed, group_size=k))
    solved = [False] * len(examples)
    for index, completion in zip(batch.group_index_N.tolist(), batch.completions_text):
        solved[index] = solved[index] or task.is_correct(completion, examples[index])
    return sum(solved) / max(len(examples), 1)
