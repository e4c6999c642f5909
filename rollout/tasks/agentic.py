"""The agentic task: a multi-turn text environment instead of a prompt dataset.

Train and eval episodes use disjoint seed ranges (eval seeds start at 1,000,000), so a seeded environment's
held-out layouts are never trained on. Held-out success is measured greedily or by sampling at the rollout
temperature (`eval_decoding`), in both cases by the same loop that collects training rollouts.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

from rollout.config import AgenticConfig, SamplingConfig
from rollout.engine import RolloutEngine
from rollout.envs.base import TextEnv
from rollout.envs.demonstrations import demonstrations, training_pairs
from rollout.envs.registry import env_names, make_env
from rollout.multiturn import MultiTurnSettings, PromptFormat, rollout_groups, rollout_metrics

EVAL_SEED_OFFSET = 1_000_000
EVAL_SAMPLING_SEED = 0
"""Every trial's sampled evaluation draws the same random numbers, so trials differ only by their weights."""


def env_success(engine: RolloutEngine, env_factory: Callable[[], TextEnv], seeds: Sequence[int],
                settings: MultiTurnSettings, episodes_per_seed: int = 1) -> float:
    """Share of episodes solved, `episodes_per_seed` from each seed, played by the rollout loop itself
    (greedy or sampled per `settings.greedy`), so evaluation and training act through one code path."""
    groups = rollout_groups(engine, env_factory, seeds, episodes_per_seed, settings)
    return rollout_metrics(groups)["success_rate"]


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

    def settings(self, sampling: SamplingConfig, seed: int | None, greedy: bool = False) -> MultiTurnSettings:
        """This task's episodes, acting with `sampling`'s decoding and seeded by `seed`."""
        return MultiTurnSettings.from_sampling(sampling.sampling_settings(seed), self.cfg.max_turns, self.prompt_format, greedy)

    def eval_success(self, engine: RolloutEngine, sampling: SamplingConfig, decoding: Literal["greedy", "sample"],
                     seeds: Sequence[int] | None = None) -> float:
        """Held-out success rate with `decoding` ("greedy" | "sample"), on `seeds` (default: all eval seeds)."""
        greedy = decoding == "greedy"
        settings = self.settings(sampling, EVAL_SAMPLING_SEED, greedy)
        episodes = 1 if greedy else self.cfg.eval_episodes_per_seed
        return env_success(engine, self.env_factory(), self.eval_seeds if seeds is None else seeds, settings, episodes)

    def pretrain_pairs(self) -> list[tuple[str, str]]:
        """(prompt, action) pairs from noisy-oracle episodes, rendered exactly as the rollout loop renders them."""
        episodes = demonstrations(
            self.env_factory(), self.train_seeds[: self.cfg.demo_episodes], self.cfg.demo_noise,
            self.cfg.max_turns, self.prompt_format,
        )
        return training_pairs(episodes)
