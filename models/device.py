"""Which torch device a job or the API runs on: one rule for the workers and the predictor."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["DeviceUnavailableError", "resolve_device", "exact_fp32"]


class DeviceUnavailableError(RuntimeError):
    """A CUDA device was asked for, but this process sees no GPU."""


def resolve_device(requested: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; "cuda..." without a GPU raises
    DeviceUnavailableError; anything else is returned as given."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"device {requested!r} was requested but no GPU is visible")
    return requested


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """fp32 on a GPU means fp32 inside this block: cuDNN would otherwise run convolutions in
    TF32 (torch's default), which moves a ResNet18's probabilities by ~1e-3 and generated
    pixels by grey levels. The flags are process-wide; they are restored on exit."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
