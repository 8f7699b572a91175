"""GAN losses for MSG-GAN: WGAN-GP (the paper's choice), relativistic average hinge, and the
non-saturating logistic loss with an R1 penalty ("ns-r1", Mescheder et al. 2018,
https://arxiv.org/abs/1801.04406; StyleGAN2's choice), offered for small CPU presets.

The multi-scale gradient penalty: the discriminator sees a list of images (one per scale), so
the WGAN-GP interpolate x_hat = alpha*real + (1-alpha)*fake is formed at every scale with one
alpha per sample shared across scales, and the penalty is on the norm of D's gradient with
respect to all of them together (the per-sample gradients of every scale flattened and
concatenated). The widely copied public MSG-GAN code ships a "wgan-gp" option that computes no
gradient penalty at all (DESIGN.md, "The paper in brief"); this one does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from models.conv_grad import input_grads_only

Images = Sequence[torch.Tensor]  # one (N, 3, s, s) tensor per scale, coarsest first
Critic = Callable[[list[torch.Tensor]], torch.Tensor]  # images -> (N, 1)


def interpolate_scales(reals: Images, fakes: Images, alpha: torch.Tensor) -> list[torch.Tensor]:
    """x_hat at every scale, alpha: (N, 1, 1, 1) shared across scales; fp32 leaves requiring grad
    (fp32 even when G ran under bf16 autocast, so the penalty's inputs keep full precision)."""
    return [torch.lerp(f.detach().float(), r.detach().float(), alpha.float()).requires_grad_(True)
            for r, f in zip(reals, fakes)]


def gradient_penalty(critic: Critic, reals: Images, fakes: Images,
                     alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over samples of (||grad_{x_hat} D(x_hat)||_2 - 1)^2, the norm taken over all scales.

    Returns (penalty scalar, per-sample gradient norms (N,)). The graph is kept (create_graph)
    so the penalty trains D.
    """
    x_hat = interpolate_scales(reals, fakes, alpha)
    scores = critic(x_hat)
    with input_grads_only():  # this pass needs dD/dx_hat alone (models/conv_grad.py)
        grads = torch.autograd.grad(scores.float().sum(), x_hat, create_graph=True)
    # ||g||^2 summed over scales == squared norm of the concatenated flattened gradients
    sq = sum(g.float().square().sum(dim=(1, 2, 3)) for g in grads)
    norms = sq.sqrt()
    return (norms - 1.0).square().mean(), norms


def r1_penalty(critic: Critic, reals: Images) -> tuple[torch.Tensor, torch.Tensor]:
    """R1: mean over samples of ||grad_x D(x)||^2 at the reals, the norm over all scales together.

    Returns (penalty, D(reals) as (N, 1)): the scores come from the same pass, so the caller
    does not run D on the reals twice. The graph is kept (create_graph) so the penalty trains D.
    """
    x = [r.detach().float().requires_grad_(True) for r in reals]
    scores = critic(x).float()
    with input_grads_only():
        grads = torch.autograd.grad(scores.sum(), x, create_graph=True)
    return sum(g.float().square().sum(dim=(1, 2, 3)) for g in grads).mean(), scores


def ns_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Logistic loss: -log sigmoid(D(real)) - log(1 - sigmoid(D(fake)))."""
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


def ns_g_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating G loss: -log sigmoid(D(fake))."""
    return F.softplus(-d_fake).mean()


def wgan_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return d_fake.mean() - d_real.mean()


def wgan_g_loss(d_fake: torch.Tensor) -> torch.Tensor:
    return -d_fake.mean()


def rahinge_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Relativistic average hinge (MSG-GAN's default loss)."""
    return (F.relu(1.0 - (d_real - d_fake.mean())).mean()
            + F.relu(1.0 + (d_fake - d_real.mean())).mean())


def rahinge_g_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return (F.relu(1.0 + (d_real - d_fake.mean())).mean()
            + F.relu(1.0 - (d_fake - d_real.mean())).mean())


def discriminator_loss(kind: str, critic: Critic, reals: Images, fakes: Images, alpha: torch.Tensor,
                       gp_lambda: float = 10.0, drift: float = 0.0,
                       gp_critic: Critic | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Full D loss and detached stats (d_loss, gp, wasserstein, d_real, d_fake).

    `fakes` must already be detached from G (or are detached here). D is run on reals, fakes
    and the interpolates separately: minibatch-stddev couples samples, so one concatenated
    batch would be a different function. `gp_critic` (default `critic`) is the same D for the
    penalty's pass, which needs a double backward: a torch.compile'd `critic` has none.
    For "ns-r1", `gp_lambda` is R1's gamma (the loss adds gamma/2 * R1) and the reals' scores
    come from the penalty's pass; `alpha` is unused.
    """
    fakes = [f.detach() for f in fakes]
    gp = torch.zeros((), device=fakes[0].device)
    if kind == "ns-r1" and gp_lambda > 0:
        gp, d_real = r1_penalty(gp_critic or critic, reals)  # R1 and D(reals) from one pass
    else:
        d_real = critic(list(reals)).float()
    d_fake = critic(fakes).float()
    if kind == "wgan-gp":
        loss = wgan_d_loss(d_real, d_fake)
    elif kind == "rahinge":
        loss = rahinge_d_loss(d_real, d_fake)
    elif kind == "ns-r1":
        loss = ns_d_loss(d_real, d_fake) + 0.5 * gp_lambda * gp
    else:
        raise ValueError(f"unknown loss {kind!r}")
    if kind != "ns-r1" and gp_lambda > 0:  # WGAN-GP's penalty at the interpolates
        gp, _ = gradient_penalty(gp_critic or critic, reals, fakes, alpha)
        loss = loss + gp_lambda * gp
    if drift > 0:  # keeps D(real) from drifting far from 0 (ProGAN)
        loss = loss + drift * d_real.square().mean()
    stats = {"d_loss": loss.detach(), "gp": gp.detach(),
             "wasserstein": (d_real.mean() - d_fake.mean()).detach(),
             "d_real": d_real.mean().detach(), "d_fake": d_fake.mean().detach()}
    return loss, stats


def generator_loss(kind: str, critic: Critic, fakes: Images, reals: Images | None = None) -> torch.Tensor:
    """G loss on `fakes` (with graph to G). Relativistic losses also need reals (no grad)."""
    d_fake = critic(list(fakes)).float()
    if kind == "wgan-gp":
        return wgan_g_loss(d_fake)
    if kind == "ns-r1":
        return ns_g_loss(d_fake)
    if kind == "rahinge":
        if reals is None:
            raise ValueError("rahinge needs reals for the generator loss")
        with torch.no_grad():
            d_real = critic(list(reals)).float()
        return rahinge_g_loss(d_real, d_fake)
    raise ValueError(f"unknown loss {kind!r}")
