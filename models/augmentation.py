"""Does synthetic data help? The augmentation comparison beside the paper's four rows.

A classifier trained on a small real fraction plus all synthetic patches, against one trained
on the same real fraction alone, both tested on the real test patients. The gain in accuracy
and balanced accuracy comes with a paired bootstrap confidence interval over *test patients*
(patches of one patient are not independent: resampling patches would make the interval too
narrow): each resample draws test patients with replacement and scores both classifiers on
the same patients.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["small_fraction", "bootstrap_gain"]


def small_fraction(labels: np.ndarray, idx: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded, label-stratified `fraction` of the rows `idx` (at least one per label present)."""
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels[idx]):
        members = idx[labels[idx] == label]
        k = max(1, int(round(fraction * len(members))))
        picked.append(rng.choice(members, k, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _per_patient(labels: np.ndarray, patients: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) patches per (patient, label) and (P, 2) correct ones."""
    _, inverse = np.unique(patients, return_inverse=True)
    n = np.zeros((inverse.max() + 1, 2))
    c = np.zeros_like(n)
    np.add.at(n, (inverse, labels), 1)
    np.add.at(c, (inverse, labels), correct)
    return n, c


def _scores(n: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """accuracy and balanced accuracy for (..., 2) sums over patients."""
    accuracy = c.sum(-1) / np.maximum(n.sum(-1), 1)
    per_class = c / np.maximum(n, 1)
    present = n > 0
    balanced = (per_class * present).sum(-1) / np.maximum(present.sum(-1), 1)
    return accuracy, balanced


def bootstrap_gain(labels: Any, patients: Any, probs_alone: Any, probs_augmented: Any, resamples: int = 1000,
                   seed: int = 0, threshold: float = 0.5) -> dict[str, Any]:
    """Gain (augmented - alone) in accuracy and balanced accuracy on the test patches, with
    2.5/97.5 percentile intervals of a paired bootstrap over test patients."""
    labels = np.asarray(labels).astype(np.int64)
    patients = np.asarray(patients)
    n_a, c_a = _per_patient(labels, patients, (np.asarray(probs_alone) >= threshold) == labels)
    n_b, c_b = _per_patient(labels, patients, (np.asarray(probs_augmented) >= threshold) == labels)
    acc_a, bal_a = _scores(n_a.sum(0), c_a.sum(0))
    acc_b, bal_b = _scores(n_b.sum(0), c_b.sum(0))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(n_a), (resamples, len(n_a)))  # resampled patients, shared by both
    weights = np.zeros((resamples, len(n_a)))
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1)
    # per resample: (accuracy, balanced accuracy) of each classifier on the drawn patients
    ra, rb = _scores(weights @ n_a, weights @ c_a)
    sa, sb = _scores(weights @ n_b, weights @ c_b)
    out: dict[str, Any] = {"n_test": int(len(labels)), "n_test_patients": int(len(n_a)), "resamples": resamples,
                           "seed": seed}
    for name, alone, aug, boot in (("accuracy", acc_a, acc_b, sa - ra), ("balanced_accuracy", bal_a, bal_b, sb - rb)):
        lo, hi = np.percentile(boot, [2.5, 97.5])
        out[name] = {"alone": float(alone), "augmented": float(aug), "gain": float(aug - alone),
                     "ci95": [float(lo), float(hi)]}
    return out
