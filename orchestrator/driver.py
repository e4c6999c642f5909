"""The sweep driver: plan trials, run each as one Ray Tune trial, track in MLflow, aggregate and report.

Local runs start Ray themselves; `--address` / RAY_ADDRESS joins a cluster, and inside `ray job submit`
`ray.init()` attaches to the job's cluster. Every trial asks for the configured CPUs / GPU fraction.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import ray
import yaml
from ray import tune

from orchestrator.callbacks import MlflowForwarder, ProgressPrinter
from orchestrator.config import EarlyStopConfig, SweepConfig, parse_sweep_config
from orchestrator.early_stop import layer_scheduler
from orchestrator.plan import plan_trials
from orchestrator.probe import probe_choice, probe_text, run_probe, write_probe
from orchestrator.report import choice_message, render_sweep
from orchestrator.results import (FINISHED, CONFIG_FILE, PLAN_FILE, RESULTS_FILE, TRIALS_DIR, TUNE_DIR, finished_status, label_from_config,
                                  load_results, results_frame, spec_from_config, trial_row)
from orchestrator.startup import (CheckedInputs, ProbeOutcome, in_background, inputs_while_ray_starts, probe_runs_in_driver,
                                  probe_threads, start_checked_ray)
from orchestrator.tracking import SweepTracker, resolve_tracking_uri
from orchestrator.tune_trainable import LayerTrainable
from workers.spec import TrialSpec

log = logging.getLogger(__name__)


def _connect(cfg: SweepConfig, sweep_dir: Path, dashboard: str | None, emit: Callable[[str], None]) -> tuple[str, SweepTracker]:
    """Open (or reopen, on resume) the sweep's MLflow parent run."""
    if dashboard:
        emit(f"Ray dashboard: {dashboard}")
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri, sweep_dir)
    tracker = SweepTracker(uri, cfg.tracking.experiment, sweep_dir)
    resolved = json.loads((sweep_dir / PLAN_FILE).read_text()).get("resolved", {})
    tracker.start_sweep(cfg.name, cfg.model_dump(mode="json"), resolved)
    return uri, tracker


def _trial_name(trial: Any) -> str:
    return spec_from_config(trial.config).name


def _trainable(cfg: SweepConfig) -> Any:
    resources = {"cpu": cfg.resources.cpus_per_trial, "gpu": cfg.resources.gpus_per_trial}
    return tune.with_resources(LayerTrainable, resources)


def _probe_then_choose(cfg: SweepConfig, sweep_dir: Path, candidates: list[int], emit: Callable[[str], None],
                       outcome: ProbeOutcome | None = None) -> dict[str, Any]:
    """Run the probe (unless `outcome` holds its result already) as one Ray task with a trial's resources (on a
    cluster it needs what a trial needs, e.g. a GPU), write its table into the sweep directory and choose the
    layers that get trials."""
    assert cfg.probe is not None
    resources = cfg.resources
    where = "driver process"
    if outcome is None:
        probe_task = ray.remote(num_cpus=resources.cpus_per_trial, num_gpus=resources.gpus_per_trial, max_retries=0)(run_probe)
        try:
            outcome = ray.get(probe_task.remote(cfg, candidates, cfg.probe.batches, probe_threads(cfg)))
        except ray.exceptions.RayTaskError as error:  # the probe's own one-line error, not the remote traceback
            raise error.cause from None
        where = "Ray task"
    table, info = outcome[0], {**outcome[1], "ran_in": where}
    write_probe(sweep_dir, table, info)
    choice = probe_choice(cfg.probe, candidates, table)
    emit(probe_text(table, info))
    emit(choice_message(choice))
    return choice


def prepare(cfg: SweepConfig, checked: CheckedInputs, emit: Callable[[str], None] = print) -> tuple[Path, list[TrialSpec], int]:
    """Write the resolved config, probe the candidate layers when the sweep trains only the probe's top ones,
    plan the trials."""
    resolved, num_layers, candidates = checked.resolved, checked.num_layers, checked.candidates
    sweep_dir = cfg.sweep_dir.resolve()  # written only once the inputs are known good: a bad config run
    choice = _probe_then_choose(cfg, sweep_dir, candidates, emit, checked.probe) if cfg.probe else None
    specs = plan_trials(cfg, num_layers, choice["chosen"] if choice else candidates)
    sweep_dir.mkdir(parents=True, exist_ok=True)  # over an earlier sweep's directory leaves it as it was
    (sweep_dir / CONFIG_FILE).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    plan = {"num_layers": num_layers, "resolved": resolved, "trials": [s.to_dict() for s in specs],
            **({"probe": choice} if choice else {})}
    (sweep_dir / PLAN_FILE).write_text(json.dumps(plan, indent=2))
    return sweep_dir, specs, num_layers


def run_sweep(cfg: SweepConfig, address: str | None = None, emit: Callable[[str], None] = print, include_dashboard: bool = True) -> pd.DataFrame:
    started = time.time()
    probe_here = probe_runs_in_driver(cfg, address)  # before Ray starts: it asks whether Ray is up already
    checked = in_background(lambda: inputs_while_ray_starts(cfg, probe_here))
    dashboard = start_checked_ray(cfg, address, include_dashboard)
    sweep_dir, specs, num_layers = prepare(cfg, checked(), emit)
    uri, tracker = _connect(cfg, sweep_dir, dashboard, emit)
    emit(f"sweep {cfg.name}: {len(specs)} trials on a {num_layers}-layer model; MLflow {uri}")
    results = fit_or_interrupt(_tuner(cfg, sweep_dir, specs, TUNE_DIR, uri, num_layers, emit), sweep_dir)
    return finish(cfg, sweep_dir, results_table(cfg, results, num_layers), tracker, num_layers, time.time() - started, emit)


def _tuner(cfg: SweepConfig, sweep_dir: Path, specs: list[TrialSpec], experiment: str, uri: str, num_layers: int,
           emit: Callable[[str], None], label: str | None = None) -> tune.Tuner:
    """One Tune trial per spec, each with its seed's trial config; `experiment` names the Tune directory."""
    per_seed = {seed: cfg.trial_config(seed).model_dump(mode="json") for seed in {s.seed for s in specs}}
    param_space = {
        "trial": tune.grid_search([{"spec": s.to_dict(), "trial_config": per_seed[s.seed], "label": label} for s in specs]),
        "trials_dir": str(sweep_dir / TRIALS_DIR),
        "signal_window": (cfg.early_stop or EarlyStopConfig()).smoothing_steps,
        "lend_idle_cpus": cfg.resources.lend_idle_cpus,
        "max_concurrent_trials": cfg.resources.max_concurrent_trials,
    }
    return tune.Tuner(
        _trainable(cfg),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            max_concurrent_trials=cfg.resources.max_concurrent_trials,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
            scheduler=layer_scheduler(cfg.early_stop, cfg.budget.steps, specs) if cfg.early_stop else None,
            reuse_actors=cfg.resources.reuse_actors,  # warm actors run trial after trial (LayerTrainable.reset_config)
        ),
        run_config=_run_config(cfg, sweep_dir, experiment, uri, len(specs), num_layers, emit),
    )


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) ended the sweep's Tune run early; Tune saved its state, so `layersweep resume` continues."""


def fit_or_interrupt(tuner: tune.Tuner, sweep_dir: Path) -> Any:
    """`tuner.fit()`, raising SweepInterrupted when Ctrl-C ended it. Tune catches the first SIGINT itself: it saves
    its state, stops the trials and returns as if done, and its handler puts back the one it found. So a
    sentinel handler is put in place before, and finding it back afterwards means Tune was interrupted (tables and
    reports of an interrupted sweep would show unstarted trials as failed)."""
    if threading.current_thread() is not threading.main_thread() or os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") != "0":
        return tuner.fit()
    found = signal.getsignal(signal.SIGINT)

    def sentinel(signum: int, frame: Any) -> None:  # a second Ctrl-C, after Tune put this one back
        signal.signal(signal.SIGINT, found)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, sentinel)
    try:
        results = tuner.fit()
    finally:
        interrupted = signal.getsignal(signal.SIGINT) is sentinel
        signal.signal(signal.SIGINT, found)
    if interrupted:
        raise SweepInterrupted(f"interrupted; Tune saved the sweep's state: `layersweep resume {sweep_dir}` continues it")
    return results


def load_sweep(sweep_dir: Path) -> tuple[Path, SweepConfig, int]:
    """(resolved dir, config, model depth) of an existing sweep directory; one-line errors otherwise."""
    sweep_dir = sweep_dir.resolve()
    config_path = sweep_dir / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(f"{sweep_dir} is not a sweep directory (no {CONFIG_FILE})")
    cfg = parse_sweep_config(yaml.safe_load(config_path.read_text()), str(config_path))
    return sweep_dir, cfg, json.loads((sweep_dir / PLAN_FILE).read_text())["num_layers"]


def train_subset(sweep_dir: Path, layers: tuple[int, ...], label: str, seeds: list[int] | None = None,
                 address: str | None = None, emit: Callable[[str], None] = print,
                 include_dashboard: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Train `layers` together, one trial per seed, with the sweep's config otherwise; the rows join the
    sweep's results table and report, the runs nest under the sweep's MLflow parent run. Returns the whole
    table and the names of the trials this call ran. An interrupted `train` is continued by running the same
    `train` again (finished seeds are kept), not by `resume`, which restores the sweep's own trials."""
    started = time.time()
    sweep_dir, cfg, num_layers = load_sweep(sweep_dir)
    previous = load_results(sweep_dir)  # the sweep must have finished: its ranking chose these layers
    seeds = seeds or cfg.seed_list
    specs = [TrialSpec("subset", tuple(sorted(layers)), seed=seed) for seed in seeds]
    finished_before = set(previous.loc[previous["status"].isin(FINISHED), "trial"])
    if all(spec.name in finished_before for spec in specs):
        raise ValueError(f"{', '.join(s.name for s in specs)} already finished in {sweep_dir}; their results are kept "
                         "(choose other seeds with --seeds)")
    specs = [spec for spec in specs if spec.name not in finished_before]
    dashboard = start_checked_ray(cfg, address, include_dashboard)
    uri, tracker = _connect(cfg, sweep_dir, dashboard, emit)
    experiment = f"{TUNE_DIR}-{specs[0].name.rsplit('-s', 1)[0]}"
    emit(f"sweep {cfg.name}: training layers {'+'.join(map(str, specs[0].layers))} together ({label}), "
         f"seeds {seeds}; MLflow {uri}")
    results = fit_or_interrupt(_tuner(cfg, sweep_dir, specs, experiment, uri, num_layers, emit, label), sweep_dir)
    table = with_earlier_rows(sweep_dir, results_table(cfg, results, num_layers))
    return finish(cfg, sweep_dir, table, tracker, num_layers, time.time() - started, emit), [s.name for s in specs]


def with_earlier_rows(sweep_dir: Path, added: pd.DataFrame) -> pd.DataFrame:
    """`added` plus the stored results' rows of other trials (a `train` run keeps the sweep's rows, a resumed
    sweep keeps the subsets trained after it); a trial present in both takes its new row."""
    path = sweep_dir / RESULTS_FILE
    if not path.exists():
        return added
    previous = pd.read_parquet(path)
    return pd.concat([previous[~previous["trial"].isin(added["trial"])], added], ignore_index=True)


def _run_config(cfg: SweepConfig, sweep_dir: Path, experiment: str, uri: str, total: int, num_layers: int,
                emit: Callable[[str], None]) -> tune.RunConfig:
    return tune.RunConfig(
        name=experiment,
        storage_path=str(sweep_dir),
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=cfg.checkpoint_every, num_to_keep=2),
        callbacks=[MlflowForwarder(uri, cfg.tracking.experiment, str(sweep_dir), cfg.tracking.flush_every_s),
                   ProgressPrinter(cfg.name, total, num_layers, cfg.budget.steps, cfg.progress_every_s, emit)],
        verbose=0,
    )


def resume_sweep(sweep_dir: Path, address: str | None = None, emit: Callable[[str], None] = print, include_dashboard: bool = True) -> pd.DataFrame:
    started = time.time()
    sweep_dir, cfg, num_layers = load_sweep(sweep_dir)
    tune_dir = sweep_dir / TUNE_DIR
    if not tune.Tuner.can_restore(str(tune_dir)):
        raise FileNotFoundError(f"{tune_dir} holds no restorable Tune experiment")
    dashboard = start_checked_ray(cfg, address, include_dashboard)
    uri, tracker = _connect(cfg, sweep_dir, dashboard, emit)
    emit(f"resuming sweep {cfg.name} from {tune_dir}")
    tuner = tune.Tuner.restore(str(tune_dir), trainable=_trainable(cfg), resume_unfinished=True, resume_errored=True)
    results = fit_or_interrupt(tuner, sweep_dir)
    table = with_earlier_rows(sweep_dir, results_table(cfg, results, num_layers))
    return finish(cfg, sweep_dir, table, tracker, num_layers, time.time() - started, emit)


def results_table(cfg: SweepConfig, results: Any, num_layers: int) -> pd.DataFrame:
    rows = []
    for result in results:
        spec = spec_from_config(result.config)
        metrics = result.metrics or {}
        done = result.error is None and "score" in metrics
        error = str(result.error).strip().splitlines()[-1][:300] if result.error else None
        stopped = cfg.early_stop is not None and spec.kind == "layers" and result.error is None and not done
        status = finished_status(metrics) if done else "stopped" if stopped else "failed"
        rows.append(trial_row(cfg.name, spec, num_layers, metrics, status, error, label_from_config(result.config)))
    return results_frame(rows)


def finish(cfg: SweepConfig, sweep_dir: Path, table: pd.DataFrame, tracker: SweepTracker, num_layers: int, seconds: float,
           emit: Callable[[str], None]) -> pd.DataFrame:
    table = results_frame(table.to_dict("records"))
    table.to_parquet(sweep_dir / RESULTS_FILE, index=False)
    artifacts, summary_text, summary_metrics = render_sweep(table, sweep_dir)
    failed = int((table["status"] == "failed").sum())
    tracker.finish_sweep([sweep_dir / RESULTS_FILE, *artifacts], status="FAILED" if failed == len(table) else "FINISHED",
                         metrics={"wall_seconds": seconds, "failed_trials": float(failed), **summary_metrics})
    emit(summary_text)
    for row in table[table["status"] == "failed"].itertuples():
        emit(f"FAILED {row.trial}: {row.error}")
    emit(f"sweep finished in {seconds:.0f} s; results in {sweep_dir}")
    return table
