"""One MSG-GAN WGAN-GP training step (D and G, batch 16): project GanTrainer vs a plain baseline.

    python bench/gan_step.py --width 0.125 --json

The baseline below is the same architecture (Tables 1-2 of the paper scaled by --width, with
equalized lr and pixel norm as the paper preset), the same loss (WGAN-GP with the multi-scale
penalty, drift) and the same RMSprop/EMA updates, written the obvious way: nn.Upsample then
conv, torch.cat, the real pyramid interpolated every step from a float copy of the dataset,
G run again for its own update, D's weight gradients computed during the G update, and the
per-scale gradients of the penalty taken one autograd.grad call per scale. Both run in the
same process on the same synthetic uint8 patches (or --data, a uint8 .npy of (N, H, W, 3)),
alternating step by step so machine noise hits both alike; warm-up steps, then the median.
--check first verifies that both compute the same losses from the same weights and inputs.
The last line printed is one JSON object. On a shared machine, --threads 1 gives steadier
numbers (2 OpenMP threads on 2 busy cores spin-wait). glibc malloc settings can change the
absolute times (big activations are mmap'd and page-faulted afresh every step); the JSON
records that environment.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.gan_trainer import GanTrainer  # noqa: E402
from models.msggan import block_channels, config_from  # noqa: E402


# ------------------------------------------------------------------------------- baseline
class EqConv(nn.Module):
    def __init__(self, cin, cout, k, gain=math.sqrt(2), padding=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = gain / math.sqrt(cin * k * k)
        self.padding = k // 2 if padding is None else padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqProject(nn.Module):  # latent (1x1) -> 4x4 transposed conv
    def __init__(self, latent, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(latent, cout, 4, 4))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = math.sqrt(2) / math.sqrt(latent)

    def forward(self, z):
        return F.conv_transpose2d(z[:, :, None, None], self.weight * self.scale, self.bias)


class EqLinear(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = 1 / math.sqrt(cin)

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias)


class PixelNorm(nn.Module):
    def forward(self, x):
        return x / torch.sqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


class MinibatchStd(nn.Module):
    def __init__(self, group=4):
        super().__init__()
        self.group = group

    def forward(self, x):
        n, c, h, w = x.shape
        g = min(self.group, n)
        y = x.reshape(g, n // g, c, h, w)
        y = torch.sqrt(torch.var(y, dim=0, unbiased=False) + 1e-8)
        y = torch.mean(y, dim=[1, 2, 3])
        y = y.repeat(g).reshape(n, 1, 1, 1).expand(n, 1, h, w)
        return torch.cat([x, y], dim=1)


class BaseGenerator(nn.Module):
    # parameters are created in the same order as models.msggan.Generator's (for --check)
    def __init__(self, latent, ch):
        super().__init__()
        self.project = EqProject(latent, ch[0])
        self.conv0 = EqConv(ch[0], ch[0], 3)
        self.ups = nn.ModuleList(EqConv(ch[i - 1], ch[i], 3) for i in range(1, len(ch)))
        self.convs = nn.ModuleList(EqConv(ch[i], ch[i], 3) for i in range(1, len(ch)))
        self.to_rgb = nn.ModuleList(EqConv(c, 3, 1, gain=1.0) for c in ch)
        self.upsample = nn.Upsample(scale_factor=2)
        self.act = nn.LeakyReLU(0.2)
        self.pn = PixelNorm()

    def forward(self, z):
        h = self.pn(self.act(self.project(self.pn(z))))
        h = self.pn(self.act(self.conv0(h)))
        outs = [self.to_rgb[0](h)]
        for i in range(len(self.ups)):
            h = self.pn(self.act(self.ups[i](self.upsample(h))))
            h = self.pn(self.act(self.convs[i](h)))
            outs.append(self.to_rgb[i + 1](h))
        return outs


class BaseDiscriminator(nn.Module):
    def __init__(self, ch):
        super().__init__()
        d = len(ch)
        self.from_rgb = EqConv(3, ch[-1], 1)
        self.convs1 = nn.ModuleList(EqConv(ch[i] + 4, ch[i], 3) for i in range(d - 1, 0, -1))
        self.convs2 = nn.ModuleList(EqConv(ch[i], ch[i - 1], 3) for i in range(d - 1, 0, -1))
        self.final_conv = EqConv(ch[0] + 4, ch[0], 3)
        self.final_4x4 = EqConv(ch[0], ch[0], 4, padding=0)
        self.fc = EqLinear(ch[0], 1)
        self.act = nn.LeakyReLU(0.2)
        self.mbstd = MinibatchStd()
        self.pool = nn.AvgPool2d(2)

    def forward(self, images):
        h = self.act(self.from_rgb(images[-1]))
        for k in range(len(self.convs1)):
            h = torch.cat([h, images[len(images) - 1 - k]], dim=1)
            h = self.mbstd(h)
            h = self.act(self.convs1[k](h))
            h = self.act(self.convs2[k](h))
            h = self.pool(h)
        h = self.mbstd(torch.cat([h, images[0]], dim=1))
        h = self.act(self.final_conv(h))
        h = self.act(self.final_4x4(h))
        return self.fc(h.view(h.shape[0], -1))


class BaselineTrainer:
    def __init__(self, cfg, images_u8):
        ch = block_channels(cfg.depth, cfg.width)
        self.cfg = cfg
        self.G, self.D = BaseGenerator(cfg.latent_dim, ch), BaseDiscriminator(ch)
        self.G_ema = BaseGenerator(cfg.latent_dim, ch)
        self.G_ema.load_state_dict(self.G.state_dict())
        self.opt_G = torch.optim.RMSprop(self.G.parameters(), lr=cfg.lr)
        self.opt_D = torch.optim.RMSprop(self.D.parameters(), lr=cfg.lr)
        # the whole dataset as float, NCHW, in [-1, 1]
        self.data = torch.from_numpy(np.asarray(images_u8)).permute(0, 3, 1, 2).float() / 127.5 - 1

    def reals(self, idx):
        x = F.interpolate(self.data[idx], size=(64, 64), mode="bilinear", align_corners=False)
        return [F.avg_pool2d(x, 2 ** k) if k else x for k in range(self.cfg.depth - 1, -1, -1)]

    def step(self, idx, z, alpha):
        cfg = self.cfg
        reals = self.reals(idx)
        with torch.no_grad():
            fakes = self.G(z)
        d_real = self.D(reals)
        d_fake = self.D(fakes)
        x_hat = [(alpha * r + (1 - alpha) * f).requires_grad_(True) for r, f in zip(reals, fakes)]
        out = self.D(x_hat)
        grads = [torch.autograd.grad(out, x, grad_outputs=torch.ones_like(out), create_graph=True,
                                     retain_graph=True)[0] for x in x_hat]
        norm = torch.cat([g.view(g.shape[0], -1) for g in grads], dim=1).norm(2, dim=1)
        gp = ((norm - 1) ** 2).mean()
        d_loss = d_fake.mean() - d_real.mean() + cfg.gp_lambda * gp + cfg.drift * (d_real ** 2).mean()
        self.opt_D.zero_grad()
        d_loss.backward()
        self.opt_D.step()

        fakes = self.G(z)
        g_loss = -self.D(fakes).mean()
        self.opt_G.zero_grad()
        g_loss.backward()
        self.opt_G.step()
        with torch.no_grad():
            for pe, p in zip(self.G_ema.parameters(), self.G.parameters()):
                pe.mul_(cfg.ema_beta).add_(p, alpha=1 - cfg.ema_beta)
        return {"d_loss": d_loss.item(), "gp": gp.item(), "g_loss": g_loss.item(),
                "wasserstein": (d_real.mean() - d_fake.mean()).item()}


# ------------------------------------------------------------------------------- harness
def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    with torch.no_grad():
        for ps, pd in zip(src.parameters(), dst.parameters(), strict=True):
            assert ps.shape == pd.shape, (ps.shape, pd.shape)
            pd.copy_(ps)


def check_same_math(cfg, images) -> float:
    """Same weights and inputs -> same losses; returns the largest relative difference."""
    project = GanTrainer(cfg, images)
    base = BaselineTrainer(cfg, images)
    copy_weights(project.G, base.G)
    copy_weights(project.D, base.D)
    rng_state, perm, pos = project.rng.get_state(), project.permutation.clone(), project.position
    ours = project.train_step()
    replay = torch.Generator()
    replay.set_state(rng_state)
    idx = perm[pos:pos + cfg.batch_size]
    z = torch.randn(cfg.batch_size, cfg.latent_dim, generator=replay)
    alpha = torch.rand(cfg.batch_size, 1, 1, 1, generator=replay)
    theirs = base.step(idx, z, alpha)
    worst = max(abs(ours[k] - theirs[k]) / max(abs(theirs[k]), 1e-3) for k in ours)
    if worst > 1e-3:
        raise SystemExit(f"project and baseline disagree: {ours} vs {theirs}")
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per implementation")
    ap.add_argument("--n-images", type=int, default=512)
    ap.add_argument("--data", type=Path, default=None, help="uint8 .npy (N, H, W, 3) instead of random")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--check", action="store_true", help="verify equal math before timing")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda *a: None) if args.json else print

    if args.data is not None:
        images = np.load(args.data, mmap_mode="r")
    else:
        images = np.random.default_rng(0).integers(0, 256, (args.n_images, 50, 50, 3), dtype=np.uint8)
    cfg = config_from("paper", {"width": args.width, "batch_size": args.batch})
    worst = check_same_math(cfg, images) if args.check else None
    if worst is not None:
        log(f"same math: largest relative loss difference {worst:.2e}")

    project = GanTrainer(cfg, images)
    base = BaselineTrainer(cfg, images)
    gen = torch.Generator().manual_seed(0)

    def base_step():
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=gen)
        z = torch.randn(cfg.batch_size, cfg.latent_dim, generator=gen)
        alpha = torch.rand(cfg.batch_size, 1, 1, 1, generator=gen)
        base.step(idx, z, alpha)

    times: dict[str, list[float]] = {"project": [], "baseline": []}
    cpu_times: dict[str, list[float]] = {"project": [], "baseline": []}
    runners = {"project": project.train_step, "baseline": base_step}
    for i in range(args.warmup + args.steps):
        for name in ("baseline", "project") if i % 2 else ("project", "baseline"):
            t0, c0 = time.perf_counter(), time.process_time()
            runners[name]()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if i >= args.warmup:
                times[name].append(dt)
                cpu_times[name].append(dc)
            log(f"{name:8s} step {i}: {dt:.3f} s")
    p, b = statistics.median(times["project"]), statistics.median(times["baseline"])
    result = {
        "bench": "gan_step", "width": args.width, "batch": cfg.batch_size, "device": "cpu",
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "timed_steps": args.steps, "project_s_per_step": round(p, 4),
        "baseline_s_per_step": round(b, 4), "speedup": round(b / p, 3),
        # process CPU time: less sensitive to other load on a shared box (with 1 thread)
        "project_cpu_s_per_step": round(statistics.median(cpu_times["project"]), 4),
        "baseline_cpu_s_per_step": round(statistics.median(cpu_times["baseline"]), 4),
        "same_math_max_rel_diff": worst,
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("MALLOC_", "OMP_", "MKL_")) or k == "GLIBC_TUNABLES"},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
