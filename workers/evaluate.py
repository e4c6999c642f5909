"""Held-out evaluation through the rollout engine: greedy accuracy, and optionally pass@k."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from rollout.config import SamplingConfig
from rollout.engine import RolloutEngine, SamplingSettings
from rollout.multiturn import INVALID_SHOWN
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
    settings = SamplingSettings(group_size=k, max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p, seed=seed)
    batch = engine.generate([e.prompt for e in examples], settings)
    solved = [False] * len(examples)
    for index, completion in zip(batch.group_index_N.tolist(), batch.completions_text):
        solved[index] = solved[index] or task.is_correct(completion, examples[index])
    return sum(solved) / max(len(examples), 1)


def greedy_env_success(engine: RolloutEngine, env_factory: Callable[[], Any], seeds: Sequence[int], settings: Any) -> float:
    """Share of episodes (one per seed) solved when every action is the policy's greedy completion."""
    envs = [env_factory() for _ in seeds]
    observations = [env.reset(seed) for env, seed in zip(envs, seeds)]
    histories: list[list[tuple[str, str]]] = [[] for _ in seeds]
    active = list(range(len(seeds)))
    for _ in range(settings.max_turns):
        if not active:
            break
        prompts = [settings.prompt.render(envs[i].instruction, histories[i], observations[i]) for i in active]
        actions = engine.greedy(prompts, settings.max_new_tokens)
        still_active = []
        for i, action in zip(active, actions):
            observation, _, done, info = envs[i].step(action)
            histories[i].append((observations[i], info["action"] or INVALID_SHOWN))
            observations[i] = observation
            if not done:
                still_active.append(i)
        active = still_active
    return sum(env.success for env in envs) / max(len(envs), 1)
