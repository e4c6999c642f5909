"""Trial checkpoints hold what differs from the base model only: trainable tensors, optimiser, RNG, step.

For a single-layer trial that is one layer's weights and one layer's Adam moments, so checkpoints (and the
MLflow artifacts made from them) are a fraction of the model's size.

Nothing is pickled: every tensor goes into a safetensors file and the rest of the state (step, scheduler,
optimiser hyper-parameters, RNG positions) into JSON, so opening a sweep directory from somebody else can
never execute code. Python tuples come back as lists and dict keys keep their type (the optimiser's state
is keyed by parameter index).
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "trial_state.json"
"""Written last, atomically: it names the tensors file of the same save, so the pair is always consistent."""


def tensors_checksum(named_tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names and raw bytes, in name order: equal checksums mean bit-identical tensors."""
    digest = hashlib.sha256()
    for name in sorted(named_tensors):
        digest.update(name.encode())
        digest.update(named_tensors[name].detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))


def _child(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def split_tensors(value: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """A JSON-able copy of `value` with every tensor (and numpy array) moved into `tensors` under its path."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().contiguous().cpu()
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):
        tensors[path] = torch.from_numpy(value.copy())
        return {"__ndarray__": path}
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {key: split_tensors(item, tensors, _child(path, key)) for key, item in value.items()}
        return {"__items__": [[key, split_tensors(item, tensors, _child(path, key))] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return [split_tensors(item, tensors, _child(path, index)) for index, item in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint state at {path or '<root>'} holds a {type(value).__name__}, which is neither a tensor nor JSON")


def join_tensors(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `split_tensors` (tuples come back as lists)."""
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        if set(value) == {"__ndarray__"}:
            return tensors[value["__ndarray__"]].numpy()
        if set(value) == {"__items__"}:
            return {key: join_tensors(item, tensors) for key, item in value["__items__"]}
        return {key: join_tensors(item, tensors) for key, item in value.items()}
    if isinstance(value, list):
        return [join_tensors(item, tensors) for item in value]
    return value


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    """The tensors go to a new file `trial_state-<token>.safetensors`; then the JSON naming it replaces the old
    JSON in one rename; then older tensor files are removed. A crash at any point leaves the previous checkpoint
    or the new one readable, never the tensors of one save with the state of another."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_tensors(state, tensors)
    tensors_file = f"trial_state-{uuid.uuid4().hex[:16]}.safetensors"
    save_file(tensors, str(directory / tensors_file))
    path = directory / STATE_FILE
    path.with_suffix(".tmp").write_text(json.dumps({"tensors_file": tensors_file, "state": skeleton}))
    path.with_suffix(".tmp").replace(path)
    for stale in directory.glob("trial_state-*.safetensors"):
        if stale.name != tensors_file:
            stale.unlink()
    return path


def has_checkpoint(directory: Path) -> bool:
    return (Path(directory) / STATE_FILE).exists()


def load_checkpoint(directory: Path) -> dict[str, Any]:
    directory = Path(directory)
    if not has_checkpoint(directory):
        old = " (it holds a pickled trial_state.pt from before layersweep's safetensors checkpoints; rerun the trial)" \
            if (directory / "trial_state.pt").exists() else ""
        raise FileNotFoundError(f"no checkpoint at {directory / STATE_FILE}{old}")
    saved = json.loads((directory / STATE_FILE).read_text())
    return join_tensors(saved["state"], load_file(str(directory / saved["tensors_file"])))
