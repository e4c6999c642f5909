"""Name -> function registries, one per axis (advantage estimator, loss aggregation); duplicates are rejected."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    def __init__(self, axis: str) -> None:
        self.axis = axis
        self._entries: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def decorate(function: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.axis} {name!r} is already registered")
            self._entries[name] = function
            return function

        return decorate

    def get(self, name: str) -> F:
        if name not in self._entries:
            raise KeyError(f"unknown {self.axis} {name!r}; known: {sorted(self._entries)}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)
