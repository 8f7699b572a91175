"""models.conv_grad.conv2d: the same function as F.conv2d, with first and second derivatives
written out by hand (so the gradient penalty's double backward uses standard kernels)."""

import pytest
import torch
import torch.nn.functional as F

from models.conv_grad import conv2d


@pytest.mark.parametrize("kernel,padding,size", [(3, 1, 6), (1, 0, 5), (4, 0, 4)])
def test_first_and_second_derivatives_match_autograd(kernel, padding, size):
    g = torch.Generator().manual_seed(kernel)
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(4, 3, kernel, kernel, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    torch.testing.assert_close(conv2d(x, w, b, padding), F.conv2d(x, w, b, padding=padding))
    fn = (lambda x, w, b: conv2d(x, w, b, padding))
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_penalty_gradient_equals_the_builtin_double_backward():
    """A WGAN-GP-shaped use: the parameter gradient of ||dD/dx||^2 is the same either way."""
    g = torch.Generator().manual_seed(0)
    d = torch.float64
    x0 = torch.randn(4, 3, 8, 8, generator=g, dtype=d)
    w1, w2 = torch.randn(5, 3, 3, 3, generator=g, dtype=d), torch.randn(2, 5, 3, 3, generator=g, dtype=d)
    b1, b2 = torch.randn(5, generator=g, dtype=d), torch.randn(2, generator=g, dtype=d)

    def penalty_grads(conv):
        params = [p.clone().requires_grad_(True) for p in (w1, b1, w2, b2)]
        x = x0.clone().requires_grad_(True)
        h = F.leaky_relu(conv(x, params[0], params[1], 1), 0.2)
        out = conv(h, params[2], params[3], 1).square().sum()
        (gx,) = torch.autograd.grad(out, x, create_graph=True)
        gx.square().sum().backward()
        return [p.grad for p in params]

    ours = penalty_grads(conv2d)
    builtin = penalty_grads(lambda x, w, b, p: F.conv2d(x, w, b, padding=p))
    for a, b in zip(ours, builtin):
        torch.testing.assert_close(a, b)


def test_only_the_needed_gradients_are_computed():
    x = torch.randn(1, 2, 5, 5)
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    b = torch.zeros(3)
    conv2d(x, w, b, 1).sum().backward()
    assert w.grad is not None and w.grad.shape == w.shape


def test_input_grads_only_skips_weight_gradients_and_keeps_the_penalty_exact():
    from models.conv_grad import input_grads_only

    g = torch.Generator().manual_seed(1)
    d = torch.float64
    x = torch.randn(3, 2, 6, 6, generator=g, dtype=d, requires_grad=True)
    w = torch.randn(4, 2, 3, 3, generator=g, dtype=d, requires_grad=True)
    b = torch.zeros(4, dtype=d, requires_grad=True)

    def penalty(only_inputs: bool):
        w.grad = b.grad = None
        out = F.leaky_relu(conv2d(x, w, b, 1), 0.2).square().sum()
        with input_grads_only() if only_inputs else contextlib.nullcontext():
            (gx,) = torch.autograd.grad(out, x, create_graph=True)
        gx.square().sum().backward()
        return w.grad.clone(), b.grad

    import contextlib

    with_flag, without = penalty(True), penalty(False)
    torch.testing.assert_close(with_flag[0], without[0])
