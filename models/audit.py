"""The fidelity and privacy audit of a synthetic set: how close to real, how varied, how private.

Three uint8 sets of one label: `synthetic` (a generator's samples), `train` (the real patches
that generator was trained on) and `holdout` (real patches of patients it never saw). One
feature extractor embeds all three (models/feature_extractors.py), then:

- fidelity: every registered feature metric (models/fidelity.py) of synthetic against holdout;
- the reference floor: the same metrics of real training patches against the same holdout,
  with as many samples as the synthetic side: what "as good as real" scores here, so a reader
  sees the gap rather than a bare number;
- memorization (models/memorization.py): synthetic-to-train nearest neighbours against
  holdout-to-train ones.

Samples are drawn (seeded) down to `max_samples` per set; the memorization search uses up to
`max_train` training patches (all of them by default: a copy of any one of them counts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models import all_metrics
from models.feature_extractors import FeatureExtractor
from models.fidelity import FEATURE_METRICS, FID_UNBIASED_N
from models.memorization import Memorization, memorization

__all__ = ["AuditResult", "run_audit", "audit_markdown", "sample_rows"]


def sample_rows(n: int, k: int, seed: int) -> np.ndarray:
    """Up to k of range(n), seeded, in increasing order (memmaps read in file order)."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


@dataclass
class AuditResult:
    summary: dict[str, Any]
    memorization: Memorization
    synthetic_rows: np.ndarray  # rows of the synthetic set that were audited
    train_rows: np.ndarray
    holdout_rows: np.ndarray


def run_audit(synthetic: Any, train: Any, holdout: Any, extractor: FeatureExtractor, max_samples: int = 10_000,
              max_train: int = 50_000, seed: int = 0, k: int = 5, device: str | torch.device = "cpu",
              metrics: tuple[str, ...] = FEATURE_METRICS, pixel_size: int = 16,
              progress_fn: Callable[[int, int, dict], None] | None = None) -> AuditResult:
    rows = {"synthetic": sample_rows(len(synthetic), max_samples, seed),
            "train": sample_rows(len(train), max_train, seed + 1),
            "holdout": sample_rows(len(holdout), max_samples, seed + 2)}
    sets = {"synthetic": synthetic, "train": train, "holdout": holdout}
    images = {name: np.ascontiguousarray(sets[name][rows[name]]) for name in sets}
    feats = {}
    for i, name in enumerate(sets):
        feats[name] = extractor(images[name], device=device)
        if progress_fn is not None:
            progress_fn(i + 1, 5, {"stage": f"features {name}"})
    n = min(len(feats["synthetic"]), len(feats["holdout"]))
    floor_rows = sample_rows(len(feats["train"]), len(feats["synthetic"]), seed + 3)
    fidelity = all_metrics.compute(list(metrics), real=feats["holdout"], fake=feats["synthetic"], k=k, seed=seed)
    floor = all_metrics.compute(list(metrics), real=feats["holdout"], fake=feats["train"][floor_rows], k=k,
                                    seed=seed)
    if progress_fn is not None:
        progress_fn(4, 5, {"stage": "fidelity"})
    memo = memorization(feats["synthetic"], feats["train"], feats["holdout"], images["synthetic"], images["train"],
                        images["holdout"], pixel_size=pixel_size)
    if progress_fn is not None:
        progress_fn(5, 5, {"stage": "memorization"})
    summary = {
        "features": extractor.identity,
        "counts": {name: int(len(r)) for name, r in rows.items()},
        "available": {name: int(len(s)) for name, s in sets.items()},
        "seed": seed, "k": k,
        "small_sample": n < FID_UNBIASED_N,
        "fidelity": _merge(fidelity),
        "real_floor": _merge(floor),
        "memorization": memo.summary,
    }
    return AuditResult(summary, memo, rows["synthetic"], rows["train"], rows["holdout"])


def _merge(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{metric: {values}} -> one flat dict of values (the sample counts live in `counts`)."""
    out: dict[str, Any] = {}
    for values in results.values():
        out.update({k: v for k, v in values.items() if not k.startswith("n_")})
    return out


def _f(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


FIDELITY_ROWS = (("fid", "FID (lower is better)"), ("kid", "KID (lower is better)"),
                 ("precision", "precision (share of synthetic on the real manifold)"),
                 ("recall", "recall (share of real covered by the synthetic manifold)"),
                 ("density", "density (1 = as dense as real)"), ("coverage", "coverage"))


def audit_markdown(summary: dict[str, Any], title: str = "Fidelity and privacy audit",
                   context: dict[str, Any] | None = None) -> str:
    """The audit as a Markdown report (numbers only from `summary`)."""
    fe, c, mem = summary["features"], summary["counts"], summary["memorization"]
    lines = [f"# {title}", ""]
    for key, value in (context or {}).items():
        lines.append(f"- {key}: {value}")
    lines += [f"- features: `{fe['name']}` ({fe['dim']}-d, input {fe['input_size']} px"
              + "".join(f", {k} {v}" for k, v in fe.items() if k not in ("name", "dim", "input_size")) + ")",
              f"- samples: {c['synthetic']} synthetic, {c['holdout']} real holdout (patients the generator never saw), "
              f"{c['train']} real training patches; seed {summary['seed']}, k = {summary['k']}", ""]
    overlap = summary.get("extractor_overlap") or {}
    if overlap.get("train_patients") or overlap.get("holdout_patients"):
        lines += [f"**Warning:** the feature extractor was trained on {overlap['train_patients']} of the training "
                  f"patients and {overlap['holdout_patients']} of the holdout patients (dataset "
                  f"`{overlap['dataset_id']}`). Features of patches a classifier has seen are more extreme than "
                  "those of unseen ones, which inflates the real floor and biases the comparison; use a classifier "
                  "trained on other patients (the experiment job does).", ""]
    if summary["small_sample"]:
        lines += [f"FID is biased upwards below {FID_UNBIASED_N:,} samples: compare it only with the real floor "
                  "beside it (same n), and read KID (unbiased) first.", ""]
    lines += ["## Fidelity", "", "| metric | synthetic vs holdout | real floor: training vs holdout |", "|---|---|---|"]
    fid, floor = summary["fidelity"], summary["real_floor"]
    for key, label in FIDELITY_ROWS:
        if key in fid:
            extra = f" ± {_f(fid['kid_std'], 5)}" if key == "kid" else ""
            extra_floor = f" ± {_f(floor['kid_std'], 5)}" if key == "kid" else ""
            lines.append(f"| {label} | {_f(fid[key], 5 if key == 'kid' else 4)}{extra} | "
                         f"{_f(floor[key], 5 if key == 'kid' else 4)}{extra_floor} |")
    sp = mem["spaces"]
    lines += ["", "## Memorization", "",
              f"A synthetic patch is flagged when it is closer to a training patch than the "
              f"{mem['percentile']:g}th percentile of holdout-to-training distances (pixel space: {mem['pixel_size']} px, "
              "nearest over the 8 flips and rotations).", "",
              "| space | threshold | flagged | flagged fraction | expected by chance | one-sided binomial p | "
              "median distance, synthetic / holdout |", "|---|---|---|---|---|---|---|"]
    for space in ("pixels", "features"):
        s = sp[space]
        lines.append(f"| {space} | {_f(s['threshold'])} | {s['flagged']} | {_f(s['flagged_fraction'])} | "
                     f"{_f(s['expected_fraction'], 2)} | {s['binomial_p_value']:.3g} | "
                     f"{_f(s['synthetic_median'])} / {_f(s['holdout_median'])} |")
    lt = mem["low_tissue"]
    lines += ["", f"- **flagged_fraction** (pixel space): {_f(mem['flagged_fraction'])} "
                  f"(either space: {_f(mem['flagged_either_fraction'])}; the holdout's own either-space rate "
                  f"{_f(mem['holdout_either_fraction'])})",
              f"- closer to a training patch than to a holdout patch: {_f(mem['closer_to_train_share'])} of synthetic "
              f"patches (0.5 expected without copying; {mem['dcr_reference_size']} of each real set)",
              f"- low-tissue patches counted apart, not flagged: {lt['synthetic']} synthetic "
              f"({_f(lt['synthetic_fraction'], 3)}), {lt['holdout']} holdout ({_f(lt['holdout_fraction'], 3)})",
              f"- flagged copies by symmetry (0 = as is): {mem['flagged_by_symmetry']}", ""]
    return "\n".join(lines)
