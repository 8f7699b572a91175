"""A stride-1 conv2d whose second derivative runs on ordinary convolution kernels.

WGAN-GP differentiates the discriminator twice: the penalty is a function of dD/dx, and
training D needs its gradient. PyTorch's built-in double backward of a convolution computes
one of its terms, the weight gradient of the input-gradient (d/dW of dgrad(gO, W)), as a
convolution of the batch-transposed upstream gradient with gO used as the *filter*: at 64 px
that is a 64x64 filter. Neither cuDNN nor oneDNN has a fast kernel for that shape: profiled
on the paper-size step, two such calls per step took 9.6 ms each on an H200
(`implicit_convolve_sgemm`) and the CPU fell back to its slow reference convolution.

That term is exactly a weight gradient, wgrad(input=ggI, grad_output=gO), which every
library computes with its fast backward-weight kernel. This module writes conv2d's first and
second derivatives out by hand so each term is one of the three standard kernels:

    y = conv(x, W) + b
    first order:   gx = dgrad(gy, W),   gW = wgrad(x, gy),   gb = sum(gy)
    second order, given upstream ggx, ggW, ggb for (gx, gW, gb):
        d/d gy = conv(ggx, W) + conv(x, ggW) + ggb
        d/d x  = dgrad(gy, ggW)
        d/d W  = wgrad(ggx, gy)

`tests/test_conv_grad.py` checks both orders against autograd (gradcheck, gradgradcheck).
Under autocast the caller casts inputs first (`conv2d`) and the arithmetic runs in that dtype.

A custom Function cannot see which of its gradients a particular backward pass will use:
`ctx.needs_input_grad` says only what requires grad. The penalty's first pass,
autograd.grad(D(x_hat), x_hat), uses the input gradients alone, so it runs inside
`input_grads_only()`, and the weight and bias gradients nobody reads are not computed there
(PyTorch's own convolution backward skips them the same way).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = ["conv2d", "input_grads_only"]

# Process-wide, not thread-local: on a GPU the autograd engine runs backward on its own thread.
_input_grads_only = [0]


@contextlib.contextmanager
def input_grads_only() -> Iterator[None]:
    """Backward passes run inside compute only input gradients for these convolutions."""
    _input_grads_only[0] += 1
    try:
        yield
    finally:
        _input_grads_only[0] -= 1

_aten_backward = torch.ops.aten.convolution_backward.default


def _conv_backward(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, padding: int,
                   mask: tuple[bool, bool, bool]) -> tuple:
    """(dgrad, wgrad, bias grad) of a stride-1 conv, each only where `mask` asks."""
    return _aten_backward(gy, x, w, [w.shape[0]] if mask[2] else None, [1, 1], [padding, padding], [1, 1],
                          False, [0, 0], 1, list(mask))


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, padding):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x, w)
        ctx.padding = padding
        return F.conv2d(x, w, b, padding=padding)

    @staticmethod
    def backward(ctx, gy):  # noqa: ANN001, ANN205
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if _input_grads_only[0]:
            need_w = need_b = False
        grads = iter(_ConvBackward.apply(gy, x, w, ctx.padding, need_x, need_w, need_b))
        return (next(grads) if need_x else None, next(grads) if need_w else None,
                next(grads) if need_b else None, None)


class _ConvBackward(torch.autograd.Function):
    """(gy, x, w) -> the needed ones of (gx, gW, gb); differentiable once more."""

    @staticmethod
    def forward(ctx, gy, x, w, padding, need_x, need_w, need_b):  # noqa: ANN001, ANN205
        ctx.save_for_backward(gy, x, w)
        ctx.padding, ctx.mask = padding, (need_x, need_w, need_b)
        ctx.set_materialize_grads(False)
        gx, gw, gb = _conv_backward(gy, x, w, padding, ctx.mask)
        return tuple(g for g, need in zip((gx, gw, gb), ctx.mask) if need)

    @staticmethod
    def backward(ctx, *upstream):  # noqa: ANN001, ANN205
        gy, x, w = ctx.saved_tensors
        p = ctx.padding
        it = iter(upstream)
        ggx, ggw, ggb = (next(it) if need else None for need in ctx.mask)
        want_gy, want_x, want_w = ctx.needs_input_grad[:3]
        d_gy = d_x = d_w = None
        if want_gy:
            terms = []
            if ggx is not None:
                terms.append(F.conv2d(ggx, w, padding=p))
            if ggw is not None:
                terms.append(F.conv2d(x, ggw, padding=p))
            if ggb is not None:
                terms.append(ggb.view(1, -1, 1, 1).expand_as(gy))
            d_gy = sum(terms[1:], terms[0]) if terms else None
        if want_x and ggw is not None:
            d_x = _conv_backward(gy, x, ggw, p, (True, False, False))[0]
        if want_w and ggx is not None:
            d_w = _conv_backward(gy, ggx, w, p, (False, True, False))[1]
        return d_gy, d_x, d_w, None, None, None, None


def conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, padding: int) -> torch.Tensor:
    """F.conv2d(x, w, b, padding=padding) at stride 1, with fast double backward (see above).
    Under autocast the inputs are cast to the autocast dtype here, as autocast would."""
    device = x.device.type
    if device in ("cuda", "cpu") and torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):
            return _Conv.apply(x.to(dtype), w.to(dtype), b.to(dtype), padding)
    return _Conv.apply(x, w.to(x.dtype), b.to(x.dtype), padding)
