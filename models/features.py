"""Cached-feature fast path for a frozen backbone (the paper's setting).

With every layer but fc frozen, BatchNorm in eval mode and no augmentation, the backbone is a
fixed function of the image: its 512-d output (after avgpool + flatten) can be computed once
and fc trained on it for all epochs. Training is the same as the plain loop in
models.classifier_training: same fc init (the model is built under the same seed), same Adam,
same CrossEntropyLoss, same shuffled batches (same generator seed through `epoch_batches`); fc
sees the same inputs up to float rounding, so it ends up with the same weights up to float
rounding. At the paper's 150 epochs that is ~150x fewer backbone passes.

The backbone pass itself is inference-only, so it runs under inference_mode on a copy of the
backbone with BatchNorm folded into the preceding convolutions and channels_last memory
(profiled on 2 CPU cores at 112 px: 1.6-2x the images/s of the unmodified eval-mode network on
session 1's VM, 1.2x on session 2's; BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from models.classifier import ClassifierConfig, ResNet18Classifier, preprocess
from models.classifier_steps import (
    AbortFn, EpochStats, ProgressFn, TrainingAborted, epoch_batches, take_batch, train_step, val_metrics,
)
from models.inference import fold_batchnorm

__all__ = ["inference_backbone", "extract_features", "fit_head", "head_proba", "train_with_cached_features"]


def inference_backbone(model: ResNet18Classifier) -> ResNet18Classifier:
    """An eval-only copy of `model` with each BatchNorm folded into its conv, no fc, and
    channels_last weights. Its `forward_features` equals the original's in eval mode (to ~1e-6)."""
    net = fold_batchnorm(model)
    net.fc = nn.Identity()
    net.requires_grad_(False)
    return net.to(memory_format=torch.channels_last)


@torch.inference_mode()
def extract_features(model: ResNet18Classifier, images: Any, input_size: int, batch_size: int = 32,
                     device: str | torch.device = "cpu", progress_fn: ProgressFn | None = None,
                     abort_fn: AbortFn | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3) images (memmap fine, read in order) -> float32 (N, 512) on `device`,
    through the same `preprocess` as training and serving. progress_fn(done, N, info)."""
    net = inference_backbone(model).to(device)
    n = len(images)
    out = torch.empty(n, model.fc.in_features, device=device)
    for start in range(0, n, batch_size):
        if abort_fn is not None and abort_fn():
            raise TrainingAborted("feature extraction aborted")
        stop = min(start + batch_size, n)
        x = preprocess(take_batch(images, np.arange(start, stop), device), input_size)
        out[start:stop] = net.forward_features(x.contiguous(memory_format=torch.channels_last))
        if progress_fn is not None:
            progress_fn(stop, n, {"stage": "features"})
    return out


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run fc training on one intra-op thread on CPU. Its ops are tiny (32x512 @ 512x2), so
    threads bring nothing but a pool handshake per op, which costs ~25 ms a step instead of
    ~1 ms when the cores are busy (profiled on 2 shared cores). torch's thread count is
    process-wide: it is restored on exit."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_head(model: ResNet18Classifier, features: torch.Tensor, labels: torch.Tensor | np.ndarray,
             config: ClassifierConfig, progress_fn: ProgressFn | None = None, abort_fn: AbortFn | None = None,
             val: tuple[torch.Tensor, torch.Tensor | np.ndarray] | None = None) -> list[dict[str, float]]:
    """Train `model.fc` in place on cached backbone features: config.epochs epochs of Adam
    (config.lr) on CrossEntropyLoss, batches drawn as the plain loop draws them. `val` =
    (features, labels) adds val_loss / val_acc per epoch. Returns the per-epoch history."""
    with _one_cpu_thread(features.device):
        return _fit_head(model, features, labels, config, progress_fn, abort_fn, val)


def as_labels(labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """int64 label tensor from a tensor or anything numpy reads (memmap, list)."""
    return torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels, dtype=torch.long)


def _fit_head(model: ResNet18Classifier, features: torch.Tensor, labels: torch.Tensor | np.ndarray,
              config: ClassifierConfig, progress_fn: ProgressFn | None, abort_fn: AbortFn | None,
              val: tuple[torch.Tensor, torch.Tensor | np.ndarray] | None) -> list[dict[str, float]]:
    device = features.device
    fc = model.fc
    y = as_labels(labels)
    y_dev = y.to(device)
    optimizer = torch.optim.Adam(fc.parameters(), lr=config.lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)
    val_y = None if val is None else as_labels(val[1]).to(device)  # once, not per epoch
    history = []
    for epoch in range(config.epochs):
        if abort_fn is not None and abort_fn():
            raise TrainingAborted("classifier training aborted")
        start = time.perf_counter()
        stats = EpochStats(device)
        for idx in epoch_batches(len(y), config.batch_size, generator):
            idx = idx.to(device)
            train_step(fc, features[idx], y_dev[idx], loss_fn, optimizer, stats)
        row = {"epoch": epoch + 1, **stats.result("train")}
        if val is not None:
            with torch.inference_mode():
                row.update(val_metrics(fc(val[0]), val_y))
        row["seconds"] = time.perf_counter() - start
        history.append(row)
        if progress_fn is not None:
            progress_fn(epoch + 1, config.epochs, {"stage": "train", **row})
    model.eval()
    return history


@torch.inference_mode()
def head_proba(model: ResNet18Classifier, features: torch.Tensor) -> np.ndarray:
    """P(class 1) from cached features, float64 (N,): what predict_proba gives on the images."""
    return torch.softmax(model.fc(features).float(), dim=1)[:, 1].double().cpu().numpy()


def train_with_cached_features(model: ResNet18Classifier, config: ClassifierConfig, images: Any, y: torch.Tensor,
                               progress_fn: ProgressFn | None, abort_fn: AbortFn | None,
                               val: tuple[Any, np.ndarray] | None, device: str | torch.device,
                               ) -> list[dict[str, float]]:
    """train_classifier's fast path: features of the training (and val) images once, then fc.
    Progress counts feature batches then epochs in one (current, total)."""
    bs = config.eval_batch_size
    n_val = len(val[0]) if val is not None else 0
    feature_steps = -(-len(y) // bs) + -(-n_val // bs)
    total = feature_steps + config.epochs
    counter = {"done": 0}

    def feature_progress(done: int, n: int, info: dict) -> None:
        counter["done"] += 1
        if progress_fn is not None:
            progress_fn(counter["done"], total, info)

    def epoch_progress(epoch: int, epochs: int, info: dict) -> None:
        if progress_fn is not None:
            progress_fn(feature_steps + epoch, total, info)

    feats = extract_features(model, images, config.input_size, bs, device, feature_progress, abort_fn)
    val_feats = None
    if val is not None:
        val_feats = (extract_features(model, val[0], config.input_size, bs, device, feature_progress, abort_fn), val[1])
    return fit_head(model, feats, y, config, epoch_progress, abort_fn, val_feats)
