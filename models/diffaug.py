"""Differentiable augmentation of D's inputs, the same draw at every MSG-GAN scale.

DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training",
https://arxiv.org/abs/2006.10738) transforms both the real and the generated images before the
discriminator sees them, in D's update and in G's, so D cannot memorise a small real set while
G still learns the untransformed distribution (the transform is applied to its output, and its
gradient flows back through it). This is not in the MSG-GAN paper; it is one hypothesis for
the CPU presets, where D sees each of a few thousand patches every epoch (BENCHMARKS.md).

MSG-GAN's D reads one image per scale (the generator's 4..64 px outputs, the reals' average
pooled pyramid), so one sample's transform is drawn once in fractions of the image and applied
at every scale: a shift of k pixels at 64 px is k/2 pixels at 32 px (bilinear), and a cutout box
covers the same part of each scale (a smaller scale's pixel keeps the share the box leaves). Otherwise the scales would disagree about where the
tissue is, which D could use to tell reals from fakes.

Randomness comes in as uniform numbers in [0, 1) (`DRAW_WIDTH` per sample) drawn by the caller
from its own stream, so the transform is a pure function of its inputs (replayable in a CUDA
graph, resumable from a checkpoint).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["POLICIES", "DRAW_WIDTH", "augment_scales"]

# "translation": shift by up to 1/8 of the image, zero-padded; "cutout": zero a square of half
# the image's side (the paper's defaults for both). Zero is mid-grey in D's [-1, 1] input.
# Scales are the largest one halved each time (MSG-GAN's pyramid).
POLICIES = ("none", "translation", "cutout", "translation,cutout")
DRAW_WIDTH = 4  # uniforms per sample: shift x, shift y, cutout centre x, cutout centre y
TRANSLATION_RATIO = 1 / 8
CUTOUT_RATIO = 1 / 2


def _translate(images: list[torch.Tensor], u: torch.Tensor) -> list[torch.Tensor]:
    top = images[-1].shape[-1]
    limit = int(top * TRANSLATION_RATIO)
    # Whole pixels at the largest scale (so it is an exact shift there, not a blur).
    shift = torch.floor(u * (2 * limit + 1)) - limit  # (N, 2) in top-scale pixels
    n = u.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=images[-1].dtype, device=u.device)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    # affine_grid reads input at output + t (t in [-1, 1] units: 2 per image side): content
    # moves by -t/2 of the side.
    theta[:, :, 2] = (-2.0 / top) * shift.to(theta.dtype)
    out = []
    for x in images:
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        out.append(F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    return out


def _cutout(images: list[torch.Tensor], u: torch.Tensor) -> list[torch.Tensor]:
    top = images[-1].shape[-1]
    cut = int(top * CUTOUT_RATIO)
    # The box's corner, in whole pixels at the largest scale; it may hang over the edge.
    corner = torch.floor(u * (top + 1)).long() - cut // 2  # (N, 2)
    pos = torch.arange(top, device=u.device)
    inside_x = (pos[None, :] >= corner[:, 0:1]) & (pos[None, :] < corner[:, 0:1] + cut)  # (N, top)
    inside_y = (pos[None, :] >= corner[:, 1:2]) & (pos[None, :] < corner[:, 1:2] + cut)
    keep = 1.0 - (inside_y[:, :, None] & inside_x[:, None, :]).float()[:, None]  # (N, 1, top, top)
    # Each smaller scale keeps the share of its pixel the box leaves: the average pooled mask,
    # so a scale's image is the pooled image of the scale above, as the reals' pyramid is.
    out = []
    for x in reversed(images):
        while keep.shape[-1] > x.shape[-1]:
            keep = F.avg_pool2d(keep, 2)
        out.append(x * keep.to(x.dtype))
    return out[::-1]


def augment_scales(images: list[torch.Tensor], policy: str, u: torch.Tensor) -> list[torch.Tensor]:
    """`images`: one (N, C, s, s) tensor per scale, smallest first; `u`: (N, DRAW_WIDTH) uniforms.
    Differentiable in `images` (first order: D's penalty is taken on the augmented inputs)."""
    if policy not in POLICIES:
        raise ValueError(f"diffaug must be one of {POLICIES}, got {policy!r}")
    if u.shape != (images[0].shape[0], DRAW_WIDTH):
        raise ValueError(f"expected uniforms of shape ({images[0].shape[0]}, {DRAW_WIDTH}), got {tuple(u.shape)}")
    parts = policy.split(",")
    if "translation" in parts:
        images = _translate(images, u[:, 0:2])
    if "cutout" in parts:
        images = _cutout(images, u[:, 2:4])
    return images
