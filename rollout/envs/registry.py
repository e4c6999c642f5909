"""Environment construction by name: `make_env("frozenlake", is_slippery=True)`; duplicate names are rejected."""

from __future__ import annotations

from typing import Any, Callable

from rollout.envs.base import TextEnv
from rollout.envs.frozenlake import FrozenLakeTextEnv
from rollout.envs.keydoor import KeyDoorEnv
from rollout.envs.sokoban import SokobanEnv
from rollout.basics import Registry

EnvBuilder = Callable[..., TextEnv]
_ENVS: Registry[EnvBuilder] = Registry("environment")
register_env = _ENVS.register


def make_env(name: str, **options: Any) -> TextEnv:
    """A fresh environment; `options` go to its constructor (size, is_slippery, invalid_penalty, ...)."""
    return _ENVS.get(name)(**options)


def env_names() -> list[str]:
    return _ENVS.names()


register_env(FrozenLakeTextEnv.name)(FrozenLakeTextEnv)
register_env(KeyDoorEnv.name)(KeyDoorEnv)
register_env(SokobanEnv.name)(SokobanEnv)
