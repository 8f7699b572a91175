"""One MSG-GAN WGAN-GP training step (D and G, batch 16): project GanTrainer vs a plain baseline.

    python bench/gan_step.py --width 0.125 --json                      # CPU
    python bench/gan_step.py --device cuda --json                      # GPU, paper size (width 1)
    python bench/gan_step.py --device cuda --variants graph-bf16-compile --json

The baseline is what a good engineer writes first for the same tables and loss (Tables 1-2
scaled by --width, equalized lr and pixel norm as the paper preset, WGAN-GP with the
multi-scale penalty, drift, RMSprop, EMA): nn.Upsample then conv, torch.cat, the real pyramid
of the whole dataset precomputed once on the device, G run once per step with its fakes
detached for D and reused for G's update (as PyTorch's DCGAN example does), the penalty's
gradients for all scales from one autograd.grad call, fp32. On CUDA it is timed twice: with
TF32 off (plain fp32) and with torch's defaults (cuDNN convolutions in TF32).

The project runs `models.gan_trainer.GanTrainer` with one or more speed variants
(models.gan_speed.TrainSpeed): on CPU its defaults; on CUDA `eager-fp32`, `eager-bf16`,
`graph-bf16` (the default on a GPU: bf16 autocast, channels_last, TF32, the step replayed as a
CUDA graph) and `graph-bf16-compile`. --check first verifies that the project (fp32, TF32 off)
and the baseline compute the same losses from the same weights and inputs, and on CUDA how far
bf16 moves them. Same process, same synthetic uint8 patches (or --data, a uint8 .npy); on CPU
steps alternate one by one, on CUDA blocks of --block steps alternate between
implementations, each timed between device synchronisations; medians. FLOPs per step are
counted with torch.utils.flop_counter on one eager fp32 project step; achieved TFLOP/s is that
over the step time, printed beside the card's measured bf16 matmul rate. The last line
printed is one JSON object.
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
from models.gan_speed import TrainSpeed  # noqa: E402
from models.gan_trainer import GanTrainer  # noqa: E402
from models.msggan import block_channels, config_from  # noqa: E402

VARIANTS = {
    "auto": TrainSpeed(),
    "eager-fp32": TrainSpeed(precision="fp32", channels_last=False, cuda_graph=False, tf32=False),
    "eager-bf16": TrainSpeed(precision="bf16", cuda_graph=False),
    "graph-bf16": TrainSpeed(precision="bf16", cuda_graph=True),
    "graph-bf16-compile": TrainSpeed(precision="bf16", cuda_graph=True, compile=True),
}


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
    def __init__(self, cfg, images_u8, device):
        ch = block_channels(cfg.depth, cfg.width)
        self.cfg, self.device = cfg, torch.device(device)
        self.G = BaseGenerator(cfg.latent_dim, ch).to(device)
        self.D = BaseDiscriminator(ch).to(device)
        self.G_ema = BaseGenerator(cfg.latent_dim, ch).to(device)
        self.G_ema.load_state_dict(self.G.state_dict())
        self.opt_G = torch.optim.RMSprop(self.G.parameters(), lr=cfg.lr)
        self.opt_D = torch.optim.RMSprop(self.D.parameters(), lr=cfg.lr)
        # the real pyramid of the whole dataset, precomputed once on the device, in [-1, 1]
        x = torch.from_numpy(np.asarray(images_u8)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
        x = F.interpolate(x, size=(cfg.resolution, cfg.resolution), mode="bilinear", align_corners=False)
        self.pyramid = [F.avg_pool2d(x, 2 ** k) if k else x for k in range(cfg.depth - 1, -1, -1)]

    def step(self, idx, z, alpha):
        cfg = self.cfg
        idx = idx.to(self.device)
        reals = [p[idx] for p in self.pyramid]
        fakes = self.G(z)
        d_real = self.D(reals)
        d_fake = self.D([f.detach() for f in fakes])
        x_hat = [(alpha * r + (1 - alpha) * f.detach()).requires_grad_(True) for r, f in zip(reals, fakes)]
        out = self.D(x_hat)
        grads = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
        norm = torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1).norm(2, dim=1)
        gp = ((norm - 1) ** 2).mean()
        d_loss = d_fake.mean() - d_real.mean() + cfg.gp_lambda * gp + cfg.drift * (d_real ** 2).mean()
        self.opt_D.zero_grad()
        d_loss.backward()
        self.opt_D.step()

        g_loss = -self.D(fakes).mean()
        self.opt_G.zero_grad()
        g_loss.backward()
        self.opt_G.step()
        with torch.no_grad():
            for pe, p in zip(self.G_ema.parameters(), self.G.parameters()):
                pe.mul_(cfg.ema_beta).add_(p, alpha=1 - cfg.ema_beta)
        return torch.stack([d_loss.detach(), g_loss.detach(), gp.detach(), (d_real.mean() - d_fake.mean()).detach()])


# ------------------------------------------------------------------------------- harness
LOSS_KEYS = ("d_loss", "g_loss", "gp", "wasserstein")


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    with torch.no_grad():
        for ps, pd in zip(src.parameters(), dst.parameters(), strict=True):
            assert ps.shape == pd.shape, (ps.shape, pd.shape)
            pd.copy_(ps)


def fixed_inputs(cfg, images, seed: int = 123):
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(images), (cfg.batch_size,), generator=gen)
    z = torch.randn(cfg.batch_size, cfg.latent_dim, generator=gen)
    alpha = torch.rand(cfg.batch_size, 1, 1, 1, generator=gen)
    return idx, torch.from_numpy(np.ascontiguousarray(images[idx.numpy()])), z, alpha


def rel_diff(a: dict, b: dict) -> float:
    return max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-3) for k in LOSS_KEYS)


def check_same_math(cfg, images, device) -> dict:
    """Same weights and inputs -> same losses (project fp32 vs baseline); on CUDA also bf16 vs fp32."""
    set_tf32(False)
    idx, batch, z, alpha = fixed_inputs(cfg, images)
    fp32 = GanTrainer(cfg, images, device, VARIANTS["eager-fp32"])
    base = BaselineTrainer(cfg, images, device)
    copy_weights(fp32.G, base.G)
    copy_weights(fp32.D, base.D)
    ours = fp32.train_step_on(batch, z, alpha)
    theirs = dict(zip(LOSS_KEYS, base.step(idx, z.to(device), alpha.to(device)).tolist()))
    out = {"project_vs_baseline_fp32": rel_diff(ours, theirs)}
    if out["project_vs_baseline_fp32"] > 1e-3:
        raise SystemExit(f"project and baseline disagree: {ours} vs {theirs}")
    if torch.device(device).type == "cuda":
        bf16 = GanTrainer(cfg, images, device, VARIANTS["eager-bf16"])
        out["bf16_vs_fp32"] = rel_diff(bf16.train_step_on(batch, z, alpha), ours)
        out["bf16_losses"], out["fp32_losses"] = bf16.history[-1], ours
    return out


class _NoModuleTracking:
    """Stands in for FlopCounterMode's module tracker, whose hooks refuse the penalty's
    autograd.grad on leaf inputs; every FLOP is then counted under "Global"."""
    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def count_flops(cfg, images, device) -> float | None:
    from torch.utils.flop_counter import FlopCounterMode

    trainer = GanTrainer(cfg, images, device, VARIANTS["eager-fp32"])
    _, batch, z, alpha = fixed_inputs(cfg, images)
    try:
        counter = FlopCounterMode(display=False)
        counter.mod_tracker = _NoModuleTracking()
        with counter:
            trainer.train_step_on(batch, z, alpha)
        return float(counter.get_total_flops())
    except Exception as exc:  # noqa: BLE001 - a missing count must not cost the timings
        print(f"flop count failed: {exc}", file=sys.stderr)
        return None


def bf16_matmul_tflops(device, n: int = 8192, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=float, default=None, help="channel multiplier (default: 1 on CUDA, 0.125 on CPU)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--variants", default=None, help=f"comma-separated project variants of {sorted(VARIANTS)} "
                                                     "(default: auto on CPU; eager-fp32,eager-bf16,graph-bf16 on CUDA)")
    ap.add_argument("--baselines", default=None, help="CUDA: fp32,tf32 (default both); CPU: fp32")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 CPU, 8 CUDA)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per implementation (default 5 CPU, 60 CUDA)")
    ap.add_argument("--block", type=int, default=20, help="CUDA: steps per timed block")
    ap.add_argument("--n-images", type=int, default=512)
    ap.add_argument("--data", type=Path, default=None, help="uint8 .npy (N, H, W, 3) instead of random")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--check", action="store_true", help="verify equal math before timing")
    ap.add_argument("--count-flops", action="store_true", help="count FLOPs on CPU too (always on CUDA)")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda *a: None) if args.json else print
    width = args.width if args.width is not None else (1.0 if cuda else 0.125)
    variants = (args.variants or ("eager-fp32,eager-bf16,graph-bf16" if cuda else "auto")).split(",")
    baselines = (args.baselines or ("fp32,tf32" if cuda else "fp32")).split(",")
    warmup = args.warmup if args.warmup is not None else (8 if cuda else 2)
    steps = args.steps if args.steps is not None else (60 if cuda else 5)
    block = args.block if cuda else 1

    if args.data is not None:
        images = np.load(args.data, mmap_mode="r")
    else:
        images = np.random.default_rng(0).integers(0, 256, (args.n_images, 50, 50, 3), dtype=np.uint8)
    cfg = config_from("paper", {"width": width, "batch_size": args.batch})
    check = check_same_math(cfg, images, device) if args.check else None
    if check is not None:
        log(f"same math: {check}")
    flops = count_flops(cfg, images, device) if cuda or args.count_flops else None
    peak = bf16_matmul_tflops(device) if cuda else None

    runners, tf32_for, trainers = {}, {}, {}
    for name in variants:
        trainer = trainers[name] = GanTrainer(cfg, images, device, VARIANTS[name])
        runners[name] = trainer._advance  # one step, losses left on the device (read once per block)
        tf32_for[name] = trainer.speed.tf32
    gen = torch.Generator().manual_seed(0)
    for name in baselines:
        base = BaselineTrainer(cfg, images, device)

        def base_step(base=base):
            idx = torch.randint(0, len(images), (cfg.batch_size,), generator=gen)
            z = torch.randn(cfg.batch_size, cfg.latent_dim, generator=gen).to(device)
            alpha = torch.rand(cfg.batch_size, 1, 1, 1, generator=gen).to(device)
            return base.step(idx, z, alpha)

        runners[f"baseline-{name}"] = base_step
        tf32_for[f"baseline-{name}"] = name == "tf32"

    def run_block(name: str, n: int) -> float:
        if cuda:
            set_tf32(tf32_for[name])
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            out = runners[name]()
        if cuda:
            torch.cuda.synchronize()
        else:
            out.tolist()
        return (time.perf_counter() - t0) / n

    names = list(runners)
    for name in names:  # warm-up: cuDNN autotuning, the CUDA-graph capture, compilation
        t0 = time.perf_counter()
        run_block(name, warmup)
        log(f"{name:20s} warm-up {warmup} steps: {time.perf_counter() - t0:.2f} s")
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(max(1, steps // block)):
        for name in (names if i % 2 == 0 else names[::-1]):
            times[name].append(run_block(name, block))
            log(f"{name:20s} round {i}: {times[name][-1] * 1000:.2f} ms/step")
    s_per_step = {n: statistics.median(v) for n, v in times.items()}
    project = {n: s_per_step[n] for n in variants}
    best = min(project, key=project.get)
    base_names = [f"baseline-{b}" for b in baselines]
    result = {
        "bench": "gan_step", "device": str(device), "width": width, "batch": cfg.batch_size,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "timed_steps": steps,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "s_per_step": {n: round(v, 5) for n, v in s_per_step.items()},
        "images_per_s": {n: round(cfg.batch_size / v, 1) for n, v in s_per_step.items()},
        "best_variant": best,
        # the first two keys keep the names earlier runs used (project = best variant, baseline = first)
        "project_s_per_step": round(project[best], 5), "baseline_s_per_step": round(s_per_step[base_names[0]], 5),
        "speedup": round(s_per_step[base_names[0]] / project[best], 3),
        "speedup_vs": {b: round(s_per_step[b] / project[best], 3) for b in base_names},
        "same_math": check,
        "speed": {n: t.speed.describe() for n, t in trainers.items()},
        "graph_errors": {n: t.graph_error for n, t in trainers.items() if t.graph_error},
    }
    result["flops_per_step"] = flops
    if cuda:
        result.update({
            "bf16_matmul_peak_tflops": round(peak, 1),
            "achieved_tflops": {n: round(flops / v / 1e12, 1) for n, v in s_per_step.items()} if flops else None,
        })
    else:
        result["env"] = {k: v for k, v in os.environ.items()
                         if k.startswith(("MALLOC_", "OMP_", "MKL_")) or k == "GLIBC_TUNABLES"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
