"""MSG-GAN networks against the paper's Tables 1 and 2, plus the building blocks and configs."""

import math
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from models.msggan import (PRESETS, Conv2d, Discriminator, GanConfig, Generator, avg_pool_2x,
                           block_channels, config_from, minibatch_stddev)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


def conv_params(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def paper_nets():
    with torch.device("meta"):  # shapes and counts only: no memory, no compute
        cfg = PRESETS["paper"]
        return cfg.make_generator(), cfg.make_discriminator()


def test_paper_generator_parameter_count_matches_table_1(paper_nets):
    G, _ = paper_nets
    expected = (
        4 * 4 * 512 * 512 + 512           # block 1: latent 512 -> 4x4 (transposed) conv, 512 ch
        + conv_params(3, 512, 512)        # block 1: 3x3 conv
        + 3 * 2 * conv_params(3, 512, 512)  # blocks 2-4: two 3x3 convs each, 512 ch
        + conv_params(3, 512, 256) + conv_params(3, 256, 256)  # block 5: 256 ch
        + 4 * conv_params(1, 512, 3) + conv_params(1, 256, 3)  # toRGB on every block
    )
    assert n_params(G) == expected == 22_490_383


def test_paper_discriminator_parameter_count_matches_table_2(paper_nets):
    _, D = paper_nets
    expected = (
        conv_params(1, 3, 256)                                  # fromRGB
        + conv_params(3, 260, 256) + conv_params(3, 256, 512)   # 64 px block
        + 3 * (conv_params(3, 516, 512) + conv_params(3, 512, 512))  # 32, 16, 8 px blocks
        + conv_params(3, 516, 512) + conv_params(4, 512, 512)   # 4 px block
        + 512 * 1 + 1                                           # fully connected -> 1
    )
    assert n_params(D) == expected == 22_568_193


def test_paper_generator_block_and_torgb_shapes_match_table_1(paper_nets):
    G, _ = paper_nets
    z = torch.randn(2, 512, device="meta")
    feats = G.blocks_forward(z)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (512, 4, 4), (512, 8, 8), (512, 16, 16), (512, 32, 32), (256, 64, 64)]
    images = G(z)
    assert [tuple(x.shape[1:]) for x in images] == [
        (3, 4, 4), (3, 8, 8), (3, 16, 16), (3, 32, 32), (3, 64, 64)]
    assert G.resolutions == [4, 8, 16, 32, 64]


def test_paper_discriminator_shapes_match_table_2(paper_nets):
    _, D = paper_nets
    images = [torch.randn(2, 3, s, s, device="meta") for s in (4, 8, 16, 32, 64)]
    trace = [tuple(t.shape[1:]) for t in D.blocks_forward(images)]
    assert trace == [
        # 64 px block: concat image, mbstd, 3x3 conv, 3x3 conv (then pool to 32)
        (259, 64, 64), (260, 64, 64), (256, 64, 64), (512, 64, 64),
        (515, 32, 32), (516, 32, 32), (512, 32, 32), (512, 32, 32),
        (515, 16, 16), (516, 16, 16), (512, 16, 16), (512, 16, 16),
        (515, 8, 8), (516, 8, 8), (512, 8, 8), (512, 8, 8),
        # last block: concat 515, mbstd 516, 3x3 conv 512, 4x4 conv 512x1x1, fc -> 1
        (515, 4, 4), (516, 4, 4), (512, 4, 4), (512, 1, 1), (1,),
    ]
    assert tuple(D(images).shape) == (2, 1)


@pytest.mark.parametrize("eq,pn", [(True, True), (False, False), (True, False)])
def test_options_change_no_parameter_count_and_forward_runs(eq, pn):
    torch.manual_seed(0)
    G = Generator(latent_dim=16, width=1 / 64, equalized_lr=eq, pixel_norm=pn)
    D = Discriminator(width=1 / 64, equalized_lr=eq)
    ref_g, ref_d = Generator(16, 1 / 64), Discriminator(1 / 64)
    assert n_params(G) == n_params(ref_g) and n_params(D) == n_params(ref_d)
    images = G(torch.randn(4, 16))
    scores = D(images)
    assert scores.shape == (4, 1) and torch.isfinite(scores).all()
    # He init without equalized lr, N(0,1) weights with it: the effective weights match in scale
    w = G.convs[0].weight * G.convs[0].scale
    assert 0.5 < w.std().item() * (9 * G.channels[1]) ** 0.5 / 2 ** 0.5 < 2.0


def test_width_scales_channels_with_floor():
    assert block_channels(5, 1.0) == [512, 512, 512, 512, 256]
    assert block_channels(5, 1 / 8) == [64, 64, 64, 64, 32]
    assert block_channels(5, 1 / 128) == [8, 8, 8, 8, 8]
    assert block_channels(4, 1.0) == [512, 512, 512, 512]
    G = Generator(latent_dim=8, width=1 / 64, depth=4)
    assert [x.shape[-1] for x in G(torch.randn(2, 8))] == [4, 8, 16, 32]
    with pytest.raises(ValueError):
        block_channels(1, 1.0)
    with pytest.raises(ValueError):
        block_channels(5, 0.0)


def test_fused_upsample_conv_equals_upsample_then_conv():
    torch.manual_seed(0)
    conv = Conv2d(6, 5, 3, up=True)
    x = torch.randn(3, 6, 7, 9)
    expected = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"),
                        conv.weight * conv.scale, conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)


def test_avg_pool_2x_equals_avg_pool2d_and_is_twice_differentiable():
    x = torch.randn(2, 3, 8, 6, dtype=torch.double, requires_grad=True)
    torch.testing.assert_close(avg_pool_2x(x), F.avg_pool2d(x, 2))
    assert torch.autograd.gradcheck(avg_pool_2x, (x,))
    assert torch.autograd.gradgradcheck(avg_pool_2x, (x,))


def test_minibatch_stddev_matches_definition():
    x = torch.randn(8, 5, 3, 3)
    out = minibatch_stddev(x, group_size=4)
    assert out.shape == (8, 6, 3, 3) and torch.equal(out[:, :5], x)
    groups = x.view(4, 2, 5, 3, 3)  # sample i is in group i % 2
    for j in range(2):
        expected = (groups[:, j].var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        torch.testing.assert_close(out[j::2, 5], expected.expand(4, 3, 3))
    whole = minibatch_stddev(x, group_size=0)[:, 5]
    torch.testing.assert_close(whole, (x.var(dim=0, unbiased=False) + 1e-8).sqrt().mean().expand(8, 3, 3))


def test_presets():
    paper = PRESETS["paper"]
    assert (paper.width, paper.latent_dim, paper.depth, paper.optimizer, paper.lr, paper.batch_size,
            paper.loss, paper.gp_lambda) == (1.0, 512, 5, "rmsprop", 1e-4, 16, "wgan-gp", 10.0)
    small = PRESETS["cpu-small"]
    assert small.width < 1 and small.resolution == 64
    assert block_channels(small.depth, small.width)[-1] >= 8
    he = PRESETS["cpu-small-he"]  # cpu-small with plain He-initialised weights, nothing else
    assert he.equalized_lr is False and small.equalized_lr is True
    assert {**he.to_dict(), "equalized_lr": True} == small.to_dict()
    tissue = PRESETS["cpu-tissue"]  # cpu-small-he with Adam at 3e-4 and dihedral reals, nothing else
    assert {**tissue.to_dict(), "lr": he.lr, "augment": "none"} == he.to_dict()
    assert (tissue.lr, tissue.augment) == (3e-4, "dihedral")
    g = he.make_generator()
    conv = next(m for m in g.modules() if isinstance(m, Conv2d))
    assert conv.scale == 1.0 and 0.5 < conv.weight.std().item() * math.sqrt(conv.weight[0].numel()) / math.sqrt(2) < 2


def test_config_from_applies_overrides_and_rejects_unknown_fields():
    cfg = config_from("paper", {"width": 0.25, "n_critic": 2})
    assert cfg.width == 0.25 and cfg.n_critic == 2 and PRESETS["paper"].width == 1.0
    with pytest.raises(ValueError, match="bogus.*typo_lr|typo_lr"):
        config_from("paper", {"bogus": 1, "typo_lr": 3})
    with pytest.raises(ValueError, match="unknown preset"):
        config_from("nope", {})
    with pytest.raises(ValueError):
        config_from("paper", {"loss": "hinge"})
    with pytest.raises(ValueError):
        config_from("paper", {"optimizer": "sgd"})
    # the plain dict round-trips
    assert GanConfig(**cfg.to_dict()) == cfg
    assert {f.name for f in dataclasses.fields(GanConfig)} == set(cfg.to_dict())


def test_bilinear_upsampling_is_an_option_with_the_same_parameters():
    import torch

    from models.msggan import config_from

    nearest = config_from("cpu-small").make_generator()
    bilinear = config_from("cpu-small", {"upsample": "bilinear"}).make_generator()
    assert sum(p.numel() for p in nearest.parameters()) == sum(p.numel() for p in bilinear.parameters())
    bilinear.load_state_dict(nearest.state_dict())
    z = torch.randn(2, 128)
    a, b = nearest(z), bilinear(z)
    assert [x.shape for x in a] == [x.shape for x in b]
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[-1], b[-1])  # same 4 px block, other upsampling
    with pytest.raises(ValueError, match="upsample"):
        config_from("cpu-small", {"upsample": "cubic"})


def test_discriminator_width_is_its_own_field_and_defaults_to_the_generators():
    same = config_from("cpu-small", {})
    wide = config_from("cpu-small", {"d_width": 2 / 32})
    channels = lambda net: sorted({m.weight.shape[0] for m in net.modules() if isinstance(m, Conv2d)})  # noqa: E731
    assert channels(same.make_discriminator()) == [8, 16]  # mirrors G at 1/32 width (Tables 1-2)
    assert channels(wide.make_discriminator()) == [16, 32]
    assert n_params(wide.make_generator()) == n_params(same.make_generator())  # G untouched
    D = wide.make_discriminator()
    assert D(same.make_generator()(torch.randn(4, 128))).shape == (4, 1)
    with pytest.raises(ValueError):
        config_from("cpu-small", {"d_width": 0.0})
    # a checkpoint's plain dict without the field reads as the mirrored discriminator
    assert GanConfig(**{k: v for k, v in same.to_dict().items() if k != "d_width"}) == same
