"""`layersweep` command line: trial, run, resume, report, compare. The CLI prints; library code logs.

Heavy modules (Ray, torch, the driver) are imported inside the commands, so `--help` and config errors
answer at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from orchestrator.config import ConfigError, load_sweep_config, parse_override


def _load(args: argparse.Namespace):
    overrides = dict(parse_override(text) for text in args.set or [])
    return load_sweep_config(args.config, overrides)


def cmd_trial(args: argparse.Namespace) -> int:
    from workers.runner import run_trial
    from workers.spec import TrialSpec

    cfg = _load(args)
    if args.base:
        spec = TrialSpec("base", seed=args.seed if args.seed is not None else cfg.seed)
    elif args.full:
        spec = TrialSpec("full", seed=args.seed if args.seed is not None else cfg.seed)
    else:
        spec = TrialSpec("layers", tuple(args.layer), seed=args.seed if args.seed is not None else cfg.seed)
    trial_dir = Path(args.out) if args.out else cfg.sweep_dir / "trials" / spec.name

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


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.driver import run_sweep
    from orchestrator.results import sweep_exit_code

    return sweep_exit_code(run_sweep(_load(args), address=args.address, include_dashboard=not args.no_dashboard))


def cmd_resume(args: argparse.Namespace) -> int:
    from orchestrator.driver import resume_sweep
    from orchestrator.results import sweep_exit_code

    return sweep_exit_code(resume_sweep(Path(args.sweep_dir), address=args.address, include_dashboard=not args.no_dashboard))


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"layersweep: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
