"""Summary statistics over repeats: median, min/max, MAD and a bootstrap interval."""
from __future__ import annotations

import numpy as np


def summarize(values, seed: int = 0, resamples: int = 2000) -> dict | None:
    """Median and spread of repeated measurements (None for no values)."""
    xs = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if xs.size == 0:
        return None
    median = float(np.median(xs))
    out = {
        "n": int(xs.size),
        "median": median,
        "min": float(xs.min()),
        "max": float(xs.max()),
        "mad": float(np.median(np.abs(xs - median))),
    }
    if xs.size >= 3:
        rng = np.random.default_rng(seed)
        samples = rng.choice(xs, size=(resamples, xs.size), replace=True)
        medians = np.median(samples, axis=1)
        out["ci95"] = [float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))]
    else:
        out["ci95"] = None
    return out
