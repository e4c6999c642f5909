"""Task construction by `task.kind`: one registration per task family."""

from __future__ import annotations

import hashlib
import json
from typing import Callable

from transformers import PreTrainedTokenizerBase

from rollout.config import TaskConfig
from rollout.tasks.arithmetic import ArithmeticTask
from rollout.tasks.base import MultiTurnTask, Task, is_multi_turn
from rollout.basics import Registry

TaskBuilder = Callable[[TaskConfig, PreTrainedTokenizerBase], "Task | MultiTurnTask"]
_BUILDERS: Registry[TaskBuilder] = Registry("task kind")
register_task = _BUILDERS.register


@register_task("arithmetic")
def _arithmetic(cfg: TaskConfig, tokenizer: PreTrainedTokenizerBase) -> Task:
    return ArithmeticTask(cfg.arithmetic, format_reward=cfg.format_reward, tokenizer=tokenizer)


@register_task("math")
def _math(cfg: TaskConfig, tokenizer: PreTrainedTokenizerBase) -> Task:
    from rollout.tasks.math_task import MathTask

    return MathTask(cfg, tokenizer)


@register_task("code")
def _code(cfg: TaskConfig, tokenizer: PreTrainedTokenizerBase) -> Task:
    from rollout.tasks.code_task import CodeTask

    return CodeTask(cfg, tokenizer)


@register_task("agentic")
def _agentic(cfg: TaskConfig, tokenizer: PreTrainedTokenizerBase) -> MultiTurnTask:
    from rollout.tasks.agentic import AgenticTask

    return AgenticTask(cfg.agentic)


def build_task(cfg: TaskConfig, tokenizer: PreTrainedTokenizerBase) -> Task | MultiTurnTask:
    if cfg.kind not in _BUILDERS.names():
        raise ValueError(f"task.kind={cfg.kind!r} is not available; known: {_BUILDERS.names()}")
    task = _BUILDERS.get(cfg.kind)(cfg, tokenizer)
    if cfg.reward:
        from rollout.tasks.plugin import PluginRewardTask

        task = PluginRewardTask(task, cfg.reward, cfg.reward_failure_share, cfg.reward_failure_grace_steps)
    return task


def task_fingerprint(task: Task | MultiTurnTask) -> str:
    """A digest of the task's examples: what pre-training sees, independent of how the config is spelled."""
    digest = hashlib.sha256()
    if is_multi_turn(task):
        digest.update(json.dumps(task.cfg.model_dump(), sort_keys=True).encode())
        return digest.hexdigest()
    for split in (task.train_examples(), task.eval_examples()):
        for example in split:
            digest.update(json.dumps([example.prompt, example.answer]).encode())
        digest.update(b"|")
    return digest.hexdigest()
