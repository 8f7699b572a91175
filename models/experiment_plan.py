"""How the experiment job divides a real dataset: three disjoint groups of patients.

- `gan`: the patches the two generators train on (the paper: 40,000 per class);
- `classify`: the real side of the four-way protocol, never seen by the generators (the paper:
  the other 38,000 per class);
- `holdout`: patients neither saw, the audit's reference for fidelity and memorization.

Sizes are the paper's, times `fraction`, capped by what the dataset has: the holdout takes
`holdout_share` of each label first, and if the paper's sizes do not fit in the rest, the gan
and classify parts share it 40:38. Whole patients go to one part: patients are visited in a
seeded random order and each joins the part whose remaining per-label shortfall its patches
fill most; patients no part needs are left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PAPER_GAN_PER_CLASS", "PAPER_CLASSIFY_PER_CLASS", "part_targets", "split_patients"]

PAPER_GAN_PER_CLASS = 40_000
PAPER_CLASSIFY_PER_CLASS = 38_000
PARTS = ("gan", "classify", "holdout")


def part_targets(available: dict[int, int], fraction: float, holdout_share: float) -> dict[str, dict[int, int]]:
    """Target patches per part and label."""
    out: dict[str, dict[int, int]] = {p: {} for p in PARTS}
    for label, n in available.items():
        hold = int(round(holdout_share * n))
        gan, cls = PAPER_GAN_PER_CLASS * fraction, PAPER_CLASSIFY_PER_CLASS * fraction
        rest = n - hold
        if gan + cls > rest:  # not enough: share the rest 40:38
            gan, cls = rest * PAPER_GAN_PER_CLASS / (PAPER_GAN_PER_CLASS + PAPER_CLASSIFY_PER_CLASS), None
            cls = rest - gan
        out["gan"][label], out["classify"][label], out["holdout"][label] = int(gan), int(cls), hold
    return out


def split_patients(patients: Any, labels: Any, targets: dict[str, dict[int, int]], seed: int = 0) -> dict[str, list[str]]:
    """{part: sorted patient ids}, disjoint, filling `targets` as closely as whole patients allow."""
    patients, labels = np.asarray(patients), np.asarray(labels).astype(np.int64)
    uniq, inverse = np.unique(patients, return_inverse=True)
    label_values = sorted({int(v) for part in targets.values() for v in part})
    counts = np.zeros((len(uniq), len(label_values)), dtype=np.int64)
    for j, label in enumerate(label_values):
        np.add.at(counts[:, j], inverse[labels == label], 1)
    deficit = np.array([[targets[p].get(label, 0) for label in label_values] for p in PARTS], dtype=np.float64)
    chosen: dict[str, list[str]] = {p: [] for p in PARTS}
    for i in np.random.default_rng(seed).permutation(len(uniq)):
        fill = np.minimum(counts[i][None, :], np.maximum(deficit, 0)).sum(axis=1)
        if fill.max() <= 0:
            continue  # every part has what it needs
        best = int(np.argmax(fill + 1e-9 * deficit.sum(axis=1)))  # ties: the part furthest from its target
        chosen[PARTS[best]].append(str(uniq[i]))
        deficit[best] -= counts[i]
    return {p: sorted(v) for p, v in chosen.items()}
