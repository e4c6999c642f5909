"""Task construction by `task.kind`: one registration per task family."""

from __future__ import annotations

import hashlib
import json
from typing import Callable

from transformers import PreTrainedTokenizerBase

from rollout.config import TaskConfig
from rollout.tasks.arithmetic import ArithmeticTask
from rollout.tasks.base import Task

TaskBuilder = Callable[[TaskConfig, PreTrainedTokenizerBase], Task]
_BUILDERS: dict[str, TaskBuilder] = {}


def register_task(kind: str) -> Callable[[TaskBuilder], TaskBuilder]:
    def decorate(builder: TaskBuilder) -> TaskBuilder:
        if kind in _BUILDERS:
            raise ValueError(f"task kind {kind!r} is already registered")
        _BUILDERS[kind] = builder
        return builder

    return decorate


@register_task("arithmetic")
def _arithmetic(cfg: TaskConfig, tokenizer: PreTrainedTokenizerBase) -> Task:
    return ArithmeticTask(cfg.arithmetic, format_reward=cfg.format_reward)


def build_task(cfg: TaskConfig, tokenizer: PreTrainedTokenizerBase) -> Task:
    if cfg.kind not in _BUILDERS:
        raise ValueError(f"task.kind={cfg.kind!r} is not available; known: {sorted(_BUILDERS)}")
    return _BUILDERS[cfg.kind](cfg, tokenizer)


def task_fingerprint(task: Task) -> str:
    """A digest of the task's examples: what pre-training sees, independent of how the config is spelled."""
    digest = hashlib.sha256()
    for split in (task.train_examples(), task.eval_examples()):
        for example in split:
            digest.update(json.dumps([example.prompt, example.answer]).encode())
        digest.update(b"|")
    return digest.hexdigest()
