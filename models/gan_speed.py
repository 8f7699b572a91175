"""How a GAN trainer runs on its device, apart from what it computes.

`GanConfig` (models.msggan) is the math: networks, loss, optimizer, batch. `TrainSpeed` is
everything that changes only speed (and, for bf16, rounding): precision, memory layout, the
CUDA-graph step, torch.compile, read-ahead. "auto" picks, per device, what measured faster
(BENCHMARKS.md, "One MSG-GAN training step"): on a GPU bf16 autocast, channels_last, TF32 for
what stays fp32, the whole step replayed as one CUDA graph, batches read ahead into pinned
memory; on a CPU plain fp32, NCHW, eager, batches read when needed (channels_last and bf16
were slower there). None of these options is part of a checkpoint: a run may resume with others.
"""

from __future__ import annotations

import dataclasses
import inspect
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

__all__ = ["TrainSpeed", "ResolvedSpeed", "make_optimizer"]

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainSpeed:
    precision: str = "auto"              # "fp32" | "bf16" (autocast; the gradient penalty stays fp32 at its inputs)
    channels_last: bool | None = None    # None: on CUDA only
    cuda_graph: bool | None = None       # None: on CUDA only; capture the whole step after a few eager ones
    compile: bool = False                # torch.compile G and D's first-order passes (never the penalty's)
    tf32: bool | None = None             # None: on CUDA only; TF32 matmuls/convs for what stays fp32
    read_ahead: int | None = None        # batches prepared ahead on a thread; None: 4 on CUDA, 0 on CPU
    sync_every: int | None = None        # steps between reads of the losses; None: 50 on CUDA, 1 on CPU
    graph_warmup: int = 3                # eager steps (on a side stream) before the graph is captured

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def resolve(self, device: torch.device) -> "ResolvedSpeed":
        cuda = device.type == "cuda"
        pick = (lambda v, on_cuda: on_cuda if v is None else v)
        return ResolvedSpeed(
            device=device,
            bf16=(self.precision == "bf16") or (self.precision == "auto" and cuda),
            channels_last=pick(self.channels_last, cuda),
            cuda_graph=bool(pick(self.cuda_graph, cuda)) and cuda,
            compile=self.compile,
            tf32=bool(pick(self.tf32, cuda)) and cuda,
            read_ahead=int(pick(self.read_ahead, 4 if cuda else 0)),
            sync_every=max(1, int(pick(self.sync_every, 50 if cuda else 1))),
            graph_warmup=max(1, self.graph_warmup),
        )

    @classmethod
    def from_dict(cls, values: dict | None) -> "TrainSpeed":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values or {}) - known)
        if unknown:
            raise ValueError(f"unknown speed option(s): {', '.join(unknown)}")
        return cls(**(values or {}))


@dataclass(frozen=True)
class ResolvedSpeed:
    device: torch.device
    bf16: bool
    channels_last: bool
    cuda_graph: bool
    compile: bool
    tf32: bool
    read_ahead: int
    sync_every: int
    graph_warmup: int

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> AbstractContextManager:
        if not self.bf16:
            return nullcontext()
        # No weight-cast cache: a CUDA graph must record the casts it replays.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def describe(self) -> dict:
        return {k: (str(v) if isinstance(v, torch.device) else v) for k, v in dataclasses.asdict(self).items()}


def make_optimizer(kind: str, params, lr: float, betas: tuple[float, float],  # noqa: ANN001
                   speed: ResolvedSpeed) -> torch.optim.Optimizer:
    """RMSprop (the paper, section 3; torch's defaults alpha 0.99, eps 1e-8) or Adam.

    On CUDA: the fused kernel where this torch has one for the optimizer, else foreach;
    `capturable` when the step is replayed as a CUDA graph (the step count lives on the GPU).
    Same update either way."""
    cls = torch.optim.RMSprop if kind == "rmsprop" else torch.optim.Adam
    kwargs: dict = {"lr": lr}
    if cls is torch.optim.Adam:
        kwargs["betas"] = betas
    accepts = inspect.signature(cls.__init__).parameters
    if speed.device.type == "cuda" and "fused" in accepts:
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    if speed.cuda_graph:
        kwargs["capturable"] = True
    return cls(params, **kwargs)
