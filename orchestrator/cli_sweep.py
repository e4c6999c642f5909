"""Sweep subcommands of the `layersweep` CLI: run, resume, report, compare."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable


def sweep_exit_code(table) -> int:
    """0 when some training trial finished having learnt; 3 when training trials finished but none learnt
    (as `layersweep trial` does for one); 1 when nothing finished."""
    training = table[table["kind"] != "base"]
    if (training["status"] == "done").any() or (training.empty and (table["status"] == "done").any()):
        return 0
    return 3 if (training["status"] == "no_learning").any() else 1


def cmd_run(args: argparse.Namespace, load: Callable) -> int:
    from orchestrator.driver import run_sweep

    cfg = load(args)
    return sweep_exit_code(run_sweep(cfg, address=args.address, include_dashboard=not args.no_dashboard))


def cmd_resume(args: argparse.Namespace, load: Callable) -> int:
    from orchestrator.driver import resume_sweep

    return sweep_exit_code(resume_sweep(Path(args.sweep_dir), address=args.address, include_dashboard=not args.no_dashboard))


def cmd_report(args: argparse.Namespace, load: Callable) -> int:
    import pandas as pd

    from orchestrator.driver import RESULTS_FILE
    from orchestrator.reporting import render_sweep

    sweep_dir = Path(args.sweep_dir)
    results = sweep_dir / RESULTS_FILE
    if not results.exists():
        raise FileNotFoundError(f"{results} does not exist (is {sweep_dir} a finished sweep?)")
    files, text, _ = render_sweep(pd.read_parquet(results), sweep_dir)
    print(text)
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def cmd_compare(args: argparse.Namespace, load: Callable) -> int:
    from orchestrator.reporting import compare_sweep_dirs

    text, files = compare_sweep_dirs([Path(d) for d in args.sweep_dirs], Path(args.out) if args.out else None)
    print(text)
    if files:
        print("wrote " + ", ".join(str(f) for f in files))
    return 0


def add_sweep_commands(sub: argparse._SubParsersAction, load: Callable) -> None:
    def bind(command: Callable) -> Callable:
        return lambda args: command(args, load)

    run = sub.add_parser("run", help="run a sweep: base, full reference and one trial per candidate layer, on Ray Tune")
    run.add_argument("config", nargs="?", default=str(Path(__file__).resolve().parent.parent / "configs" / "default.yaml"))
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    run.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard (local Ray only)")
    run.set_defaults(handler=bind(cmd_run))

    resume = sub.add_parser("resume", help="continue a sweep whose driver died; finished trials are not rerun")
    resume.add_argument("sweep_dir")
    resume.add_argument("--address")
    resume.add_argument("--no-dashboard", action="store_true")
    resume.set_defaults(handler=bind(cmd_resume))

    report = sub.add_parser("report", help="re-render ranking tables and the contribution plot from stored results")
    report.add_argument("sweep_dir")
    report.set_defaults(handler=bind(cmd_report))

    compare = sub.add_parser("compare", help="Spearman/Kendall correlation of layer rankings across sweeps")
    compare.add_argument("sweep_dirs", nargs="+")
    compare.add_argument("--out", help="directory for comparison.csv / comparison.png (default: the first sweep dir)")
    compare.set_defaults(handler=bind(cmd_compare))
