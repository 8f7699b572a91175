"""Training the ResNet18 patch classifier of :mod:`models.classifier`: `train_classifier`
and its plain per-batch loop.

Training with a frozen backbone and no augmentation (``augment="none"``) takes the cached-feature fast path of
:mod:`models.features` (backbone once, then only fc); ``fast_path=False`` forces the plain
per-batch loop below, which also serves ``mode="finetune"``. Both paths build on the shared
steps of :mod:`models.classifier_steps`; this module sits above both, so nothing imports back.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from models.classifier import ClassifierConfig, ResNet18Classifier, build_resnet18, preprocess
from models.classifier_steps import (
    AbortFn, EpochStats, ProgressFn, TrainingAborted, epoch_batches, take_batch, train_step,
)
from models.features import train_with_cached_features
from models.gan_data import dihedral
from models.stain import draw_stain_jitter, hed_jitter
from models.inference import evaluate_images

__all__ = ["train_classifier", "uses_fast_path"]


def _check_data(images: Any, labels: np.ndarray, num_classes: int) -> torch.Tensor:
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise ValueError("no training images")
    if images.dtype != np.uint8 or len(images.shape) != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}]")
    return y


def uses_fast_path(config: ClassifierConfig) -> bool:
    """The cached-feature path is exact (up to float rounding) only when the backbone is a
    fixed function of the image: frozen, eval-mode BatchNorm, and no augmentation (an augmented
    patch is a new input every epoch, so a feature cached once would be the wrong one)."""
    return config.mode == "frozen" and config.fast_path and config.augment == "none"


def train_classifier(
    config: ClassifierConfig,
    images: Any,
    labels: np.ndarray,
    progress_fn: ProgressFn | None = None,
    abort_fn: AbortFn | None = None,
    val: tuple[Any, np.ndarray] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[ResNet18Classifier, list[dict[str, float]]]:
    """Train a classifier on uint8 (N, H, W, 3) `images` (np.memmap fine: only batches are
    read) and int `labels`. Returns (model in eval mode, history): one dict per epoch with
    epoch, train_loss, train_acc (mean over the epoch's batches as trained), seconds, and
    val_loss, val_acc when `val` = (images, labels) is given.

    progress_fn(current, total, info) is called per epoch (and per feature batch on the fast
    path); abort_fn() is polled per batch and raises TrainingAborted when it returns True.
    """
    y = _check_data(images, labels, config.num_classes)
    torch.manual_seed(config.seed)  # same seed -> same fc (and random backbone) on both paths
    model = build_resnet18(config.weights, config.mode, config.num_classes).to(device)
    if uses_fast_path(config):
        history = train_with_cached_features(model, config, images, y, progress_fn, abort_fn, val, device)
    else:
        history = _train_plain(model, config, images, y, progress_fn, abort_fn, val, device)
    return model.eval(), history


_AUGMENT_SALT = 0x5EED_A6


def _batch(images: Any, idx: torch.Tensor, config: ClassifierConfig, generator: torch.Generator,
           device: str | torch.device) -> torch.Tensor:
    """Rows `idx` as a uint8 tensor on `device`; with "dihedral", each in one of its 8 flips and
    rotations (the GAN's own dihedral transform of models/gan_data.py, drawn per patch); with
    "stain", each with its H&E stain amounts jittered (models/stain.py)."""
    if config.augment == "none":
        return take_batch(images, idx, device)
    if "dihedral" not in config.augment:
        batch = take_batch(images, idx, device)
    else:
        codes = torch.randint(0, 8, (len(idx),), generator=generator).numpy()
        batch = take_batch(images, idx, "cpu")  # a fresh copy of the rows: transformed in place
        dihedral(batch.numpy(), codes)
        batch = batch.to(device)
    if "stain" in config.augment:
        batch = hed_jitter(batch, *draw_stain_jitter(len(idx), config.stain_strength, generator))
    return batch


def _train_plain(model: ResNet18Classifier, config: ClassifierConfig, images: Any, y: torch.Tensor,
                 progress_fn: ProgressFn | None, abort_fn: AbortFn | None, val: tuple[Any, np.ndarray] | None,
                 device: str | torch.device) -> list[dict[str, float]]:
    """The plain loop: every batch goes image -> preprocess -> full network, every epoch."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    loss_fn = nn.CrossEntropyLoss()
    if "dihedral" in config.augment and images.shape[1] != images.shape[2]:
        raise ValueError(f"dihedral augmentation needs square patches, got {images.shape[1]}x{images.shape[2]}")
    generator = torch.Generator().manual_seed(config.seed)
    # Its own stream, so that the shuffle (and so the batches) are the same with and without it.
    augment_generator = torch.Generator().manual_seed(config.seed + _AUGMENT_SALT)
    history = []
    for epoch in range(config.epochs):
        start = time.perf_counter()
        model.train()
        stats = EpochStats(device)
        for idx in epoch_batches(len(y), config.batch_size, generator):
            if abort_fn is not None and abort_fn():
                raise TrainingAborted("classifier training aborted")
            x = preprocess(_batch(images, idx, config, augment_generator, device), config.input_size)
            train_step(model, x, y[idx].to(device), loss_fn, optimizer, stats)
        row = {"epoch": epoch + 1, **stats.result("train")}
        if val is not None:
            row.update(evaluate_images(model, val[0], val[1], config, device))
        row["seconds"] = time.perf_counter() - start
        history.append(row)
        if progress_fn is not None:
            progress_fn(epoch + 1, config.epochs, {"stage": "train", **row})
    return history
