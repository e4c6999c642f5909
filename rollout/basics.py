"""The bottom of the package stack: the strict config base and the name registry every layer builds on.

`rollout`, `workers` and `orchestrator` all declare config sections and register things by name (tasks,
environments, algorithms, loss aggregations); both basics live here, below all of them, so no package has
to import upwards to get them.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict

Entry = TypeVar("Entry")


class Section(BaseModel):
    """A config section: unknown keys are errors, values are frozen, field docstrings are the docs."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, validate_default=True)


class Registry(Generic[Entry]):
    """Name -> entry for one axis (e.g. "algorithm"); a duplicate name is an error, never a silent override."""

    def __init__(self, axis: str) -> None:
        self.axis = axis
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, entry: Entry) -> Entry:
        if name in self._entries:
            raise ValueError(f"{self.axis} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str):
        """Decorator form of `add`."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise KeyError(f"unknown {self.axis} {name!r}; known: {self.names()}")
        return self._entries[name]

    def check(self, name: str) -> str:
        """`name` if registered, else a ValueError listing the known names (for config validators, whose error
        line already names the field and the value)."""
        if name not in self._entries:
            raise ValueError(f"not a registered {self.axis}; known: {self.names()}")
        return name

    def names(self) -> list[str]:
        return sorted(self._entries)
