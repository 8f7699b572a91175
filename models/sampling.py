"""Draw synthetic patches from a trained generator, reproducibly.

Latents come from one seeded torch.Generator in fixed blocks of `LATENT_BLOCK` samples, drawn
in the same order whatever `batch_size` or `n` is, so sample i for a seed is the same latent
in every call (the first 100 of n=38,000 are the 100 of n=100). The pixels are then equal up
to floating-point differences between batch sizes in the conv kernels (rarely one grey level
after rounding); for a fixed seed and batch size they are identical.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from models.device import exact_fp32
from models.msggan import GanConfig, Generator

LATENT_BLOCK = 256


def latent_blocks(latent_dim: int, seed: int) -> Iterator[torch.Tensor]:
    """A seed's latent stream, in blocks of LATENT_BLOCK: sample i is the same latent in every
    sampler that reads it (iter_samples here, models/critic_filter.py)."""
    rng = torch.Generator().manual_seed(int(seed))
    while True:
        yield torch.randn(LATENT_BLOCK, latent_dim, generator=rng)


def to_uint8_tensor(images: torch.Tensor, size: int) -> torch.Tensor:
    """(b, 3, s, s) float in [-1, 1] -> uint8 (b, size, size, 3) on the same device;
    antialiased resize if s != size."""
    x = images.float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    # In place: each out-of-place step would allocate (and page-fault) another full batch.
    x = x.clamp_(-1, 1).add_(1).mul_(127.5).round_().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous()


def to_uint8(images: torch.Tensor, size: int) -> np.ndarray:
    """(b, 3, s, s) float in [-1, 1] -> uint8 ndarray (b, size, size, 3)."""
    return to_uint8_tensor(images, size).cpu().numpy()


def iter_samples(generator: Generator, n: int, seed: int, batch_size: int = 256, size: int = 64,
                 device: str | torch.device = "cpu", precision: str = "auto",
                 compile: bool | None = None) -> Iterator[np.ndarray]:
    """Yield uint8 (b, size, size, 3) batches of the finest scale until n images are out.

    precision "auto" is bf16 autocast on a GPU and fp32 on a CPU (on an H200, bf16 moved pixels
    by 0.97 grey levels on average against fp32: tests/test_cuda.py). On a GPU the next batch is
    launched before the previous one is handed out: its copy to page-locked host memory
    overlaps the next forward, so the GPU keeps working while the caller writes to disk.

    compile (None: on a GPU when n is at least 8 batches) runs the generator through
    torch.compile, which fuses the elementwise work between the convolutions (LeakyReLU, pixel
    norm): 2.5x the forward's images/s on an H200 (bench/generate_sweep.py), for a one-off
    compilation of tens of seconds. The last, short batch is padded to the full batch with the
    stream's next latents so one compiled shape serves every batch. If compilation fails the
    generator runs eagerly, with a warning.
    """
    if n < 0 or batch_size < 1 or size < 1:
        raise ValueError("need n >= 0, batch_size >= 1, size >= 1")
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    device = torch.device(device)
    cuda = device.type == "cuda"
    bf16 = precision == "bf16" or (precision == "auto" and cuda)
    if cuda:
        torch.backends.cudnn.benchmark = True  # one batch shape (plus a tail): autotune the convs once
    generator = generator.to(device, memory_format=torch.channels_last if cuda else torch.contiguous_format).eval()
    if compile is None:
        compile = cuda and n >= 8 * batch_size
    forward = torch.compile(generator) if compile else generator
    blocks = latent_blocks(generator.latent_dim, seed)
    pending = torch.empty(0, generator.latent_dim)
    done = 0
    in_flight: tuple[torch.Tensor, torch.cuda.Event] | None = None
    while done < n:
        b = min(batch_size, n - done)
        width = batch_size if compile else b  # compiled: always the full batch (padded), one shape
        while len(pending) < width:
            pending = torch.cat([pending, next(blocks)])
        z, pending = pending[:width], pending[b:]
        # the grad and autocast modes are thread state: entered per batch, never held across a yield
        precise = exact_fp32() if cuda and not bf16 else nullcontext()
        with torch.inference_mode(), (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else precise):
            z = z.to(device, non_blocking=True)
            try:
                finest = forward(z)[-1]
            except Exception as exc:  # noqa: BLE001 - a compiler missing or failing: run eagerly
                if forward is generator:
                    raise
                warnings.warn(f"torch.compile of the generator failed, sampling eagerly: {exc}", stacklevel=2)
                forward = generator
                finest = forward(z)[-1]
            images = to_uint8_tensor(finest[:b], size)  # finest scale
        done += b
        if not cuda:
            yield images.numpy()
            continue
        host = torch.empty(images.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(images, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        if in_flight is not None:
            in_flight[1].synchronize()
            yield in_flight[0].numpy()
        in_flight = (host, ready)
    if in_flight is not None:
        in_flight[1].synchronize()
        yield in_flight[0].numpy()


def build_generator_from_state(config_dict: dict, state_dict: dict) -> Generator:
    """Rebuild the generator a checkpoint describes (plain config dict + G/EMA state dict)."""
    known = {f.name for f in dataclasses.fields(GanConfig)}
    unknown = sorted(set(config_dict) - known)
    if unknown:
        raise ValueError(f"unknown GAN config field(s): {', '.join(unknown)}")
    generator = GanConfig(**config_dict).make_generator()
    generator.load_state_dict(state_dict)
    return generator.eval().requires_grad_(False)
