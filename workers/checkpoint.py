"""Trial checkpoints hold what differs from the base model only: trainable tensors, optimiser, RNG, step.

For a single-layer trial that is one layer's weights and one layer's Adam moments, so checkpoints (and the
MLflow artifacts made from them) are a fraction of the model's size.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILE = "trial_state.pt"


def tensors_checksum(named_tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names and raw bytes, in name order: equal checksums mean bit-identical tensors."""
    digest = hashlib.sha256()
    for name in sorted(named_tensors):
        digest.update(name.encode())
        digest.update(named_tensors[name].detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    staging = path.with_suffix(".tmp")
    torch.save(state, staging)
    staging.replace(path)
    return path


def load_checkpoint(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CHECKPOINT_FILE
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, weights_only=False)
