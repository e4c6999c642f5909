"""From a finished trial to models people can use: a standard HF directory and a small layer delta.

The HF directory (`save_pretrained`, safetensors, with the base model's tokenizer) loads with
`AutoModelForCausalLM.from_pretrained` and vLLM. The layer delta holds only the tensors that trained, plus
the base model's identity and checksums of the base and of the result, so `apply_delta` rebuilds the exact
model from a base whose weights are bit-identical to the one trained from, and refuses any other base.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, PreTrainedModel

from workers.base_model import load_model_and_tokenizer
from workers.checkpoint import tensors_checksum

DELTA_TENSORS = "delta.safetensors"
DELTA_INFO = "delta.json"
DELTA_FORMAT = "layersweep-layer-delta/1"


@dataclass(frozen=True)
class DeltaInfo:
    format: str
    trial: str
    base: str
    """The base model as configured (`model.source`)."""
    base_dir: str
    """The HF directory the trial loaded (for the embedded or a GGUF model: the cache directory)."""
    dtype: str
    base_checksum: str
    """sha256 over every tensor of the base model's state dict (names and bytes)."""
    result_checksum: str
    """The same over the model with the delta applied."""
    tensors: list[str]
    delta_bytes: int
    model_bytes: int


def model_checksum(model: PreTrainedModel) -> str:
    return tensors_checksum(model.state_dict())


def model_bytes(model: PreTrainedModel) -> int:
    """Bytes of the model's distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


@torch.no_grad()
def load_tensors_into(model: PreTrainedModel, tensors: dict[str, torch.Tensor]) -> None:
    """Copy named tensors into the model's parameters; unknown names and shape mismatches are errors."""
    params = dict(model.named_parameters())
    for name, value in tensors.items():
        if name not in params:
            raise ValueError(f"the model has no parameter {name!r}: the trained tensors are for another architecture")
        if params[name].shape != value.shape:
            raise ValueError(f"{name}: trained shape {tuple(value.shape)} differs from the model's {tuple(params[name].shape)}")
        params[name].copy_(value)


def save_model_dir(model: PreTrainedModel, tokenizer_dir: Path | str, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(out_dir)


def export_trial(trained_file: Path, trial: str, base: str, base_dir: Path | str, dtype: str, out_dir: Path,
                 delta_dir: Path) -> DeltaInfo:
    """Base model + the trial's trained tensors -> an HF model directory at out_dir and a layer delta at delta_dir."""
    if not trained_file.exists():
        raise FileNotFoundError(f"{trained_file} does not exist: trial {trial} has not finished training "
                                "(the base evaluation trains nothing to export)")
    model, _ = load_model_and_tokenizer(base_dir, dtype)
    base_checksum = model_checksum(model)
    trained = load_file(str(trained_file))
    check_trained_from(model, trained, trained_file, base_dir)
    load_tensors_into(model, trained)
    save_model_dir(model, base_dir, out_dir)
    delta_dir.mkdir(parents=True, exist_ok=True)
    save_file(trained, str(delta_dir / DELTA_TENSORS))
    info = DeltaInfo(DELTA_FORMAT, trial, base, str(base_dir), dtype, base_checksum, model_checksum(model), sorted(trained),
                     (delta_dir / DELTA_TENSORS).stat().st_size, model_bytes(model))
    (delta_dir / DELTA_INFO).write_text(json.dumps(asdict(info), indent=2))
    return info


def check_trained_from(model: PreTrainedModel, trained: dict[str, torch.Tensor], trained_file: Path, base_dir: Path | str) -> None:
    """The trial recorded a checksum of its trainable tensors before training; the base loaded now must have the
    same values there, else the trained layers would be attached to another model (a moved hub revision, a cache
    rebuilt on another machine)."""
    with safe_open(str(trained_file), "pt") as handle:
        recorded = (handle.metadata() or {}).get("base_checksum")
    params = dict(model.named_parameters())
    found = tensors_checksum({name: params[name] for name in trained if name in params})
    if recorded is not None and found != recorded:
        raise ValueError(f"{base_dir}: its weights where {trained_file.parent.name} trained (checksum {found[:12]}) are not "
                         f"the ones it started from ({recorded[:12]}); refusing to export onto another base model")


def read_delta_info(delta_dir: Path) -> DeltaInfo:
    path = delta_dir / DELTA_INFO
    if not path.exists() or not (delta_dir / DELTA_TENSORS).exists():
        raise FileNotFoundError(f"{delta_dir} is not a layer delta (it needs {DELTA_INFO} and {DELTA_TENSORS})")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("format") != DELTA_FORMAT:
        raise ValueError(f"{path}: format {data.get('format') if isinstance(data, dict) else None!r} is not {DELTA_FORMAT!r}")
    try:
        info = DeltaInfo(**data)
    except TypeError as error:
        raise ValueError(f"{path} is not a complete {DELTA_FORMAT} description: {error}") from None
    if info.format != DELTA_FORMAT:
        raise ValueError(f"{path}: format {info.format!r} is not {DELTA_FORMAT!r}")
    return info


def apply_delta(delta_dir: Path, base_dir: Path | str, out_dir: Path) -> DeltaInfo:
    """Rebuild the trained model from `base_dir` + the delta; a base whose weights differ is refused."""
    info = read_delta_info(delta_dir)
    model, _ = load_model_and_tokenizer(base_dir, info.dtype)
    found = model_checksum(model)
    if found != info.base_checksum:
        raise ValueError(f"--base {base_dir}: its weights (checksum {found[:12]}) are not the base this delta was "
                         f"trained from ({info.base}, checksum {info.base_checksum[:12]}); refusing to apply")
    load_tensors_into(model, load_file(str(delta_dir / DELTA_TENSORS)))
    result = model_checksum(model)
    if result != info.result_checksum:
        raise ValueError(f"{delta_dir}: the rebuilt model's checksum {result[:12]} differs from the exported "
                         f"{info.result_checksum[:12]} (a corrupted delta file?)")
    save_model_dir(model, base_dir, out_dir)
    return info
