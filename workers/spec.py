"""TrialSpec: the one record that tells a trial what to train. The orchestrator plans them; workers run them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TrialKind = Literal["base", "full", "layers"]


@dataclass(frozen=True)
class TrialSpec:
    kind: TrialKind
    """base: evaluate only; full: every parameter trainable; layers: only the listed decoder layers."""
    layers: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind == "layers" and not self.layers:
            raise ValueError("TrialSpec(kind='layers') needs at least one layer index")
        if self.kind != "layers" and self.layers:
            raise ValueError(f"TrialSpec(kind={self.kind!r}) takes no layers, got {self.layers}")

    @property
    def name(self) -> str:
        """Stable, sortable trial name, e.g. `layer03-s0`, `full-s1`, `base-s0`."""
        if self.kind == "layers":
            label = "layer" + "+".join(f"{i:02d}" for i in self.layers)
        else:
            label = self.kind
        return f"{label}-s{self.seed}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "layers": list(self.layers), "seed": self.seed}

    @classmethod
    def from_dict(cls, data: dict) -> "TrialSpec":
        return cls(kind=data["kind"], layers=tuple(data.get("layers", ())), seed=int(data.get("seed", 0)))
