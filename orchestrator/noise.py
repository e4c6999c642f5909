"""Is a gain signal or noise? Confidence intervals of seed means and accuracies, and the noise check that decides
whether S_full - S_base is large enough for contribution ratios to mean anything. Pure functions on numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

NoiseMethod = Literal["seeds (paired)", "seeds", "binomial", "absolute", "missing"]
NAN_CI = (math.nan, math.nan)


@dataclass(frozen=True)
class NoiseCheck:
    """Is the full-parameter gain S_full - S_base clearly larger than evaluation noise?

    resolved iff |gain| > threshold, threshold = z * SE(gain) (or an absolute floor when no SE exists).
    """

    gain: float
    se: float
    threshold: float
    method: NoiseMethod
    resolved: bool
    message: str


def binomial_var(p: float, n: float) -> float:
    """Variance of an accuracy p measured on n items; NaN when p is not in [0, 1] or n unknown.

    For scores that are means of rewards in [0, 1] rather than accuracies it is an upper bound.
    """
    if not (n > 0) or not (0.0 <= p <= 1.0):
        return math.nan
    return p * (1.0 - p) / n


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t CI of the mean over seeds; NaN below two finite values."""
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return NAN_CI
    mean, sem = float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * sem
    return (mean - half, mean + half)


def normal_interval(mean: float, var: float, level: float = 0.95) -> tuple[float, float]:
    if not (math.isfinite(mean) and math.isfinite(var)):
        return NAN_CI
    half = float(stats.norm.ppf(0.5 + level / 2)) * math.sqrt(var)
    return (mean - half, mean + half)


def check_noise(base_by_seed: pd.Series, full_by_seed: pd.Series, eval_size: float,
                z: float = 2.0, abs_threshold: float = 0.02) -> NoiseCheck:
    """Decide whether S_full - S_base is signal, from the best noise estimate available.

    Seed spread first (paired over seeds having both, else each kind's spread; a kind with one seed adds
    no seed variance: the base is a greedy eval of fixed weights, so it has none), then the binomial SE
    from eval_size, then an absolute floor `abs_threshold` when nothing estimates the noise.
    """
    if base_by_seed.empty or full_by_seed.empty:
        missing = "base" if base_by_seed.empty else "full"
        return NoiseCheck(math.nan, math.nan, math.nan, "missing", False,
                          f"no finished {missing} trial: contributions cannot be computed")
    base, full = float(base_by_seed.mean()), float(full_by_seed.mean())
    gain = full - base
    paired = base_by_seed.index.intersection(full_by_seed.index)
    method: NoiseMethod
    if len(paired) >= 2:
        diff = (full_by_seed[paired] - base_by_seed[paired]).to_numpy(float)
        se, method = float(diff.std(ddof=1) / math.sqrt(len(diff))), "seeds (paired)"
    elif len(base_by_seed) >= 2 or len(full_by_seed) >= 2:
        var = sum(s.var(ddof=1) / len(s) for s in (base_by_seed, full_by_seed) if len(s) >= 2)
        se, method = math.sqrt(var), "seeds"
    else:
        se, method = math.sqrt(binomial_var(base, eval_size) + binomial_var(full, eval_size)), "binomial"
    if math.isfinite(se):
        threshold = z * se
    else:
        threshold, method = abs_threshold, "absolute"
    resolved = abs(gain) > threshold
    noise_text = f"{z:g}xSE={threshold:.3f}, {method}" if method != "absolute" else f"absolute threshold {threshold:.3f}"
    if gain == 0:
        message = "S_full == S_base: there is no gain to attribute; contributions omitted, raw deltas S_i - S_base shown"
    elif not resolved:
        message = (f"S_full - S_base = {gain:+.3f} is within noise ({noise_text}); "
                   "contributions omitted, raw deltas S_i - S_base shown")
    else:
        message = f"S_full - S_base = {gain:+.3f} is above noise ({noise_text})"
        if gain < 0:
            message += "; full training made the model worse, so contribution measures how much of that loss a layer reproduces"
    return NoiseCheck(gain, se, threshold, method, resolved, message)
