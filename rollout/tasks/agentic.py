"""The agentic task: a multi-turn text environment instead of a prompt dataset.

Train and eval episodes use disjoint seed ranges (eval seeds start at 1,000,000), so a seeded environment's
held-out layouts are never trained on.
"""

from __future__ import annotations

from typing import Callable

from rollout.config import AgenticConfig
from rollout.envs.base import TextEnv
from rollout.envs.demonstrations import demonstrations, training_pairs
from rollout.envs.registry import env_names, make_env
from rollout.multiturn import MultiTurnSettings, PromptFormat

EVAL_SEED_OFFSET = 1_000_000


class AgenticTask:
    name = "agentic"

    def __init__(self, cfg: AgenticConfig) -> None:
        if cfg.env not in env_names():
            raise ValueError(f"task.agentic.env={cfg.env!r} is not a registered environment; known: {env_names()}")
        self.cfg = cfg
        try:
            make_env(cfg.env, **cfg.options)
        except TypeError as error:
            raise ValueError(f"task.agentic.options={cfg.options!r} do not fit environment {cfg.env!r}: {error}") from None
        self.prompt_format = PromptFormat(history_window=cfg.history_window)
        self.train_seeds = list(range(cfg.num_train_seeds))
        self.eval_seeds = [EVAL_SEED_OFFSET + i for i in range(cfg.num_eval_seeds)]

    def env_factory(self) -> Callable[[], TextEnv]:
        return lambda: make_env(self.cfg.env, **self.cfg.options)

    def settings(self, max_new_tokens: int, temperature: float, top_p: float, seed: int | None) -> MultiTurnSettings:
        return MultiTurnSettings(
            max_turns=self.cfg.max_turns, prompt=self.prompt_format, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, seed=seed,
        )

    def pretrain_pairs(self) -> list[tuple[str, str]]:
        """(prompt, action) pairs from noisy-oracle episodes, rendered exactly as the rollout loop renders them."""
        episodes = demonstrations(
            self.env_factory(), self.train_seeds[: self.cfg.demo_episodes], self.cfg.demo_noise,
            self.cfg.max_turns, self.prompt_format,
        )
        return training_pairs(episodes)
