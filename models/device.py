"""Which torch device a job or the API runs on: one rule for the workers and the predictor."""

from __future__ import annotations

import torch

__all__ = ["DeviceUnavailableError", "resolve_device"]


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
