"""Draw synthetic patches from a trained generator, reproducibly.

Latents come from one seeded torch.Generator in fixed blocks of `LATENT_BLOCK` samples, drawn
in the same order whatever `batch_size` or `n` is, so sample i for a seed is the same latent
in every call (the first 100 of n=38,000 are the 100 of n=100). The pixels are then equal up
to floating-point differences between batch sizes in the conv kernels (rarely one grey level
after rounding); for a fixed seed and batch size they are identical.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from models.msggan import GanConfig, Generator

LATENT_BLOCK = 256


def _latent_blocks(latent_dim: int, seed: int) -> Iterator[torch.Tensor]:
    rng = torch.Generator().manual_seed(int(seed))
    while True:
        yield torch.randn(LATENT_BLOCK, latent_dim, generator=rng)


def to_uint8(images: torch.Tensor, size: int) -> np.ndarray:
    """(b, 3, s, s) float in [-1, 1] -> uint8 (b, size, size, 3); antialiased resize if s != size."""
    x = images.float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    # In place: each out-of-place step would allocate (and page-fault) another full batch.
    x = x.clamp_(-1, 1).add_(1).mul_(127.5).round_().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def iter_samples(generator: Generator, n: int, seed: int, batch_size: int = 256, size: int = 64,
                 device: str | torch.device = "cpu") -> Iterator[np.ndarray]:
    """Yield uint8 (b, size, size, 3) batches of the finest scale until n images are out."""
    if n < 0 or batch_size < 1 or size < 1:
        raise ValueError("need n >= 0, batch_size >= 1, size >= 1")
    device = torch.device(device)
    generator = generator.to(device).eval()
    blocks = _latent_blocks(generator.latent_dim, seed)
    pending = torch.empty(0, generator.latent_dim)
    done = 0
    with torch.inference_mode():
        while done < n:
            b = min(batch_size, n - done)
            while len(pending) < b:
                pending = torch.cat([pending, next(blocks)])
            z, pending = pending[:b], pending[b:]
            images = generator(z.to(device))[-1]  # finest scale (b, 3, 64, 64)
            yield to_uint8(images, size)
            done += b


def build_generator_from_state(config_dict: dict, state_dict: dict) -> Generator:
    """Rebuild the generator a checkpoint describes (plain config dict + G/EMA state dict)."""
    known = {f.name for f in dataclasses.fields(GanConfig)}
    unknown = sorted(set(config_dict) - known)
    if unknown:
        raise ValueError(f"unknown GAN config field(s): {', '.join(unknown)}")
    generator = GanConfig(**config_dict).make_generator()
    generator.load_state_dict(state_dict)
    return generator.eval().requires_grad_(False)
