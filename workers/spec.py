"""TrialSpec: the one record that tells a trial what to train. The orchestrator plans them; workers run them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TrialKind = Literal["base", "full", "layers", "subset"]
TRAINS_SOME_LAYERS = ("layers", "subset")


@dataclass(frozen=True)
class TrialSpec:
    kind: TrialKind
    """base: evaluate only; full: every parameter trainable; layers: one candidate decoder layer (a sweep's
    ranking unit); subset: a chosen set of decoder layers trained together (`layersweep train`)."""
    layers: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind == "layers" and len(self.layers) != 1:
            raise ValueError(f"TrialSpec(kind='layers') trains exactly one layer, got {self.layers}; use kind='subset'")
        if self.kind == "subset" and (not self.layers or list(self.layers) != sorted(set(self.layers))):
            raise ValueError(f"TrialSpec(kind='subset') needs ascending distinct layer indices, got {self.layers}")
        if self.kind not in TRAINS_SOME_LAYERS and self.layers:
            raise ValueError(f"TrialSpec(kind={self.kind!r}) takes no layers, got {self.layers}")

    @property
    def name(self) -> str:
        """Stable, sortable trial name, e.g. `layer03-s0`, `set03+04-s0`, `full-s1`, `base-s0`."""
        if self.kind in TRAINS_SOME_LAYERS:
            label = ("layer" if self.kind == "layers" else "set") + "+".join(f"{i:02d}" for i in self.layers)
        else:
            label = self.kind
        return f"{label}-s{self.seed}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "layers": list(self.layers), "seed": self.seed}

    @classmethod
    def from_dict(cls, data: dict) -> "TrialSpec":
        return cls(kind=data["kind"], layers=tuple(data.get("layers", ())), seed=int(data.get("seed", 0)))
