"""Fidelity metrics between two feature sets (real (N, D), fake (M, D)), registered in
models/metric_registry.py.

- FID and KID: torchmetrics' implementations, fed features directly (the feature extractor is
  chosen by the caller, models/feature_extractors.py, so no Inception download is involved).
  FID is biased upwards at small n (Chong & Forsyth, "Effectively Unbiased FID", 2020): every
  result carries its sample counts and `small_sample` below 10,000; KID is unbiased.
- Improved precision and recall (Kynkaenniemi et al., NeurIPS 2019): each sample's k-NN ball
  in its own set approximates the manifold; precision = share of fakes inside the real
  manifold, recall = share of reals inside the fake manifold.
- Density and coverage (Naeem et al., ICML 2020): density counts how many real balls hold each
  fake (1 on average for identical distributions, robust to real outliers); coverage = share of
  real balls that hold at least one fake.
k = 5 by default (both papers' choice). Nearest neighbours are batched `torch.cdist` blocks,
never a loop over samples.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from models.metric_registry import register

__all__ = ["fid", "kid", "precision_recall", "density_coverage", "kth_neighbour_radius", "FID_UNBIASED_N"]

FID_UNBIASED_N = 10_000
BLOCK = 2048  # rows of a distance block: 2048 x 10,000 floats = 80 MB


class _Given(nn.Module):
    """The "feature extractor" handed to torchmetrics: the features are already computed."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _check(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    real, fake = torch.as_tensor(real).float(), torch.as_tensor(fake).float()
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need two (n, d) feature sets of one d, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if len(real) < 2 or len(fake) < 2:
        raise ValueError("need at least 2 samples in each set")
    return real, fake


def _counts(real: torch.Tensor, fake: torch.Tensor) -> dict[str, Any]:
    return {"n_real": len(real), "n_fake": len(fake)}


@register("fid", "features", "Frechet distance between Gaussians fitted to the two feature sets (torchmetrics)")
def fid(real: torch.Tensor, fake: torch.Tensor, **_: Any) -> dict[str, Any]:
    real, fake = _check(real, fake)
    metric = FrechetInceptionDistance(feature=_Given(real.shape[1]), reset_real_features=True)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    value = float(metric.compute())
    n = min(len(real), len(fake))
    return {"fid": max(value, 0.0), **_counts(real, fake), "small_sample": n < FID_UNBIASED_N}


@register("kid", "features", "Kernel distance (cubic polynomial MMD^2, unbiased), mean and std over subsets (torchmetrics)")
def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 50, subset_size: int = 1000, seed: int = 0,
        **_: Any) -> dict[str, Any]:
    real, fake = _check(real, fake)
    size = min(subset_size, len(real), len(fake))
    metric = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # its subsets are drawn from the global RNG: seeded here
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"kid": float(mean), "kid_std": float(std), "kid_subset_size": size, "kid_subsets": subsets,
            **_counts(real, fake)}


def kth_neighbour_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """(n,) distance from each row of x to its k-th nearest other row."""
    if k >= len(x):
        raise ValueError(f"k={k} needs more than {k} samples, got {len(x)}")
    out = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for start in range(0, len(x), BLOCK):
        d = torch.cdist(x[start:start + BLOCK], x)
        out[start:start + BLOCK] = d.topk(k + 1, dim=1, largest=False).values[:, k]  # [:, 0] is the row itself
    return out


def _balls(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query, how many centre balls hold it (M,); for each centre, whether any query
    lies in its ball (N,)."""
    inside_count = torch.empty(len(queries), dtype=torch.long, device=queries.device)
    covered = torch.zeros(len(centres), dtype=torch.bool, device=queries.device)
    for start in range(0, len(queries), BLOCK):
        within = torch.cdist(queries[start:start + BLOCK], centres) <= radii[None, :]
        inside_count[start:start + BLOCK] = within.sum(dim=1)
        covered |= within.any(dim=0)
    return inside_count, covered


@register("precision_recall", "features", "Improved precision and recall with k-NN manifolds (Kynkaenniemi et al. 2019)")
def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 5, **_: Any) -> dict[str, Any]:
    real, fake = _check(real, fake)
    in_real, _ = _balls(fake, real, kth_neighbour_radius(real, k))
    in_fake, _ = _balls(real, fake, kth_neighbour_radius(fake, k))
    return {"precision": float((in_real > 0).float().mean()), "recall": float((in_fake > 0).float().mean()),
            "k": k, **_counts(real, fake)}


@register("density_coverage", "features", "Density and coverage over real k-NN balls (Naeem et al. 2020)")
def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5, **_: Any) -> dict[str, Any]:
    real, fake = _check(real, fake)
    counts, covered = _balls(fake, real, kth_neighbour_radius(real, k))
    return {"density": float(counts.float().sum() / (k * len(fake))), "coverage": float(covered.float().mean()),
            "k": k, **_counts(real, fake)}


FEATURE_METRICS = ("fid", "kid", "precision_recall", "density_coverage")
