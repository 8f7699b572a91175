"""The step-level pieces both classifier training paths share: batches, the optimizer step,
epoch statistics, validation metrics, and the abort/progress hooks.

They live below both the plain loop (:mod:`models.classifier_training`) and the cached-feature
fast path (:mod:`models.features`), so the two paths draw the same batches and take the same
steps without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "ProgressFn", "AbortFn", "TrainingAborted", "take_batch", "epoch_batches", "EpochStats", "train_step",
    "val_metrics",
]

ProgressFn = Callable[[int, int, dict], None]
AbortFn = Callable[[], bool]


class TrainingAborted(RuntimeError):
    """`abort_fn` returned True; the caller decides what cancelled means."""


def take_batch(images: Any, idx: np.ndarray | torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """Rows `idx` of a uint8 (N, H, W, 3) array/memmap as a uint8 tensor on `device`."""
    idx = idx.numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
    return torch.from_numpy(np.ascontiguousarray(images[idx])).to(device)


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch's shuffled batches of indices. Both training paths draw from this, so the
    same seed gives the same batches in the same order."""
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


class EpochStats:
    """Sums loss and hits on the device: no host sync per step."""

    def __init__(self, device: str | torch.device) -> None:
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.hits = torch.zeros((), device=device, dtype=torch.long)
        self.n = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += loss.detach().double() * len(y)
        self.hits += (logits.detach().argmax(1) == y).sum()
        self.n += len(y)

    def result(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_loss": float(self.loss) / max(self.n, 1), f"{prefix}_acc": float(self.hits) / max(self.n, 1)}


def train_step(module: nn.Module, x: torch.Tensor, target: torch.Tensor, loss_fn: nn.Module,
               optimizer: torch.optim.Optimizer, stats: EpochStats) -> None:
    """One optimizer step on one batch. Both training paths (the plain loop in
    models.classifier_training, and fc on cached features in models.features) call this, so
    they stay step-for-step the same."""
    logits = module(x)
    loss = loss_fn(logits, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    stats.add(loss, logits, target)


def val_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """val_loss (mean cross-entropy) and val_acc of `logits` against int labels `y`."""
    return {"val_loss": float(F.cross_entropy(logits, y)), "val_acc": float((logits.argmax(1) == y).float().mean())}
