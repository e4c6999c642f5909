"""`layersweep` command line: trial, run, resume, report, compare. The CLI prints; library code logs."""

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layersweep", description=__doc__)
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

    try:
        from orchestrator.cli_sweep import add_sweep_commands
    except ImportError:
        add_sweep_commands = None
    if add_sweep_commands is not None:
        add_sweep_commands(sub, _load)
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
