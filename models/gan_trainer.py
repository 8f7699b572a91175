"""MSG-GAN training loop: WGAN-GP, RMSprop lr 1e-4, batch 16 (the paper), EMA generator, resumable.

The loop owns no I/O: the caller passes callbacks for progress, abort, checkpoints and sample
grids (as NVlabs' training loops do) and writes whatever it wants from them.

One step = `n_critic` discriminator updates then one generator update. The generator update
uses the latents of the last critic update (as e.g. PyTorch's DCGAN example does) and so can
reuse those fakes and their graph instead of running G again: one G forward less per step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from models.losses import discriminator_loss, generator_loss
from models.msggan import PRESETS, GanConfig, config_from

__all__ = ["GanTrainer", "GanConfig", "PRESETS", "config_from", "real_pyramid"]

HISTORY_KEYS = ("d_loss", "g_loss", "gp", "wasserstein")


def real_pyramid(batch_u8: np.ndarray | torch.Tensor, resolution: int, depth: int,
                 device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """uint8 (N, H, W, 3) -> [(N,3,4,4), ..., (N,3,res,res)] in [-1, 1], coarsest first.

    Real patches are 50 px, the generator's finest output 64 px (Table 1). They are upscaled
    with bilinear interpolation: smooth, so D cannot tell real from fake by blocky nearest-
    neighbour edges, and it keeps the patch content (no crop). Every coarser scale is the 2x2
    average pool of the one above, the same pyramid MSG-GAN builds for its real images.
    The permute keeps the NHWC memory of the batch, i.e. channels_last.
    """
    x = torch.as_tensor(batch_u8).to(device, non_blocking=True).permute(0, 3, 1, 2)
    x = x.float().mul_(1.0 / 127.5).sub_(1.0)
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    pyramid = [x]
    for _ in range(depth - 1):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2))
    return pyramid[::-1]


class GanTrainer:
    """Trains one MSG-GAN on `images`, uint8 (N, H, W, 3): an ndarray, a np.memmap or any lazy
    view with shape/dtype/ndim, len() and integer-array indexing. Batches are indexed from it;
    the whole array is never loaded."""

    def __init__(self, config: GanConfig | dict, images: np.ndarray, device: str | torch.device = "cpu") -> None:
        if isinstance(config, dict):
            config = config_from("paper", config)
        self.config = cfg = config
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if len(images) < cfg.batch_size:
            raise ValueError(f"need at least batch_size={cfg.batch_size} images, got {len(images)}")
        self.images = images
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        # bf16 autocast and channels_last help tensor cores; the CPU path stays fp32.
        self._autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext
        self._memory_format = torch.channels_last if cuda else torch.contiguous_format

        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(cfg.seed)
            G, D = cfg.make_generator(), cfg.make_discriminator()
        self.G = G.to(self.device, memory_format=self._memory_format)
        self.D = D.to(self.device, memory_format=self._memory_format)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_G = self._make_optimizer(self.G)
        self.opt_D = self._make_optimizer(self.D)

        # A dedicated generator for data order, latents and GP alphas: resuming restores it.
        self.rng = torch.Generator().manual_seed(cfg.seed + 1)
        self.fixed_z = torch.randn(cfg.fixed_samples, cfg.latent_dim,
                                   generator=torch.Generator().manual_seed(cfg.seed + 2))
        self.step = 0
        self.epoch = 0
        self.position = 0
        self.permutation = torch.randperm(len(images), generator=self.rng)
        self.history: list[dict[str, float]] = []

    def _make_optimizer(self, net: torch.nn.Module) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "rmsprop":  # paper; torch defaults alpha=0.99, eps=1e-8
            return torch.optim.RMSprop(net.parameters(), lr=cfg.lr, foreach=True)
        return torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                foreach=True)

    # -- data -------------------------------------------------------------------------------
    def _next_indices(self) -> np.ndarray:
        b = self.config.batch_size
        if self.position + b > len(self.permutation):  # new epoch; the ragged tail is dropped
            self.permutation = torch.randperm(len(self.images), generator=self.rng)
            self.position = 0
            self.epoch += 1
        idx = self.permutation[self.position:self.position + b].numpy()
        self.position += b
        return idx

    def _real_batch(self) -> list[torch.Tensor]:
        batch = np.ascontiguousarray(self.images[self._next_indices()])
        pyramid = real_pyramid(batch, self.config.resolution, self.config.depth, self.device)
        return [x.contiguous(memory_format=self._memory_format) for x in pyramid]

    def _latents(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.config.latent_dim, generator=self.rng).to(self.device)

    # -- one step ---------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        cfg, G, D = self.config, self.G, self.D
        b = cfg.batch_size
        D.requires_grad_(True)
        for k in range(cfg.n_critic):
            reals = self._real_batch()
            z = self._latents(b)
            alpha = torch.rand(b, 1, 1, 1, generator=self.rng).to(self.device)
            last = k == cfg.n_critic - 1
            with torch.set_grad_enabled(last), self._autocast():
                fakes = G(z)  # on the last critic step the graph is kept for the G update
            with self._autocast():
                d_loss, stats = discriminator_loss(cfg.loss, D, reals, fakes, alpha, cfg.gp_lambda, cfg.drift)
            self.opt_D.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_D.step()

        # G update: D's weights need no gradient here, which skips D's weight-gradient kernels.
        D.requires_grad_(False)
        with self._autocast():
            g_loss = generator_loss(cfg.loss, D, fakes, reals if cfg.loss == "rahinge" else None)
        self.opt_G.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_G.step()
        D.requires_grad_(True)
        self._update_ema()

        self.step += 1
        values = torch.stack([stats["d_loss"], g_loss.detach().float(), stats["gp"], stats["wasserstein"]])
        record = dict(zip(HISTORY_KEYS, values.tolist()))  # one device sync per step
        self.history.append(record)
        return record

    @torch.no_grad()
    def _update_ema(self) -> None:
        # ema <- beta * ema + (1 - beta) * param, written as a lerp
        weight = 1.0 - self.config.ema_beta
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.lerp_(p, weight)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    @torch.no_grad()
    def sample_fixed(self) -> list[torch.Tensor]:
        """EMA generator on the fixed latents: CPU float (n, 3, s, s) per scale in [-1, 1]."""
        with self._autocast():
            images = self.G_ema(self.fixed_z.to(self.device))
        return [x.float().clamp(-1, 1).cpu().contiguous() for x in images]

    # -- loop -------------------------------------------------------------------------------
    def train(self, steps: int,
              progress_fn: Callable[[int, int, dict], None] | None = None,
              abort_fn: Callable[[], bool] | None = None,
              checkpoint_fn: Callable[["GanTrainer"], None] | None = None, checkpoint_every: int = 0,
              sample_fn: Callable[[int, list[torch.Tensor]], None] | None = None, sample_every: int = 0) -> bool:
        """Train until `self.step == steps` (a total, so a resumed trainer continues).

        Returns True when the target was reached, False when `abort_fn` stopped it. The caller
        checkpoints the final state itself if it wants one.
        """
        while self.step < steps:
            if abort_fn is not None and abort_fn():
                return False
            stats = self.train_step()
            if progress_fn is not None:
                progress_fn(self.step, steps, stats)
            if checkpoint_fn is not None and checkpoint_every > 0 and self.step % checkpoint_every == 0:
                checkpoint_fn(self)
            if sample_fn is not None and sample_every > 0 and self.step % sample_every == 0:
                sample_fn(self.step, self.sample_fixed())
        return True

    # -- checkpoints ------------------------------------------------------------------------
    def ema_generator_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.G_ema.state_dict().items()}

    def state_dict(self) -> dict:
        """Everything to resume bit-for-bit; loads with torch.load(weights_only=True)."""
        history = torch.tensor([[h[k] for k in HISTORY_KEYS] for h in self.history],
                               dtype=torch.float64).reshape(-1, len(HISTORY_KEYS))
        rng = {"torch_cpu": torch.get_rng_state(), "trainer": self.rng.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "config": self.config.to_dict(),
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "step": self.step, "epoch": self.epoch, "position": self.position,
            "permutation": self.permutation.clone(), "fixed_z": self.fixed_z.clone(),
            "rng": rng, "history_keys": list(HISTORY_KEYS), "history": history,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["config"] != self.config.to_dict():
            raise ValueError("checkpoint was made with a different GAN config")
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.step, self.epoch, self.position = int(state["step"]), int(state["epoch"]), int(state["position"])
        self.permutation = state["permutation"].clone()
        self.fixed_z = state["fixed_z"].clone()
        torch.set_rng_state(state["rng"]["torch_cpu"])
        self.rng.set_state(state["rng"]["trainer"])
        cuda_states = state["rng"].get("cuda")
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)  # unused by the loop; restored for callers
        keys = state["history_keys"]
        self.history = [dict(zip(keys, row)) for row in state["history"].tolist()]
