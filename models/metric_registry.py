"""One home for every metric the service reports, keyed by name (as NVlabs' `metric_main`
keeps a registry): adding a metric is one registered function and one test.

Two kinds of input:
- "features": two feature sets, `real` (N, D) and `fake` (M, D) float tensors, e.g. a real
  reference and synthetic patches through the same extractor (models/fidelity.py);
- "classification": `labels` (0/1) and `probs` (P(class 1)) of a test set
  (models/classification_metrics.py; the evaluate job's rows).
Each function returns a JSON-ready dict; `compute` runs the ones asked for. This module is
the mechanism only: models/all_metrics.py imports the modules that register the built-in
metrics, and is what callers use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Metric", "register", "compute", "names", "METRICS"]

KINDS = ("features", "classification")


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str
    fn: Callable[..., dict[str, Any]]
    description: str


METRICS: dict[str, Metric] = {}


def register(name: str, kind: str, description: str) -> Callable:
    if kind not in KINDS:
        raise ValueError(f"metric kind must be one of {KINDS}, got {kind!r}")

    def add(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = Metric(name, kind, fn, description)
        return fn

    return add


def names(kind: str | None = None) -> list[str]:
    return sorted(m.name for m in METRICS.values() if kind is None or m.kind == kind)


def compute(metric_names: list[str], **inputs: Any) -> dict[str, dict[str, Any]]:
    """{name: result} for each named metric, all given the same keyword inputs."""
    unknown = sorted(set(metric_names) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    return {name: METRICS[name].fn(**inputs) for name in metric_names}
