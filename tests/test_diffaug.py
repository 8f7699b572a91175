"""DiffAugment on MSG-GAN's scales (models/diffaug.py): the same transform at every scale, an
exact shift at the largest, differentiable, and wired into the trainer reproducibly."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.diffaug import DRAW_WIDTH, augment_scales
from models.gan_trainer import GanTrainer
from models.msggan import config_from
from tests.conftest import FAST_GAN


def pyramid(top: torch.Tensor, depth: int) -> list[torch.Tensor]:
    out = [top]
    for _ in range(depth - 1):
        out.insert(0, F.avg_pool2d(out[0], 2))
    return out


def uniforms(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, DRAW_WIDTH, generator=torch.Generator().manual_seed(seed))


def test_none_is_the_identity_and_unknown_policies_are_refused():
    images = pyramid(torch.randn(3, 3, 16, 16), 3)
    same = augment_scales(images, "none", uniforms(3))
    assert all(a is b for a, b in zip(same, images))
    with pytest.raises(ValueError, match="diffaug must be one of"):
        augment_scales(images, "colour", uniforms(3))
    with pytest.raises(ValueError, match="uniforms of shape"):
        augment_scales(images, "cutout", uniforms(2))


def test_translation_is_an_exact_whole_pixel_shift_at_the_top_scale():
    top = torch.randn(64, 3, 32, 32)
    u = uniforms(64, seed=1)
    (moved,) = augment_scales([top], "translation", u)
    limit = 32 // 8
    shift = (torch.floor(u[:, :2] * (2 * limit + 1)) - limit).long()
    assert shift.abs().max() == limit and (shift == 0).any()  # the draw spans the range
    for i in range(64):
        dx, dy = shift[i].tolist()
        expect = torch.zeros_like(top[i])
        src = top[i][:, max(0, -dy):32 - max(0, dy), max(0, -dx):32 - max(0, dx)]
        expect[:, max(0, dy):32 - max(0, -dy), max(0, dx):32 - max(0, -dx)] = src
        torch.testing.assert_close(moved[i], expect, atol=1e-5, rtol=0)


def test_every_scale_sees_the_same_transform():
    # An image of 8x8 blocks at 32 px (2x2 at 8 px), shifted by whole blocks of the smallest
    # scale: each scale's result is the average pooled result of the scale above, as the
    # reals' pyramid is, for translation, cutout (at any corner) and both.
    top = F.interpolate(torch.randn(16, 3, 4, 4), scale_factor=8, mode="nearest")
    scales = pyramid(top, 3)
    u = uniforms(16, seed=2)
    u[:, 0:2] = (4 * torch.randint(-1, 2, (16, 2)) + 4 + 0.5) / 9  # shifts of -4, 0 or 4 px at 32 px
    for policy in ("translation", "cutout", "translation,cutout"):
        out = augment_scales(scales, policy, u)
        assert not torch.equal(out[-1], scales[-1])
        for small, big in zip(out[:-1], out[1:]):
            torch.testing.assert_close(small, F.avg_pool2d(big, 2), atol=1e-5, rtol=0)


def test_cutout_zeroes_a_square_of_half_the_side():
    ones = [torch.ones(32, 1, 8, 8), torch.ones(32, 1, 16, 16)]
    u = torch.zeros(32, DRAW_WIDTH)
    u[:, 2:4] = 0.5  # centred: the whole box is inside
    out = augment_scales(ones, "cutout", u)
    for x in out:
        s = x.shape[-1]
        assert ((x == 0).sum(dim=(1, 2, 3)) == (s // 2) ** 2).all() and (x == 1).sum() == 32 * 3 * (s // 2) ** 2
    u[:, 2:4] = 0.0  # on a corner: a quarter of the box is inside
    assert ((augment_scales(ones, "cutout", u)[1] == 0).sum(dim=(1, 2, 3)) == 4 * 4).all()
    u[:, 2:4] = 1 / 17  # one pixel in at 16 px: the 8 px scale keeps a quarter of each pixel it half covers
    small, big = augment_scales(ones, "cutout", u)
    assert (big == 0).sum(dim=(1, 2, 3)).tolist() == [5 * 5] * 32
    torch.testing.assert_close(small, F.avg_pool2d(big, 2))


def test_gradients_flow_through_both_transforms():
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    (y,) = augment_scales([x], "translation,cutout", uniforms(4, seed=3))
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.isfinite(x.grad).all()


def test_trainer_with_diffaug_trains_and_resumes_bit_for_bit(one_torch_thread):
    patches = np.random.default_rng(0).integers(0, 256, (12, 50, 50, 3), dtype=np.uint8)
    config = config_from("cpu-small-he", {**FAST_GAN, "diffaug": "translation,cutout"})
    straight = GanTrainer(config, patches)
    straight.train(4)
    first = GanTrainer(config, patches)
    first.train(2)
    resumed = GanTrainer(config, patches)
    resumed.load_state_dict(first.state_dict())
    resumed.train(4)
    assert [h["d_loss"] for h in resumed.history] == [h["d_loss"] for h in straight.history]
    assert all(np.isfinite(list(h.values())).all() for h in straight.history)
    plain = GanTrainer(config_from("cpu-small-he", FAST_GAN), patches)
    plain.train(4)
    # The transform changes what D sees, so the losses differ from the same run without it.
    assert [h["d_loss"] for h in plain.history] != [h["d_loss"] for h in straight.history]
    with pytest.raises(ValueError, match="diffaug='none'"):
        straight.train_step_on(torch.zeros(4, 50, 50, 3, dtype=torch.uint8), torch.zeros(4, 16), torch.zeros(4, 1, 1, 1))
    for trainer in (straight, first, resumed, plain):
        trainer.close()
