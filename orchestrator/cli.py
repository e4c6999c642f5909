"""`layersweep` command line: trial, run, resume, report, compare. The CLI prints; library code logs.

Heavy modules (Ray, torch, the driver) are imported inside the commands, so `--help` and config errors
answer at once.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from orchestrator.config import ConfigError, load_sweep_config, parse_override


def _load(args: argparse.Namespace):
    overrides = dict(parse_override(text) for text in args.set or [])
    return load_sweep_config(args.config, overrides)


def cmd_trial(args: argparse.Namespace) -> int:
    from orchestrator.results import trial_dir as trial_dir_of
    from workers.runner import run_trial
    from workers.spec import TrialSpec

    cfg = _load(args)
    if args.base:
        spec = TrialSpec("base", seed=args.seed if args.seed is not None else cfg.seed)
    elif args.full:
        spec = TrialSpec("full", seed=args.seed if args.seed is not None else cfg.seed)
    else:
        layers = tuple(sorted(set(args.layer)))
        spec = TrialSpec("layers" if len(layers) == 1 else "subset", layers, seed=args.seed if args.seed is not None else cfg.seed)
    trial_dir = Path(args.out) if args.out else trial_dir_of(cfg.sweep_dir, spec.name)

    def show(record: dict) -> None:
        print(
            f"[{spec.name}] step {record['step']:4d}  reward {record['reward_mean']:.3f}  "
            f"acc {record['accuracy']:.3f}  kl {record['kl']:.4f}  entropy {record['entropy']:.3f}  "
            f"{record['step_seconds']:.2f}s",
            flush=True,
        )

    result = run_trial(cfg.trial_config(spec.seed), spec, trial_dir, on_metrics=show)
    print(json.dumps({k: v for k, v in result.items() if k != "spec"}, indent=2))
    print(f"metrics: {trial_dir / 'metrics.jsonl'}  score: {trial_dir / 'score.json'}")
    if result.get("learned") is False:
        print(f"layersweep: error: trial {spec.name} did not learn (no step had a non-zero advantage, or no trainable "
              f"weight changed); its metrics and score are kept in {trial_dir}", file=sys.stderr)
        return 3
    return 0


def _verdict(table, min_finished_layer_share: float = 1.0) -> int:
    """The sweep's exit status; why it is not 0 goes to stderr."""
    from orchestrator.results import sweep_verdict

    code, reason = sweep_verdict(table, min_finished_layer_share)
    if reason:
        print(f"layersweep: error: {reason}", file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.driver import run_sweep

    cfg = _load(args)
    return _verdict(run_sweep(cfg, address=args.address, include_dashboard=not args.no_dashboard), cfg.min_finished_layer_share)


def cmd_resume(args: argparse.Namespace) -> int:
    from orchestrator.driver import load_sweep, resume_sweep

    _, cfg, _ = load_sweep(Path(args.sweep_dir))
    table = resume_sweep(Path(args.sweep_dir), address=args.address, include_dashboard=not args.no_dashboard)
    return _verdict(table, cfg.min_finished_layer_share)


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.report import render_sweep
    from orchestrator.results import load_results

    sweep_dir = Path(args.sweep_dir)
    files, text, _ = render_sweep(load_results(sweep_dir), sweep_dir)
    print(text)
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from orchestrator.compare import compare_sweep_dirs

    text, files = compare_sweep_dirs([Path(d) for d in args.sweep_dirs], Path(args.out) if args.out else None)
    print(text)
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from orchestrator.startup import model_num_layers
    from orchestrator.plan import candidate_layers
    from orchestrator.config import ProbeConfig
    from orchestrator.probe import correlations, probe_text, run_probe, write_probe
    from orchestrator.results import load_results
    from workers.base_model import resolve_model_dir

    cfg = _load(args)
    batches = args.batches if args.batches is not None else (cfg.probe or ProbeConfig()).batches
    if batches < 2:
        raise ValueError(f"--batches {batches}: at least 2 are needed (one for the gradient, one held out)")
    measured = load_results(Path(args.against)) if args.against else None  # a bad directory fails before the probe runs
    layers = candidate_layers(cfg.layers, model_num_layers(resolve_model_dir(cfg.trial_config())))
    table, info = run_probe(cfg, layers, batches, args.threads)
    rhos = correlations(table, measured, args.against) if measured is not None else None
    out = Path(args.out) if args.out else cfg.sweep_dir / "probe"  # never the probe.csv a probe sweep chose its layers by
    files = write_probe(out, table, info)
    if rhos is not None:
        rhos.to_csv(out / "probe_vs_sweep.csv", index=False)
        files.append(out / "probe_vs_sweep.csv")
    print(probe_text(table, info, rhos, args.against))
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from orchestrator.aggregate import summarize
    from orchestrator.driver import train_subset
    from orchestrator.results import load_results
    from orchestrator.selection import select_listed, select_middle_block, select_top_k

    sweep_dir = Path(args.sweep_dir)
    summary = summarize(load_results(sweep_dir))
    if args.top_k is not None:
        selection = select_top_k(summary, args.top_k)
    elif args.layers is not None:
        selection = select_listed(args.layers, summary)
    else:
        selection = select_middle_block(args.middle_block, summary)
    print(f"training layers {'+'.join(map(str, selection.layers))} together ({selection.label}):")
    for reason in selection.reasons:
        print(f"  {reason}")
    if args.seeds and len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds {' '.join(map(str, args.seeds))} repeats a seed")
    table, planned = train_subset(sweep_dir, selection.layers, selection.label, args.seeds, address=args.address,
                                  include_dashboard=not args.no_dashboard)
    return _verdict(table[table["trial"].isin(planned)])  # this run's trials, not sets trained before


def cmd_export(args: argparse.Namespace) -> int:
    from orchestrator.driver import load_sweep
    from orchestrator.results import trial_dir
    from workers.base_model import resolve_model_dir
    from workers.export import export_trial
    from workers.trial_files import TRAINED_FILE

    sweep_dir, cfg, _ = load_sweep(Path(args.sweep_dir))
    out = Path(args.out)
    delta_dir = Path(args.delta_out) if args.delta_out else out.with_name(out.name + "-delta")
    base_dir = resolve_model_dir(cfg.trial_config())
    info = export_trial(trial_dir(sweep_dir, args.trial) / TRAINED_FILE, args.trial, cfg.model.source, base_dir,
                        cfg.model.dtype, out, delta_dir)
    print(f"model: {out} (AutoModelForCausalLM.from_pretrained / vLLM)")
    print(f"layer delta: {delta_dir} ({len(info.tensors)} tensors, {info.delta_bytes / 2**20:.2f} MiB = "
          f"{100 * info.delta_bytes / info.model_bytes:.1f}% of the {info.model_bytes / 2**20:.1f} MiB model); "
          f"rebuild with: layersweep apply-delta {delta_dir} --base {base_dir} --out DIR")
    if args.mlflow:
        from orchestrator.tracking import log_export

        where = log_export(sweep_dir, cfg.tracking, args.trial, out, delta_dir, args.register)
        print(f"MLflow: {where}")
    return 0


def cmd_apply_delta(args: argparse.Namespace) -> int:
    from workers.export import apply_delta

    info = apply_delta(Path(args.delta), args.base, Path(args.out))
    print(f"wrote {args.out}: base {args.base} + {len(info.tensors)} tensors of trial {info.trial} "
          f"(checksum {info.result_checksum[:12]} as exported)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layersweep", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    trial = sub.add_parser("trial", help="run one trial (base, full or some layers) in this process")
    trial.add_argument("config")
    which = trial.add_mutually_exclusive_group(required=True)
    which.add_argument("--layer", type=int, action="append", help="train only this decoder layer (repeatable)")
    which.add_argument("--full", action="store_true", help="train every parameter (the reference)")
    which.add_argument("--base", action="store_true", help="evaluate the untouched model")
    trial.add_argument("--seed", type=int)
    trial.add_argument("--out", help="trial directory (default <output_dir>/<name>/trials/<trial>)")
    trial.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. budget.steps=5")
    trial.set_defaults(handler=cmd_trial)

    run = sub.add_parser("run", help="run a sweep: base, full reference and one trial per candidate layer, on Ray Tune")
    run.add_argument("config", nargs="?", default=str(Path(__file__).resolve().parent.parent / "configs" / "default.yaml"))
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    run.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard (local Ray only)")
    run.set_defaults(handler=cmd_run)

    resume = sub.add_parser("resume", help="continue a sweep whose driver died; finished trials are not rerun")
    resume.add_argument("sweep_dir")
    resume.add_argument("--address")
    resume.add_argument("--no-dashboard", action="store_true")
    resume.set_defaults(handler=cmd_resume)

    report = sub.add_parser("report", help="re-render ranking tables and the contribution plot from stored results")
    report.add_argument("sweep_dir")
    report.set_defaults(handler=cmd_report)

    compare = sub.add_parser("compare", help="Spearman/Kendall correlation of layer rankings across sweeps")
    compare.add_argument("sweep_dirs", nargs="+")
    compare.add_argument("--out", help="directory for comparison.csv / comparison.png (default: the first sweep dir)")
    compare.set_defaults(handler=cmd_compare)

    probe = sub.add_parser("probe", help="rank the candidate layers without RL, from signals on base-model rollouts")
    probe.add_argument("config")
    probe.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    probe.add_argument("--batches", type=int, help="rollout batches of the base model (default: the config's probe.batches)")
    probe.add_argument("--against", metavar="SWEEP_DIR", help="a finished sweep: print each signal's Spearman rho with its C(i)")
    probe.add_argument("--out", help="directory for probe.csv / probe.json (default: <sweep directory>/probe)")
    probe.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    probe.set_defaults(handler=cmd_probe)

    train = sub.add_parser("train", help="train a set of layers together, chosen from a finished sweep's ranking")
    train.add_argument("sweep_dir")
    choose = train.add_mutually_exclusive_group(required=True)
    choose.add_argument("--top-k", type=int, help="the K best layers (by mean contribution over the sweep's seeds)")
    choose.add_argument("--layers", help="these layers, e.g. 10-19 or 3,5,7")
    choose.add_argument("--middle-block", type=int, metavar="K", help="K consecutive layers around the middle of the stack")
    train.add_argument("--seeds", type=int, nargs="+", help="trial seeds (default: the sweep's)")
    train.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    train.add_argument("--no-dashboard", action="store_true")
    train.set_defaults(handler=cmd_train)

    export = sub.add_parser("export", help="write a finished trial as an HF model directory and a small layer delta")
    export.add_argument("sweep_dir")
    export.add_argument("trial", help="trial name, e.g. layer03-s0, set03+04-s0, full-s0")
    export.add_argument("--out", required=True, help="HF model directory to write")
    export.add_argument("--delta-out", help="layer delta directory (default: <out>-delta)")
    export.add_argument("--mlflow", action="store_true", help="log the model and the delta on the trial's MLflow run")
    export.add_argument("--register", metavar="NAME", help="with --mlflow: register the logged model under NAME")
    export.set_defaults(handler=cmd_export)

    apply = sub.add_parser("apply-delta", help="rebuild an exported model from its base model and its layer delta")
    apply.add_argument("delta")
    apply.add_argument("--base", required=True, help="the base model directory (refused unless bit-identical to the trained-from base)")
    apply.add_argument("--out", required=True)
    apply.set_defaults(handler=cmd_apply_delta)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except KeyboardInterrupt as interrupted:  # Ctrl-C; a sweep's says how to continue it
        print(f"layersweep: {interrupted or 'interrupted'}", file=sys.stderr)
        return 130
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as error:
        if args.verbose:  # the one-line error stays last; -v shows where it came from
            traceback.print_exc()
        print(f"layersweep: error: {error}", file=sys.stderr)
        return 2


def console_main() -> int:
    """The `layersweep` command: `main`, then an exit that skips the interpreter's teardown.

    Once a command is done and the exit handlers have run (Ray's shutdown, MLflow's, temporary directories';
    logging's is called by this one, see `_exit_without_teardown`), Python still frees every module it imported: ~2 s for torch, transformers and MLflow's SQL
    store (measured: a process that imports them takes 1.5 s from its last line to its exit), added to every
    sweep's wall time. So the first exit handler registered, which runs last, ends the process there with the
    command's status. `main` itself, which tests and scripts call, exits normally."""
    status = {"code": 1}  # an uncaught error: Python's own status for it
    atexit.register(_exit_without_teardown, status)
    try:
        status["code"] = main()
    except SystemExit as stop:  # argparse's errors and --help
        status["code"] = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        raise
    return status["code"]


def _exit_without_teardown(status: dict[str, int]) -> None:
    """Handlers registered before `console_main` (when its module's imports ran) would run after this one, so
    what they do that matters here is done first: logging's flush and close (`logging.shutdown`). An interrupted
    command ends by SIGINT, as Python's own exit after Ctrl-C does, so a calling shell stops its loop too."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be written to it anyway
            pass
    if status["code"] == 130:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status["code"])


if __name__ == "__main__":
    sys.exit(console_main())
