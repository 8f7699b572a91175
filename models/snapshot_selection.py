"""Keep a GAN training's best snapshot, chosen on the training data alone.

A small generator's sample quality does not fall steadily with the steps: its FID against
held-out patients swings by several points between checkpoints 250 steps apart
(BENCHMARKS.md, "Which CPU preset draws better patches?"). The last snapshot is therefore a
draw from that swing. Here every `every` steps the EMA generator draws `n` patches with a
fixed seed, they are scored by FID against features of the generator's own training patches,
and the snapshot with the lowest score is kept. No holdout patient is looked at, so an audit
against held-out patients afterwards stays fair (the "best snapshot by FID" practice of
Karras et al., 2019, https://arxiv.org/abs/1812.04948, against training data, as there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from models.msggan import Generator
from models.sampling import iter_samples

FORMAT = "histosynth.snapshot_selection/1"


def snapshot_fid(generator: Generator, extract: Callable[[np.ndarray], torch.Tensor], reference: torch.Tensor,
                 n: int, seed: int, size: int = 50, device: str | torch.device = "cpu") -> float:
    """FID of n seeded samples of `generator` (drawn at `size` px, the data's own patch size)
    against `reference` features, in `extract`'s feature space."""
    from models import all_metrics  # here: the API imports this module for scored_steps alone

    fake = np.concatenate(list(iter_samples(generator, n, seed=seed, size=size, device=device)))
    return float(all_metrics.compute(["fid"], real=reference, fake=extract(fake), seed=seed)["fid"]["fid"])


def scored_steps(start: int, every: int, steps: int) -> list[int]:
    """The steps a training of `steps` scores: multiples of `every` from `start` on, and the last."""
    if every <= 0:
        return []
    first = max(every, math.ceil(start / every) * every)
    return sorted({*range(first, steps + 1, every), steps})


@dataclass
class SnapshotSelection:
    """The scores so far and the best snapshot's generator state (a copy on the CPU)."""

    history: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    best_fid: float = math.inf
    best_state: dict[str, torch.Tensor] | None = None

    def observe(self, step: int, fid: float, state: dict[str, torch.Tensor]) -> bool:
        """Record one score; keep `state` when it is strictly the best (ties keep the earlier).
        A step scored again replaces its old entry."""
        self.history = [(s, f) for s, f in self.history if s != step] + [(int(step), float(fid))]
        self.history.sort()
        if math.isfinite(fid) and fid < self.best_fid:
            self.best_step, self.best_fid = int(step), float(fid)
            self.best_state = {k: v.detach().cpu().clone() for k, v in state.items()}
            return True
        return False

    def state_dict(self) -> dict:
        return {"format": FORMAT, "history": torch.tensor(self.history, dtype=torch.float64).reshape(-1, 2),
                "best_step": -1 if self.best_step is None else self.best_step, "best_fid": self.best_fid,
                "best_state": self.best_state or {}}

    @classmethod
    def from_state(cls, state: dict) -> "SnapshotSelection":
        if state.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} state (format {state.get('format')!r})")
        history = [(int(s), float(f)) for s, f in state["history"].tolist()]
        best_step = int(state["best_step"])
        if best_step < 0:
            return cls(history)
        return cls(history, best_step, float(state["best_fid"]), dict(state["best_state"]))
