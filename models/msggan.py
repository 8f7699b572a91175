"""MSG-GAN generator and discriminator (Karnewar & Wang, CVPR 2020) as the seed paper uses them.

The seed paper (Aytar & Gunduc) gives the networks in two tables; every number below that has
a source cites it:

- Table 1 (generator): latent 512, normalised -> block 1: 4x4 conv to 512x4x4, 3x3 conv;
  blocks 2-4: upsample x2, two 3x3 convs, 512 channels (8, 16, 32 px); block 5: upsample to
  64 px, two 3x3 convs, 256 channels. LeakyReLU after every conv. A 1x1 toRGB conv on every
  block output gives the images at 4, 8, 16, 32 and 64 px that all go to the discriminator.
- Table 2 (discriminator): 64 px image -> 1x1 fromRGB (256 ch); in every block the raw image of
  that scale is concatenated (phi_simple, +3 ch), then minibatch-stddev (+1 ch), 3x3 conv,
  3x3 conv, average pool. 64 px block 259->260->256->512; 32/16/8 px blocks 515->516->512->512;
  4 px block 515->516->512 (3x3) -> 512x1x1 (4x4 conv) -> fully connected -> 1 (linear).

Neither table lists equalized learning rate or pixel normalisation. MSG-GAN (and ProGAN, from
which it inherits its layers) uses both, so both are on by default and can be switched off;
they change no parameter count and no shape. The tables do not give the minibatch-stddev
group size either; we use ProGAN's 4 (0 = the whole batch, as the public MSG-GAN code does).

"Upsample" is nearest-neighbour x2 (MSG-GAN's choice; the table names no mode).

`width` scales every channel count (floor `MIN_CHANNELS`); `depth` is the number of blocks
(output 4 * 2**(depth-1) px; 5 blocks = 64 px as in the paper).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.conv_grad import conv2d
from models.diffaug import POLICIES as DIFFAUG_POLICIES

MIN_CHANNELS = 8
LRELU_SLOPE = 0.2  # MSG-GAN / ProGAN
# Table 1 channels, coarsest block first; deeper nets (not in the paper) keep halving.
PAPER_CHANNELS = (512, 512, 512, 512, 256, 128, 64, 32)


def block_channels(depth: int, width: float) -> list[int]:
    """Channels of each generator block (coarsest first); the discriminator mirrors them."""
    if not 2 <= depth <= len(PAPER_CHANNELS):
        raise ValueError(f"depth must be in 2..{len(PAPER_CHANNELS)}, got {depth}")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return [max(MIN_CHANNELS, int(round(c * width))) for c in PAPER_CHANNELS[:depth]]


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise every pixel's feature vector (dim 1) to unit RMS (ProGAN)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def _up_kernel_1d(w: torch.Tensor, dim: int) -> torch.Tensor:
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)


def fuse_upsample_conv_weight(w: torch.Tensor) -> torch.Tensor:
    """3x3 conv weight (out, in, 3, 3) -> 4x4 stride-2 transposed-conv weight (in, out, 4, 4).

    Nearest x2 upsampling followed by a padded 3x3 conv equals one stride-2 transposed conv
    whose 4x4 kernel sums the taps that land on the same source pixel. Same function, but it
    never materialises the 4x larger upsampled tensor and does 16 instead of 36 multiply-adds
    per source pixel and channel pair.
    """
    return _up_kernel_1d(_up_kernel_1d(w, 2), 3).transpose(0, 1)


class Conv2d(nn.Module):
    """Conv with bias; He init, or equalized learning rate (weights ~ N(0,1), scaled at run time).

    up="nearest" (or True) means "nearest upsample x2, then this conv", computed fused (see above);
    up="bilinear" upsamples bilinearly first (smoother; not fusable into one transposed conv).
    """

    def __init__(self, cin: int, cout: int, kernel: int, *, gain: float = math.sqrt(2),
                 equalized: bool = True, padding: int | None = None, up: bool | str = False) -> None:
        super().__init__()
        he_std = gain / math.sqrt(cin * kernel * kernel)
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel) * (1.0 if equalized else he_std))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = he_std if equalized else 1.0
        self.padding = kernel // 2 if padding is None else padding
        self.up = "nearest" if up is True else (up or None)
        if self.up not in (None, "nearest", "bilinear"):
            raise ValueError(f"up must be 'nearest' or 'bilinear', got {up!r}")
        if self.up == "nearest" and kernel != 3:
            raise ValueError("the fused upsample conv is for 3x3 kernels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, cin, H, W)
        w = self.weight * self.scale if self.scale != 1.0 else self.weight
        if self.up == "bilinear":  # -> (N, cout, 2H, 2W)
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        elif self.up:  # -> (N, cout, 2H, 2W)
            return F.conv_transpose2d(x, fuse_upsample_conv_weight(w).to(x.dtype), self.bias.to(x.dtype),
                                      stride=2, padding=1)
        # models.conv_grad: same function; its double backward (the gradient penalty) is fast
        return conv2d(x, w, self.bias, self.padding)


class Dense(nn.Module):
    """Fully connected layer with the same init options as Conv2d."""

    def __init__(self, cin: int, cout: int, *, gain: float = 1.0, equalized: bool = True) -> None:
        super().__init__()
        he_std = gain / math.sqrt(cin)
        self.weight = nn.Parameter(torch.randn(cout, cin) * (1.0 if equalized else he_std))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = he_std if equalized else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, cin) -> (N, cout)
        w = self.weight * self.scale if self.scale != 1.0 else self.weight
        return F.linear(x, w.to(x.dtype), self.bias.to(x.dtype))


class LatentProjection(nn.Module):
    """Table 1 block 1's "4x4 conv": a transposed 4x4 conv from the 1x1 latent to (c, 4, 4).

    Weight layout is ConvTranspose2d's (latent, c, 4, 4): 16*latent*c + c parameters. On a 1x1
    input that transposed conv is exactly a matrix product, which is how it is computed.
    """

    def __init__(self, latent_dim: int, cout: int, *, equalized: bool = True) -> None:
        super().__init__()
        he_std = math.sqrt(2) / math.sqrt(latent_dim)  # each output sees latent_dim inputs
        self.weight = nn.Parameter(torch.randn(latent_dim, cout, 4, 4) * (1.0 if equalized else he_std))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = he_std if equalized else 1.0

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: (N, latent) -> (N, c, 4, 4)
        w = self.weight * self.scale if self.scale != 1.0 else self.weight
        cout = self.weight.shape[1]
        out = z @ w.to(z.dtype).reshape(w.shape[0], cout * 16)
        return out.view(-1, cout, 4, 4) + self.bias.to(z.dtype).view(1, cout, 1, 1)


def _act(x: torch.Tensor, pn: bool) -> torch.Tensor:
    x = F.leaky_relu(x, LRELU_SLOPE)
    return pixel_norm(x) if pn else x


class Generator(nn.Module):
    """Table 1. `forward(z)` returns images coarsest first: [(N,3,4,4), (N,3,8,8), ..., (N,3,64,64)].

    Outputs are linear (no tanh, as MSG-GAN); real images are scaled to [-1, 1].
    """

    def __init__(self, latent_dim: int = 512, width: float = 1.0, depth: int = 5,
                 equalized_lr: bool = True, pixel_norm: bool = True, upsample: str = "nearest") -> None:
        super().__init__()
        self.latent_dim, self.depth, self.pixel_norm = latent_dim, depth, pixel_norm
        ch = block_channels(depth, width)
        self.channels = ch
        eq = dict(equalized=equalized_lr)
        # block 1: latent -> 4x4 "conv" -> 3x3 conv (Table 1 row 1)
        self.project = LatentProjection(latent_dim, ch[0], **eq)
        self.conv0 = Conv2d(ch[0], ch[0], 3, **eq)
        # blocks 2..depth: upsample x2 + 3x3 conv (fused), 3x3 conv (Table 1 rows 2-5)
        self.ups = nn.ModuleList(Conv2d(ch[i - 1], ch[i], 3, up=upsample, **eq) for i in range(1, depth))
        self.convs = nn.ModuleList(Conv2d(ch[i], ch[i], 3, **eq) for i in range(1, depth))
        # 1x1 toRGB on every block output, linear (gain 1)
        self.to_rgb = nn.ModuleList(Conv2d(c, 3, 1, gain=1.0, **eq) for c in ch)

    @property
    def resolutions(self) -> list[int]:
        return [4 * 2 ** i for i in range(self.depth)]

    def blocks_forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after every block (for shape checks): [(N,c1,4,4), ..., (N,c5,64,64)]."""
        h = _act(self.project(pixel_norm(z)), self.pixel_norm)  # latent normalised (Table 1)
        h = _act(self.conv0(h), self.pixel_norm)
        feats = [h]
        for up, conv in zip(self.ups, self.convs):
            h = _act(up(h), self.pixel_norm)
            h = _act(conv(h), self.pixel_norm)
            feats.append(h)
        return feats

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:  # z: (N, latent_dim)
        return [rgb(f) for rgb, f in zip(self.to_rgb, self.blocks_forward(z))]


class _AvgPool2x(torch.autograd.Function):
    """2x2 average pool as two strided adds: the same average as F.avg_pool2d(x, 2), several
    times faster on CPU (the profile showed avg_pool2d and its backward at 4 ms/call on a
    16x64x64x64 map), and twice differentiable for the gradient penalty: the backward of a
    pool is an "unpool" and the backward of that is the pool again."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, H/2, W/2)
        n, c, h, w = x.shape
        pairs = x.reshape(n, c, h // 2, 2 * w)  # row 2i and row 2i+1 side by side
        rows = pairs[..., :w] + pairs[..., w:]
        return (rows[..., 0::2] + rows[..., 1::2]).mul_(0.25)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _Unpool2x.apply(grad)


class _Unpool2x(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g: torch.Tensor) -> torch.Tensor:  # (N, C, h, w) -> (N, C, 2h, 2w), each / 4
        n, c, h, w = g.shape
        cols = (g * 0.25).unsqueeze(-1).expand(n, c, h, w, 2).reshape(n, c, h, 2 * w)
        return cols.unsqueeze(3).expand(n, c, h, 2, 2 * w).reshape(n, c, 2 * h, 2 * w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AvgPool2x.apply(grad)


def avg_pool_2x(x: torch.Tensor) -> torch.Tensor:
    """F.avg_pool2d(x, 2) for even H and W (the strided form only where it was measured: CPU)."""
    if x.device.type != "cpu":
        return F.avg_pool2d(x, 2)
    return _AvgPool2x.apply(x)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Append one channel: the feature stddev across a group of samples, averaged (ProGAN).

    x: (N, C, H, W) -> (N, C+1, H, W). Group j holds samples j, j+N/G, j+2N/G, ...; the
    statistic couples the samples of a batch, so D(cat(real, fake)) != cat(D(real), D(fake)).
    Written with G contiguous chunks instead of a reduction over a leading axis: same numbers,
    3x faster forward on CPU (torch.var over dim 0, the obvious form, was the slowest op in
    the baseline's profile).
    """
    n, c, h, w = x.shape
    g = n if group_size <= 0 else min(group_size, n)
    if n % g:
        g = n
    members = x.float().split(n // g)  # G tensors (N/G, C, H, W); member k of every group
    mean = sum(members) / g
    var = sum((m - mean).square() for m in members) / g
    std = var.add(1e-8).sqrt().mean(dim=(1, 2, 3)).to(x.dtype)  # (N/G,)
    std = std.view(1, -1, 1, 1, 1).expand(g, -1, 1, h, w).reshape(n, 1, h, w)
    return torch.cat([x, std], dim=1)


class Discriminator(nn.Module):
    """Table 2. `forward(images)` takes the generator's list (coarsest first) -> scores (N, 1)."""

    def __init__(self, width: float = 1.0, depth: int = 5, equalized_lr: bool = True,
                 mbstd_group: int = 4) -> None:
        super().__init__()
        self.depth, self.mbstd_group = depth, mbstd_group
        ch = block_channels(depth, width)
        eq = dict(equalized=equalized_lr)
        # fromRGB on the finest image only (Table 2: 3 -> 256 at 64 px)
        self.from_rgb = Conv2d(3, ch[-1], 1, **eq)
        # blocks finest -> second coarsest: concat image (+3), mbstd (+1), conv, conv, pool.
        # block at scale i: (ch[i] + 4) -> ch[i] -> ch[i-1]; 64 px: 260 -> 256 -> 512.
        self.convs1 = nn.ModuleList(Conv2d(ch[i] + 4, ch[i], 3, **eq) for i in range(depth - 1, 0, -1))
        self.convs2 = nn.ModuleList(Conv2d(ch[i], ch[i - 1], 3, **eq) for i in range(depth - 1, 0, -1))
        # final 4 px block: concat (515), mbstd (516), 3x3 conv 512, 4x4 conv 512x1x1, fc -> 1
        self.final_conv = Conv2d(ch[0] + 4, ch[0], 3, **eq)
        self.final_4x4 = Conv2d(ch[0], ch[0], 4, padding=0, **eq)
        self.fc = Dense(ch[0], 1, gain=1.0, **eq)

    def blocks_forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Inputs of every conv, in order, plus the score (for shape checks against Table 2)."""
        trace: list[torch.Tensor] = []
        h = F.leaky_relu(self.from_rgb(images[-1]), LRELU_SLOPE)
        for k, (conv1, conv2) in enumerate(zip(self.convs1, self.convs2)):
            h = torch.cat([h, images[self.depth - 1 - k].to(h.dtype)], dim=1)  # phi_simple
            trace.append(h)
            h = minibatch_stddev(h, self.mbstd_group)
            trace.append(h)
            h = F.leaky_relu(conv1(h), LRELU_SLOPE)
            trace.append(h)
            h = F.leaky_relu(conv2(h), LRELU_SLOPE)
            trace.append(h)
            h = avg_pool_2x(h)
        h = torch.cat([h, images[0].to(h.dtype)], dim=1)
        trace.append(h)
        h = minibatch_stddev(h, self.mbstd_group)
        trace.append(h)
        h = F.leaky_relu(self.final_conv(h), LRELU_SLOPE)
        trace.append(h)
        h = F.leaky_relu(self.final_4x4(h), LRELU_SLOPE)
        trace.append(h)
        trace.append(self.fc(h.flatten(1)))
        return trace

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:  # list of (N,3,s,s) -> (N,1)
        if len(images) != self.depth:
            raise ValueError(f"expected {self.depth} scales, got {len(images)}")
        return self.blocks_forward(images)[-1]


LOSSES = ("wgan-gp", "rahinge", "ns-r1")
OPTIMIZERS = ("rmsprop", "adam")
# A tissue patch has no up or left (the slide's orientation is arbitrary), so each of its 8
# flips/rotations is an equally real patch: "dihedral" shows D one of them per draw, an 8x
# larger real set for a discriminator that otherwise sees each training patch every epoch.
AUGMENTS = ("none", "dihedral")


@dataclass
class GanConfig:
    """Everything that defines a GAN run; stored as a plain dict in checkpoints."""

    latent_dim: int = 512            # Table 1
    width: float = 1.0               # channel multiplier on Tables 1-2
    d_width: float | None = None     # the discriminator's multiplier; None = `width` (Tables 1-2 mirror)
    depth: int = 5                   # 5 blocks -> 64 px (Tables 1-2)
    equalized_lr: bool = True        # MSG-GAN/ProGAN; the tables are silent
    pixel_norm: bool = True          # MSG-GAN/ProGAN; the tables are silent
    mbstd_group: int = 4             # ProGAN; 0 = whole batch
    loss: str = "wgan-gp"            # paper: WGAN-GP for both networks
    gp_lambda: float = 10.0          # WGAN-GP's lambda (any loss when > 0); R1's gamma for "ns-r1"
    drift: float = 0.001             # ProGAN's eps * D(real)^2; 0 disables
    lr: float = 1e-4                 # paper
    d_lr: float | None = None        # D's own learning rate (TTUR); None = `lr`, as the paper
    lr_decay_start: int = 0          # step at which both learning rates start a linear fall to 0
    lr_decay_steps: int = 0          # ...reaching 0 this many steps later; 0 = constant (the paper)
    batch_size: int = 16             # paper
    n_critic: int = 1                # D steps per G step
    optimizer: str = "rmsprop"       # paper; "adam" optional
    adam_beta1: float = 0.0
    adam_beta2: float = 0.99
    ema_beta: float = 0.999
    fixed_samples: int = 16          # latents kept fixed for progress grids
    seed: int = 0
    upsample: str = "nearest"        # MSG-GAN's; "bilinear" is smoother (the tables name no mode)
    augment: str = "none"            # "dihedral": each real patch in one of its 8 flips/rotations
    diffaug: str = "none"            # D's inputs, real and fake, transformed (models/diffaug.py)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.upsample not in ("nearest", "bilinear"):
            raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {self.upsample!r}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        if self.diffaug not in DIFFAUG_POLICIES:
            raise ValueError(f"diffaug must be one of {DIFFAUG_POLICIES}, got {self.diffaug!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("latent_dim", "batch_size", "n_critic", "fixed_samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if int(self.lr_decay_start) < 0 or int(self.lr_decay_steps) < 0:
            raise ValueError("lr_decay_start and lr_decay_steps must be >= 0")
        if self.d_lr is not None and not self.d_lr > 0:
            raise ValueError(f"d_lr must be > 0 or None, got {self.d_lr!r}")
        if not 0.0 <= self.ema_beta < 1.0:
            raise ValueError("ema_beta must be in [0, 1)")
        block_channels(self.depth, self.width)  # validates depth and width
        if self.d_width is not None:
            block_channels(self.depth, self.d_width)

    def lr_factor(self, step: int) -> float:
        """The learning rates' multiplier for the step after `step` completed ones: 1 until
        `lr_decay_start`, then linear to 0 over `lr_decay_steps` (constant-then-linear-decay, as
        in CycleGAN, Zhu et al. 2017, Sec. 4: it settles a generator that is still moving)."""
        if self.lr_decay_steps <= 0:
            return 1.0
        return min(1.0, max(0.0, 1.0 - (step - self.lr_decay_start) / self.lr_decay_steps))

    @property
    def resolution(self) -> int:
        return 4 * 2 ** (self.depth - 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def make_generator(self) -> Generator:
        return Generator(self.latent_dim, self.width, self.depth, self.equalized_lr, self.pixel_norm, self.upsample)

    def make_discriminator(self) -> Discriminator:
        d_width = self.width if self.d_width is None else self.d_width
        return Discriminator(d_width, self.depth, self.equalized_lr, self.mbstd_group)


# cpu-small without the equalized lr; named so that cpu-tissue is spelled as its two changes.
_CPU_SMALL_HE = GanConfig(latent_dim=128, width=1 / 32, optimizer="adam", lr=1e-3, ema_beta=0.99, equalized_lr=False)

PRESETS: dict[str, GanConfig] = {
    # Tables 1-2 and the paper's training setup: RMSprop, lr 1e-4, batch 16, WGAN-GP.
    "paper": GanConfig(),
    # Same architecture at 1/32 width (16 channels, 8 at 64 px) with a 128-d latent: about
    # 1 s/step on one busy CPU core; in a check on 4,000 IDC- patches the samples took on the
    # H&E palette (mean colour within ~6 grey levels of the real patches') by step 400, with
    # coarse texture only. Adam at a higher lr just so that happens in minutes; the EMA horizon
    # is shortened to match such short runs.
    "cpu-small": GanConfig(latent_dim=128, width=1 / 32, optimizer="adam", lr=1e-3,
                           ema_beta=0.99),
    # cpu-small at twice the width (32-32-32-32-16 channels): in bench/preset_fid.py at 2,000
    # steps it covered more of the held-out real patches' feature space than cpu-small and drew
    # strand-like structure instead of stripes, at ~2x the time per step (BENCHMARKS.md).
    "cpu-medium": GanConfig(latent_dim=128, width=1 / 16, optimizer="adam", lr=1e-3, ema_beta=0.99),
    # cpu-small without the equalized learning rate (plain He-initialised weights): with Adam at
    # 1e-3 the equalized lr left the 4-8 px outputs unrelated to the 64 px image; without it the
    # scales agree and the 64 px samples show nuclei clusters, stroma and fat at the same cost
    # per step (bench/preset_fid.py campaign 3, BENCHMARKS.md).
    "cpu-small-he": _CPU_SMALL_HE,
    # cpu-small-he with Adam at 3e-4 and each real patch shown to D in one of its 8 flips and
    # rotations: the best CPU recipe over 28 bench/preset_fid.py campaigns (BENCHMARKS.md), best
    # trained for 6,000 steps with snapshots scored every 125 from 2,000 (train_gan
    # `select_every`), about 21 minutes per label on 2 cores.
    "cpu-tissue": dataclasses.replace(_CPU_SMALL_HE, lr=3e-4, augment="dihedral"),
    # Not the paper: Tables 1-2 and WGAN-GP unchanged, batch 64 to fill a GPU (16 patches of
    # 64 px leave most of an H100 idle), lr scaled by sqrt(64/16) = 2 (the square-root rule
    # for adaptive optimisers). Its images/s against `paper` are in BENCHMARKS.md.
    "gpu-large": GanConfig(batch_size=64, lr=2e-4),
}


def config_from(preset: str, overrides: dict | None = None) -> GanConfig:
    """A preset with `overrides` applied; unknown preset or field names raise ValueError."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    overrides = dict(overrides or {})
    known = {f.name for f in dataclasses.fields(GanConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown GAN config field(s): {', '.join(unknown)}")
    return dataclasses.replace(PRESETS[preset], **overrides)
