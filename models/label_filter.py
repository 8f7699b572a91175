"""Keep the synthetic patches a real-trained classifier puts on the generator's own label.

A class-conditional synthetic set is only as good as its labels. The paper's TRTS row (Table 3)
measures how often a classifier trained on real patches agrees with them (0.81 there): the rest
are, to that classifier, IDC+ patches drawn by the IDC- generator or the other way round, and a
classifier trained on the synthetic set (TSTR) learns them as label noise. This filter draws
candidates from the sampler's own latent stream (models/sampling.py), scores each with a
classifier's P(label), and keeps, in stream order, those at or above `min_prob` until n are kept.

What the filtered set may know is what its classifier was trained on: with a classifier trained
on the generator's own training patients (the experiment's `label_filter`), the filtered set
has still seen no patient beyond them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch.nn as nn

from models.inference import predict_proba
from models.msggan import Generator
from models.sampling import iter_samples


class FilterExhausted(ValueError):
    """Fewer than n candidates passed before the candidate budget ran out."""


def candidate_budget(n: int, max_draw: float) -> int:
    """At most this many candidates for n kept patches (max_draw candidates per kept one)."""
    if max_draw < 1:
        raise ValueError(f"max_draw must be >= 1, got {max_draw!r}")
    return max(n, math.ceil(n * max_draw))


@dataclass
class FilterTally:
    """What the filter saw: every candidate's P(label) (in stream order) and how many it kept."""

    kept: int = 0
    probs: list[np.ndarray] = field(default_factory=list)

    @property
    def candidates(self) -> int:
        return int(sum(len(p) for p in self.probs))

    def summary(self) -> dict[str, float | int]:
        """Counts, the acceptance rate, the classifier's agreement with the label (the share of
        candidates with P(label) >= 0.5, whatever the threshold: the TRTS idea per label) and the
        candidates' P(label) quartiles."""
        probs = np.concatenate(self.probs) if self.probs else np.zeros(0)
        quartiles = np.quantile(probs, [0.25, 0.5, 0.75]).tolist() if len(probs) else [0.0, 0.0, 0.0]
        return {"candidates": self.candidates, "kept": self.kept,
                "acceptance": round(self.kept / self.candidates, 4) if self.candidates else 0.0,
                "agreement": round(float((probs >= 0.5).mean()), 4) if len(probs) else 0.0,
                "prob_quartiles": [round(q, 4) for q in quartiles]}


def label_filtered(generator: Generator, classifier: nn.Module, input_size: int, label: int, n: int, seed: int,
                   min_prob: float, max_draw: float = 4.0, size: int = 64, batch_size: int = 256,
                   device: str = "cpu", precision: str = "auto",
                   tally: FilterTally | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (uint8 (k, size, size, 3) kept patches, int64 (k,) their stream positions) batches
    until n patches are out. Position i is sample i of the seed's stream, so a kept patch can be
    drawn again by plain sampling. Raises FilterExhausted after candidate_budget(n, max_draw)
    candidates with fewer than n kept. `tally`, when given, collects every candidate's score."""
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    if not 0.0 <= min_prob < 1.0:
        raise ValueError(f"min_prob must be in [0, 1), got {min_prob!r}")
    budget = candidate_budget(n, max_draw)
    tally = tally if tally is not None else FilterTally()
    drawn = 0
    for batch in iter_samples(generator, budget, seed, batch_size=batch_size, size=size, device=device,
                              precision=precision):
        p_idc = predict_proba(classifier, batch, input_size=input_size, batch_size=len(batch), device=device)
        p_label = p_idc if label == 1 else 1.0 - p_idc
        tally.probs.append(p_label.astype(np.float32))
        keep = np.flatnonzero(p_label >= min_prob)[: n - tally.kept]
        if len(keep):
            tally.kept += len(keep)
            yield batch[keep], drawn + keep
        drawn += len(batch)
        if tally.kept == n:
            return
    raise FilterExhausted(f"only {tally.kept} of {drawn} candidates had P(label {label}) >= {min_prob}; "
                          f"{n} were asked for (at most {max_draw} candidates per patch): lower the threshold "
                          "or raise the candidate budget")
