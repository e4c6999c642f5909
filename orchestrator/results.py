"""The results-table row of one trial: one schema for the live progress line and the final parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from workers.spec import TrialSpec

CONFIG_FILE = "config.yaml"
"""The resolved sweep config, in the sweep directory."""
PLAN_FILE = "plan.json"
RESULTS_FILE = "results.parquet"
TUNE_DIR = "tune"
"""Ray Tune's experiment directory inside the sweep directory (what `layersweep resume` restores)."""
PROBE_TABLE = "probe.csv"
PROBE_INFO = "probe.json"
"""`layersweep probe`'s signals per layer and what they were measured on, in the sweep directory."""
TRIALS_DIR = "trials"
"""Inside the sweep directory: one directory per trial (metrics.jsonl, score.json, trained.safetensors)."""


def trial_dir(sweep_dir: Path, trial: str) -> Path:
    return Path(sweep_dir) / TRIALS_DIR / trial


FINISHED = ("done", "no_learning")
ENDED_AS_PLANNED = (*FINISHED, "stopped")
"""`stopped`: a layer trial that early stopping ended; it has no held-out score and is never ranked."""


def spec_from_config(config: dict[str, Any]) -> TrialSpec:
    """The TrialSpec inside a Tune trial's config (see driver.run_sweep's param_space)."""
    return TrialSpec.from_dict(config["trial"]["spec"])


def label_from_config(config: dict[str, Any]) -> str | None:
    """How a `layersweep train` subset was chosen (`top-2`), when the trial is one."""
    return config["trial"].get("label")


SECONDARY_SCORES = ("success_greedy", "success_sampled")
"""Held-out rates reported beside `score` (agentic tasks report both decodings); pass@k columns are kept too."""


def is_secondary_score(name: str) -> bool:
    return name in SECONDARY_SCORES or name.startswith("pass@")


def secondary_scores(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if is_secondary_score(k)}


def finished_status(metrics: dict[str, Any]) -> str:
    """A finished trial's status: `no_learning` when it trained without a learning signal, else `done`."""
    return "no_learning" if metrics.get("learned") is False else "done"


def trial_row(sweep: str, spec: TrialSpec, num_layers: int, metrics: dict[str, Any], status: str, error: str | None = None,
              label: str | None = None) -> dict[str, Any]:
    """status: done | running | failed | stopped (ended early by early stopping: no held-out score, never ranked) |
    no_learning (a training trial whose weights did not move with a learning signal: it finished, its score is
    kept for the record, but it is never ranked); `score` is kept only for finished trials. `layers` spells the trained layers (`3+4`) of layer and subset trials; `label` says how a
    subset was chosen (`top-2`)."""
    finished = status in FINISHED
    return {
        "sweep": sweep,
        "trial": spec.name,
        "kind": spec.kind,
        "layer": spec.layers[0] if spec.kind == "layers" else None,
        "layers": "+".join(str(i) for i in spec.layers) or None,
        "label": label,
        "num_layers": num_layers,
        "seed": spec.seed,
        "score": float(metrics["score"]) if finished else None,
        "status": status,
        "steps": int(metrics.get("steps", metrics.get("step", 0)) or 0),
        "eval_size": metrics.get("eval_size"),
        "trainable_parameters": metrics.get("trainable_parameters"),
        "trainable_checksum": metrics.get("trainable_checksum"),
        "learned": metrics.get("learned"),
        "node": metrics.get("node"),
        "restored_at_step": metrics.get("restored_at_step"),
        "error": error,
        **(secondary_scores(metrics) if finished else {}),
    }


def results_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.sort_values(["kind", "layer", "layers", "seed"], na_position="first", ignore_index=True)
    table["layer"] = table["layer"].astype("Int64")
    return table


def load_results(sweep_dir: Path) -> pd.DataFrame:
    """A finished sweep's results table; a one-line error when the directory holds none."""
    path = sweep_dir / RESULTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (is {sweep_dir} a finished sweep?)")
    return pd.read_parquet(path)




def sweep_verdict(table: pd.DataFrame, min_finished_layer_share: float = 1.0) -> tuple[int, str | None]:
    """(exit status, why when not 0) of a finished sweep, `layersweep train` run or resume: what a cluster's job
    status reports (a RayJob fails on non-zero).

    1 when a base, full-parameter or trained-set trial failed, or when fewer than `min_finished_layer_share` of
    the layer trials finished; 3 when training trials finished but none learnt (as `layersweep trial` does for
    one); else 0.
    """
    def failures(kinds: tuple[str, ...]) -> pd.DataFrame:
        return table[table["kind"].isin(kinds) & ~table["status"].isin(ENDED_AS_PLANNED)]

    def listed(rows: pd.DataFrame) -> str:
        errors = rows["error"] if "error" in rows.columns else pd.Series([None] * len(rows), index=rows.index)
        return "; ".join(f"{t}: {e}" if isinstance(e, str) and e else str(t) for t, e in zip(rows["trial"], errors))

    references = failures(("base", "full", "subset"))
    if len(references):
        return 1, f"{len(references)} reference or trained-set trial(s) did not finish ({listed(references)})"
    layers = table[table["kind"] == "layers"]
    if len(layers):
        share = float(layers["status"].isin(ENDED_AS_PLANNED).mean())
        if share < min_finished_layer_share:
            failed = failures(("layers",))
            return 1, (f"{share:.0%} of the layer trials finished, below min_finished_layer_share="
                       f"{min_finished_layer_share:g} ({listed(failed)})")
    training = table[table["kind"] != "base"]
    if training.empty or (training["status"] == "done").any():
        return 0, None
    return 3, "no training trial learnt (all-zero advantages or unchanged weights); their scores are kept"
