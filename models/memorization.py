"""Does a generator copy its training patients? Nearest-neighbour distances to the training set.

For every synthetic patch: the distance to its nearest training patch, in feature space and in
pixel space, where the pixel search also tries the patch's 8 flips and rotations (a flipped
copy is still a copy). The same distances for real holdout patients, whom the generator never
saw, are the reference: a synthetic patch is *flagged* in a space when it is closer to a
training patch than the 1st percentile of holdout-to-train distances there, so a generator that
does not copy flags about 1% in each space by chance; each space's count is tested against 1%
with a one-sided exact binomial test. The headline `flagged_fraction` is the pixel space's
(copies, flipped or not, are what it finds); the feature space's, which also catches copies
with small colour or noise changes, is reported beside it, as is the share flagged in either.

Also reported: the share of synthetic patches closer to the training set than to the holdout
set (the "distance to closest record" idea of SDMetrics' DCR; 0.5 expected when the two real
sets are equally large, as they are made here), and the distance distributions.

Blank or low-tissue patches (fat, slide background) are near-duplicates of one another in any
dataset; they are counted apart (`low_tissue`) rather than flagged, on the synthetic side and
in the holdout reference alike. A patch is low-tissue when under `min_tissue` of its pixels
are tissue: not near-white and unsaturated (the H&E background).

All searches are batched `torch.cdist` blocks; pixel vectors are compared at `pixel_size`
(16 px by default: an exact or flipped copy stays at distance ~0 at any resolution, and 16 px
keeps a 10,000 x 10,000 search with 8 transforms to seconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["nearest", "pixel_vectors", "dihedral_nearest", "tissue_fraction", "binomial_sf", "memorization",
           "Memorization"]

BLOCK = 2048


def nearest(queries: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, index) of each query's nearest reference row (Euclidean), in blocks."""
    dist = torch.empty(len(queries), dtype=torch.float32, device=queries.device)
    index = torch.empty(len(queries), dtype=torch.long, device=queries.device)
    for start in range(0, len(queries), BLOCK):
        d = torch.cdist(queries[start:start + BLOCK].float(), reference.float())
        dist[start:start + BLOCK], index[start:start + BLOCK] = d.min(dim=1)
    return dist, index


def _as_nchw(images_u8: Any) -> torch.Tensor:
    x = torch.as_tensor(np.ascontiguousarray(images_u8))
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def _resized(images_u8: Any, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, size, size) in [0, 1], area-resized in blocks (the
    full-resolution float copy of 10,000 patches alone would be 300 MB)."""
    blocks = [F.interpolate(_as_nchw(images_u8[i:i + BLOCK]), size=(size, size), mode="area")
              for i in range(0, len(images_u8), BLOCK)]
    return torch.cat(blocks) if blocks else torch.empty(0, 3, size, size)


def pixel_vectors(images_u8: Any, size: int = 16) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> (N, 3*size*size) in [0, 1], area-resized (patches of 50 and 64 px
    compare on one grid)."""
    return _resized(images_u8, size).flatten(1)


def _dihedral(x: torch.Tensor, t: int) -> torch.Tensor:
    """The t-th of the 8 symmetries of the square (t in 0..7) applied to (N, C, H, W)."""
    x = torch.rot90(x, t % 4, dims=(2, 3))
    return x.flip(3) if t >= 4 else x


def dihedral_nearest(queries_u8: Any, reference: torch.Tensor, size: int = 16,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest reference pixel vector over the 8 flips/rotations of each query:
    (distance, reference index, which symmetry)."""
    x = _resized(queries_u8, size)
    best_d = torch.full((len(x),), math.inf)
    best_i = torch.zeros(len(x), dtype=torch.long)
    best_t = torch.zeros(len(x), dtype=torch.long)
    for t in range(8):
        d, i = nearest(_dihedral(x, t).flatten(1), reference)
        better = d < best_d
        best_d[better], best_i[better], best_t[better] = d[better], i[better], t
    return best_d, best_i, best_t


def tissue_fraction(images_u8: Any, white: int = 220, grey: int = 25) -> torch.Tensor:
    """(N,) share of pixels that are tissue: not (all channels >= `white` and max-min < `grey`)."""
    out = []
    for i in range(0, len(images_u8), BLOCK):
        x = torch.as_tensor(np.ascontiguousarray(images_u8[i:i + BLOCK]))
        hi, lo = x.max(dim=-1).values, x.min(dim=-1).values
        background = (lo >= white) & ((hi - lo) < grey)
        out.append(1.0 - background.float().mean(dim=(1, 2)))
    return torch.cat(out) if out else torch.empty(0)


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact (log-space sum)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
                 + (n - i) * math.log1p(-p) for i in range(k, n + 1)]
    top = max(log_terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in log_terms))


@dataclass
class Memorization:
    """`summary` is JSON-ready; the tensors feed the report's figures."""

    summary: dict[str, Any]
    synthetic: dict[str, torch.Tensor] = field(default_factory=dict)  # space -> distances to train
    holdout: dict[str, torch.Tensor] = field(default_factory=dict)
    nearest_train: dict[str, torch.Tensor] = field(default_factory=dict)  # space -> train index per synthetic
    flagged: torch.Tensor | None = None  # bool per synthetic patch, pixel space, tissue only
    low_tissue: torch.Tensor | None = None


def _space(name: str, syn_d: torch.Tensor, hold_d: torch.Tensor, syn_ok: torch.Tensor, hold_ok: torch.Tensor,
           percentile: float) -> tuple[dict[str, Any], torch.Tensor, float]:
    reference = hold_d[hold_ok] if hold_ok.any() else hold_d
    threshold = float(torch.quantile(reference.double(), percentile / 100.0))
    flags = (syn_d < threshold) & syn_ok
    n = int(syn_ok.sum())
    k = int(flags.sum())
    rate = percentile / 100.0
    return ({"threshold": threshold, "flagged": k, "flagged_fraction": k / max(n, 1),
             "binomial_p_value": binomial_sf(k, n, rate), "expected_fraction": rate,
             "synthetic_median": float(syn_d.median()), "holdout_median": float(hold_d.median())},
            flags, threshold)


def memorization(syn_features: torch.Tensor, train_features: torch.Tensor, hold_features: torch.Tensor,
                 syn_u8: Any, train_u8: Any, hold_u8: Any, pixel_size: int = 16, percentile: float = 1.0,
                 min_tissue: float = 0.25) -> Memorization:
    """The memorization report of synthetic patches against the generator's training set, with a
    disjoint real holdout set as the chance reference. Features and uint8 images are row-aligned."""
    syn_ok = tissue_fraction(syn_u8) >= min_tissue
    hold_ok = tissue_fraction(hold_u8) >= min_tissue
    train_px = pixel_vectors(train_u8, pixel_size)
    dist = {"features": (nearest(syn_features, train_features), nearest(hold_features, train_features))}
    s_px, s_idx, s_sym = dihedral_nearest(syn_u8, train_px, pixel_size)
    h_px, h_idx, _ = dihedral_nearest(hold_u8, train_px, pixel_size)
    dist["pixels"] = ((s_px, s_idx), (h_px, h_idx))
    out = Memorization(summary={}, low_tissue=~syn_ok)
    spaces, flags, hold_flags = {}, [], []
    for space, ((sd, si), (hd, _)) in dist.items():
        spaces[space], f, threshold = _space(space, sd, hd, syn_ok, hold_ok, percentile)
        flags.append(f)
        hold_flags.append((hd < threshold) & hold_ok)
        out.synthetic[space], out.holdout[space], out.nearest_train[space] = sd, hd, si
    flagged = flags[1]  # pixel space: the headline
    either = flags[0] | flags[1]
    n_ok = int(syn_ok.sum())
    # DCR share: closer to train than to holdout, in feature space, against equally many of each
    m = min(len(train_features), len(hold_features))
    d_train = nearest(syn_features, train_features[:m])[0]
    d_hold = nearest(syn_features, hold_features[:m])[0]
    out.flagged = flagged
    out.summary = {
        "n_synthetic": len(syn_ok), "n_train": len(train_features), "n_holdout": len(hold_features),
        "percentile": percentile, "pixel_size": pixel_size, "min_tissue": min_tissue,
        "low_tissue": {"synthetic": int((~syn_ok).sum()), "synthetic_fraction": float((~syn_ok).float().mean()),
                       "holdout": int((~hold_ok).sum()), "holdout_fraction": float((~hold_ok).float().mean())},
        "spaces": spaces,
        "flagged": int(flagged.sum()), "flagged_fraction": spaces["pixels"]["flagged_fraction"],
        "expected_fraction": percentile / 100.0, "binomial_p_value": spaces["pixels"]["binomial_p_value"],
        "flagged_either_space": int(either.sum()), "flagged_either_fraction": int(either.sum()) / max(n_ok, 1),
        "holdout_either_fraction": float((hold_flags[0] | hold_flags[1]).float().sum() / max(int(hold_ok.sum()), 1)),
        "flagged_by_symmetry": {str(t): int(((s_sym == t) & flags[1]).sum()) for t in range(8)},
        "closer_to_train_share": float((d_train < d_hold).float().mean()), "dcr_reference_size": m,
    }
    return out
