"""SweepConfig: the TrialConfig every trial shares, plus what only the sweep needs (layers, seeds, resources,
tracking). YAML files in `configs/` are presets of this one tree; errors are one line naming field and value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from workers.algorithms.probe_signals import SIGNALS
from workers.config import TrialConfig
from rollout.basics import Section


class LayerRange(Section):
    start: int = Field(0, ge=0)
    stop: int | None = None
    """Exclusive; None = the model's number of layers."""
    step: int = Field(1, ge=1)


class ResourcesConfig(Section):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    """Fractions pack several small-model trials onto one GPU (e.g. 0.25 = four per GPU)."""
    max_concurrent_trials: int | None = Field(None, ge=1)
    """None = as many as the cluster's resources allow."""
    require_fit: bool = True
    """Fail before any trial starts when no alive node can hold one trial; turn off on autoscaling clusters
    whose nodes appear on demand."""
    reuse_actors: bool = True
    """A warm trial actor takes the next trial when its own ends (Tune's reuse_actors): no process start and no
    imports per trial. Tune hands a pending trial the first warm actor that frees up, cancelling the actor still
    starting for it, so trials shorter than an actor's start can all run on one node; turn off to give every
    trial its own new actor (trials then spread over nodes as their resources allow)."""
    lend_idle_cpus: bool = False
    """On: in a sweep's tail, when fewer trials are left than slots, CPU trials on a one-node cluster take the
    idle slots' CPUs as extra torch threads (rechecked every 5 s), so no core idles until the last trial ends.
    Off by default: a trial's thread count then depends on when the others finish, and a different count can
    change float reductions, so a rerun is no longer bit-identical. Never with `num_threads` set."""

    @model_validator(mode="after")
    def _whole_above_one(self) -> "ResourcesConfig":
        for field in ("cpus_per_trial", "gpus_per_trial"):
            value = getattr(self, field)
            if value > 1 and value != int(value):
                raise ValueError(f"{field}={value:g}: Ray accepts fractions only below 1; counts above 1 must be whole numbers")
        return self


class EarlyStopConfig(Section):
    """Successive halving (ASHA) over the layer trials; base and full always run to the end."""

    grace_steps: int = Field(25, ge=1)
    """No layer trial is stopped before this step; later checks come at grace * factor, grace * factor^2, ... below
    budget.steps. About N / factor^checks of N layer trials run to the end and get a held-out score: with 100
    steps, grace 25 and factor 2 (checks at 25 and 50) a quarter of them; grace 10 and factor 3 (10, 30, 90)
    leave fewer than one of 18."""
    reduction_factor: float = Field(2.0, gt=1)
    """At each check only the best 1/factor of the trials that reached that step continue."""
    smoothing_steps: int = Field(5, ge=1)
    """The compared signal is the mean training reward over this many latest steps (one step is noisy)."""
    synchronous: bool = False
    """Wait at each check until every layer trial of the same seed still in the race reached it, then let that
    seed's best 1/factor go on (synchronous successive halving; each seed keeps its own best layers). ASHA (false)
    decides as each trial arrives: the first trial at a check always goes on, so when it is the weaker one both
    run to the end. Synchronous halving spends exactly grace x N + the survivors' steps, at the price of pausing
    (a checkpoint and a restore) the trials that wait."""


class ProbeConfig(Section):
    """Probe, then train only the top layers: zero-training signals (`layersweep probe`) measured on base-model
    rollouts pick `top_m` of the candidate layers, and only those get RL trials (base and full always run)."""

    top_m: int = Field(3, ge=1)
    """How many of the candidate layers, best by `signal`, get a trial."""
    signal: Literal[SIGNALS] = "lookahead"  # type: ignore[valid-type]
    """lookahead: held-out surrogate gain of a single-layer first AdamW step; relative_gradient / grad_norm: the
    layer's policy-gradient size (over its weight norm / absolute); block_influence: 1 - cos(layer input, output)."""
    batches: int = Field(8, ge=2)
    """Rollout batches of the base model (the prompts of the first `batches` steps): even ones give the gradient,
    odd ones are held out for the lookahead."""


class TrackingConfig(Section):
    tracking_uri: str | None = None
    """MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/<name>/mlflow.db."""
    experiment: str = "layersweep"
    flush_every_s: float = Field(5.0, ge=0.0)
    """Write each trial's step metrics to MLflow at most this often (0: every step): a write per step took ~6% of
    a core from the trials on a 2-core machine. Every step up to a trial's checkpoint and its end is written."""


class SweepConfig(TrialConfig):
    name: str = "default"
    """Sweep name; also the directory under output_dir that holds its results."""
    layers: Literal["all"] | list[int] | LayerRange = "all"
    """Candidate layers: all, an explicit list, or {start, stop, step}."""
    seeds: list[int] | None = None
    """Run every trial once per seed; None = just `seed`."""
    include_base: bool = True
    include_full: bool = True
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    output_dir: str = Field(default_factory=lambda: os.environ.get("LAYERSWEEP_OUTPUT_DIR", "runs"))
    """Where sweep directories go: $LAYERSWEEP_OUTPUT_DIR (the cluster manifests set it to the shared volume every
    pod mounts, /mnt/layersweep/sweeps), else `runs` under the working directory."""
    max_failures: int = Field(2, ge=0)
    """Retries per trial; a retry resumes from the trial's last checkpoint."""
    early_stop: EarlyStopConfig | None = None
    """Stop weak layer trials early (ASHA on the moving training reward); None = every trial runs to the end.
    Stopped trials are reported as `stopped` and never ranked."""
    probe: ProbeConfig | None = None
    """Probe the candidate layers first and run trials only for the best `probe.top_m`; None = every candidate."""
    progress_every_s: float = Field(30.0, gt=0)
    """Seconds between the driver's progress lines (steps done over all trials, ETA, best layer so far)."""
    min_finished_layer_share: float = Field(1.0, ge=0, le=1)
    """The sweep exits non-zero (a `ray job` / RayJob then fails) when fewer than this share of its layer trials
    finished; a failed base or full-parameter trial always does."""

    @model_validator(mode="after")
    def _seeds_unique(self) -> "SweepConfig":
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds} repeats a seed")
        if isinstance(self.layers, list) and any(i < 0 for i in self.layers):
            raise ValueError(f"layers={self.layers} has a negative index")
        if self.early_stop is not None and self.early_stop.synchronous and self.resources.max_concurrent_trials is not None:
            raise ValueError(f"early_stop.synchronous pauses trials at each check, and Tune counts paused trials against "
                             f"resources.max_concurrent_trials={self.resources.max_concurrent_trials}, so the trials they "
                             f"wait for might never start: leave it unset (cpus_per_trial bounds how many run)")
        return self

    def trial_config(self, seed: int | None = None) -> TrialConfig:
        data = self.model_dump(include=set(TrialConfig.model_fields))
        if seed is not None:
            data["seed"] = seed
        return TrialConfig.model_validate(data)

    @property
    def seed_list(self) -> list[int]:
        """The seeds every trial runs with: `seeds`, else just `seed`."""
        return self.seeds or [self.seed]

    @property
    def sweep_dir(self) -> Path:
        return Path(self.output_dir) / self.name


class ConfigError(ValueError):
    """A bad config value; the message is one line naming the field and the value."""


def _first_error_line(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "<root>"
    message = first["msg"].removeprefix("Value error, ")
    shown = first.get("input")
    value = "" if isinstance(shown, dict) else f" = {shown!r}"
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{field}{value}: {message}{more}"


def parse_sweep_config(data: dict[str, Any], source: str = "<config>") -> SweepConfig:
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_first_error_line(error)}") from None


def load_sweep_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    if data is None:  # an empty file (or comments only) is far more often a mistake than a wish for defaults
        raise ConfigError(f"{path}: the config file is empty; write {{}} in it to run every default")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return parse_sweep_config(data, str(path))


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`budget.steps=5` -> ("budget.steps", 5); values parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)
