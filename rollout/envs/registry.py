"""Environment construction by name: `make_env("frozenlake", is_slippery=True)`; duplicate names are rejected."""

from __future__ import annotations

from typing import Any, Callable

from rollout.envs.base import TextEnv
from rollout.envs.frozenlake import FrozenLakeTextEnv
from rollout.envs.keydoor import KeyDoorEnv

EnvBuilder = Callable[..., TextEnv]
_ENVS: dict[str, EnvBuilder] = {}


def register_env(name: str) -> Callable[[EnvBuilder], EnvBuilder]:
    def decorate(builder: EnvBuilder) -> EnvBuilder:
        if name in _ENVS:
            raise ValueError(f"environment {name!r} is already registered")
        _ENVS[name] = builder
        return builder

    return decorate


def make_env(name: str, **options: Any) -> TextEnv:
    """A fresh environment; `options` go to its constructor (size, is_slippery, invalid_penalty, ...)."""
    if name not in _ENVS:
        raise KeyError(f"unknown environment {name!r}; known: {env_names()}")
    return _ENVS[name](**options)


def env_names() -> list[str]:
    return sorted(_ENVS)


register_env(FrozenLakeTextEnv.name)(FrozenLakeTextEnv)
register_env(KeyDoorEnv.name)(KeyDoorEnv)
