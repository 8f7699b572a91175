"""WGAN-GP with the multi-scale gradient penalty, the relativistic hinge option and NS + R1."""

import pytest
import torch
import torch.nn.functional as F

from models.losses import (discriminator_loss, generator_loss, gradient_penalty, interpolate_scales,
                           ns_d_loss, ns_g_loss, r1_penalty, rahinge_d_loss, rahinge_g_loss)
from models.msggan import Discriminator, Generator

SIZES = (4, 8, 16, 32, 64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


def pyramid(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 64, 64, generator=g) * 2 - 1
    out = [x]
    for _ in range(4):
        out.append(F.avg_pool2d(out[-1], 2))
    return out[::-1]


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    return Generator(latent_dim=8, width=1 / 64), Discriminator(width=1 / 64)


def test_penalty_uses_the_gradient_of_every_scale():
    # critic = sum over scales of <c_s, x_s>: its gradient w.r.t. scale s is c_s everywhere, so
    # the per-sample norm over all scales is sqrt(sum_s ||c_s||^2).
    coeffs = [torch.full((1, 3, s, s), 0.1 * (i + 1)) for i, s in enumerate(SIZES)]

    def critic(images):
        return sum((c * x).sum(dim=(1, 2, 3)) for c, x in zip(coeffs, images)).unsqueeze(1)

    reals, fakes = pyramid(4, 0), pyramid(4, 1)
    gp, norms = gradient_penalty(critic, reals, fakes, torch.rand(4, 1, 1, 1))
    expected_norm = sum(c.square().sum() for c in coeffs).sqrt()
    torch.testing.assert_close(norms, expected_norm.expand(4))
    torch.testing.assert_close(gp, (expected_norm - 1).square())
    # with only the finest scale the value would be much smaller: the test can tell
    assert (coeffs[-1].square().sum().sqrt() - 1).square() < gp


def test_penalty_gradient_reaches_every_scale_input_and_d_layer(tiny):
    _, D = tiny
    seen: list[torch.Tensor] = []

    def critic(images):
        seen.extend(images)
        return D(images)

    gp, _ = gradient_penalty(critic, pyramid(4, 0), pyramid(4, 1), torch.rand(4, 1, 1, 1))
    assert gp.item() > 0
    assert [x.shape[-1] for x in seen] == list(SIZES)
    grads = torch.autograd.grad(gp, seen, retain_graph=True)
    for size, g in zip(SIZES, grads):
        assert g.abs().sum() > 0, f"no penalty gradient at {size} px"
    gp.backward()
    layers = [D.from_rgb, *D.convs1, *D.convs2, D.final_conv, D.final_4x4, D.fc]
    for layer in layers:
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_interpolates_share_one_alpha_across_scales():
    reals, fakes = pyramid(3, 0), pyramid(3, 1)
    alpha = torch.tensor([0.0, 0.3, 1.0]).view(3, 1, 1, 1)
    x_hat = interpolate_scales(reals, fakes, alpha)
    assert all(x.requires_grad for x in x_hat)
    for s in range(4):  # a pyramid of the interpolate is the interpolate of the pyramids
        torch.testing.assert_close(F.avg_pool2d(x_hat[s + 1].detach(), 2), x_hat[s].detach())
    for r, f, x in zip(reals, fakes, x_hat):
        torch.testing.assert_close(x[0], f[0])
        torch.testing.assert_close(x[2], r[2])


def test_wgan_gp_discriminator_loss_terms(tiny):
    G, D = tiny
    reals = pyramid(4, 0)
    fakes = G(torch.randn(4, 8))
    alpha = torch.rand(4, 1, 1, 1)
    loss, stats = discriminator_loss("wgan-gp", D, reals, fakes, alpha, gp_lambda=10.0, drift=0.001)
    d_real, d_fake = D(reals), D([f.detach() for f in fakes])
    gp, _ = gradient_penalty(D, reals, fakes, alpha)
    expected = d_fake.mean() - d_real.mean() + 10 * gp + 0.001 * d_real.square().mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(stats["wasserstein"], (d_real.mean() - d_fake.mean()).detach())
    assert stats["gp"].item() > 0
    # no gradient flows into G from the D loss
    loss.backward()
    assert all(p.grad is None for p in G.parameters())
    no_gp, stats0 = discriminator_loss("wgan-gp", D, reals, fakes, alpha, gp_lambda=0.0, drift=0.0)
    torch.testing.assert_close(no_gp, (d_fake.mean() - d_real.mean()).detach())
    assert stats0["gp"].item() == 0


def test_generator_losses(tiny):
    G, D = tiny
    fakes = G(torch.randn(4, 8))
    g_loss = generator_loss("wgan-gp", D, fakes)
    torch.testing.assert_close(g_loss, -D(fakes).mean())
    g_loss.backward()
    assert all(p.grad is not None for p in G.parameters())
    with pytest.raises(ValueError):
        generator_loss("rahinge", D, fakes)
    assert torch.isfinite(generator_loss("rahinge", D, fakes, pyramid(4, 0)))


def test_relativistic_average_hinge_values():
    d_real = torch.tensor([[2.0], [0.0]])
    d_fake = torch.tensor([[-1.0], [1.0]])
    # real - mean(fake) = [2, 0]; fake - mean(real) = [-2, 0]
    assert rahinge_d_loss(d_real, d_fake).item() == pytest.approx((0 + 1) / 2 + (0 + 1) / 2)
    assert rahinge_g_loss(d_real, d_fake).item() == pytest.approx((3 + 1) / 2 + (3 + 1) / 2)
    with pytest.raises(ValueError):
        discriminator_loss("nope", lambda x: x[0].sum((1, 2, 3))[:, None], pyramid(2, 0), pyramid(2, 1),
                           torch.rand(2, 1, 1, 1))


def test_r1_is_the_squared_gradient_norm_at_the_reals_over_every_scale():
    # same linear critic as above: grad w.r.t. scale s is c_s, so R1 = sum_s ||c_s||^2 exactly
    coeffs = [torch.full((1, 3, s, s), 0.1 * (i + 1)) for i, s in enumerate(SIZES)]

    def critic(images):
        return sum((c * x).sum(dim=(1, 2, 3)) for c, x in zip(coeffs, images)).unsqueeze(1)

    reals = pyramid(4, 0)
    r1, scores = r1_penalty(critic, reals)
    torch.testing.assert_close(r1, sum(c.square().sum() for c in coeffs))
    torch.testing.assert_close(scores, critic(reals))


def test_ns_r1_losses(tiny):
    # logistic values: D = 0 everywhere gives log 2 per term
    zeros = torch.zeros(3, 1)
    assert ns_d_loss(zeros, zeros).item() == pytest.approx(2 * torch.log(torch.tensor(2.0)).item())
    assert ns_g_loss(torch.tensor([[5.0]])).item() == pytest.approx(F.softplus(torch.tensor(-5.0)).item())
    G, D = tiny
    reals, fakes = pyramid(4, 0), G(torch.randn(4, 8))
    loss, stats = discriminator_loss("ns-r1", D, reals, fakes, torch.rand(4, 1, 1, 1), gp_lambda=2.0)
    d_real, d_fake = D(reals), D([f.detach() for f in fakes])
    r1, _ = r1_penalty(D, reals)
    torch.testing.assert_close(loss, ns_d_loss(d_real, d_fake) + 1.0 * r1)  # gamma/2 * R1
    assert stats["gp"].item() > 0
    loss.backward()
    assert all(p.grad is None for p in G.parameters())  # the D loss does not train G
    assert all(p.grad is not None for p in D.parameters())
    g_loss = generator_loss("ns-r1", D, fakes)
    torch.testing.assert_close(g_loss, F.softplus(-D(fakes)).mean())
