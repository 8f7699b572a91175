"""MSG-GAN training loop: WGAN-GP, RMSprop lr 1e-4, batch 16 (the paper), EMA generator, resumable.

The loop owns no I/O: the caller passes callbacks for progress, abort, checkpoints and sample
grids (as NVlabs' training loops do) and writes whatever it wants from them.

One step = `n_critic` discriminator updates then one generator update. The generator update
uses the latents of the last critic update (as e.g. PyTorch's DCGAN example does) and so can
reuse those fakes and their graph instead of running G again: one G forward less per step.
An eager step checks `abort_fn` between its critic updates (and draws each update's inputs just
before it, in the same order as before), so a large `n_critic` cannot delay a cancel by a whole
step; a CUDA-graph step is one replay and is checked between replays. A step stopped part-way
leaves the trainer unusable for checkpoints (`state_dict` refuses): its D, data position and
noise stream are ahead of `step`, so the caller resumes from the last checkpoint instead.

How it runs (models.gan_speed.TrainSpeed) is separate from what it computes (GanConfig). On a
GPU the step has fixed shapes, so after a few eager steps it is captured once as a CUDA graph
and replayed: each step is then one launch instead of ~1,500 kernel launches from Python.
Losses stay on the device and are read every `sync_every` steps (one host sync per read).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable

import numpy as np
import torch

from models.diffaug import DRAW_WIDTH, augment_scales
from models.gan_data import BatchLoader, real_pyramid
from models.gan_speed import TrainSpeed, make_optimizer
from models.losses import discriminator_loss, generator_loss
from models.msggan import PRESETS, GanConfig, config_from

__all__ = ["GanTrainer", "GanConfig", "PRESETS", "TrainSpeed", "config_from", "real_pyramid"]

HISTORY_KEYS = ("d_loss", "g_loss", "gp", "wasserstein")
CHECKPOINT_FORMAT = "histosynth.gan/2"


class GanTrainer:
    """Trains one MSG-GAN on `images`, uint8 (N, H, W, 3): an ndarray, a np.memmap or any lazy
    view with shape/dtype/ndim, len() and integer-array indexing. Batches are indexed from it;
    the whole array is never loaded."""

    def __init__(self, config: GanConfig | dict, images: np.ndarray, device: str | torch.device = "cpu",
                 speed: TrainSpeed | None = None) -> None:
        if isinstance(config, dict):
            config = config_from("paper", config)
        self.config = cfg = config
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if len(images) < cfg.batch_size:
            raise ValueError(f"need at least batch_size={cfg.batch_size} images, got {len(images)}")
        self.images = images
        self.device = torch.device(device)
        self.speed = sp = (speed or TrainSpeed()).resolve(self.device)
        if sp.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: autotune each conv once

        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(cfg.seed)
            G, D = cfg.make_generator(), cfg.make_discriminator()
        self.G = G.to(self.device, memory_format=sp.memory_format)
        self.D = D.to(self.device, memory_format=sp.memory_format)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        betas = (cfg.adam_beta1, cfg.adam_beta2)
        self.opt_G = make_optimizer(cfg.optimizer, self.G.parameters(), cfg.lr, betas, sp)
        d_lr = cfg.lr if cfg.d_lr is None else cfg.d_lr  # two time-scales (TTUR) when set
        self.opt_D = make_optimizer(cfg.optimizer, self.D.parameters(), d_lr, betas, sp)
        self._base_lrs = ((self.opt_G, cfg.lr), (self.opt_D, d_lr))
        if cfg.lr_decay_steps and sp.cuda_graph:
            # A captured step replays the lr it was recorded with; a schedule needs eager steps.
            self.speed = sp = dataclasses.replace(sp, cuda_graph=False)
        # G and D's first-order passes may be compiled; the penalty's double backward always
        # runs eager D (torch.compile has no double backward).
        self._G_run = torch.compile(self.G) if sp.compile else self.G
        self._D_run = torch.compile(self.D) if sp.compile else self.D

        # Latents and penalty alphas come from their own generator, on the training device
        # (drawn there, no host copy); the data order is a function of (seed, epoch) alone.
        self.noise_rng = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.fixed_z = torch.randn(cfg.fixed_samples, cfg.latent_dim,
                                   generator=torch.Generator().manual_seed(cfg.seed + 2))
        self.step = 0
        self.history: list[dict[str, float]] = []
        self._pending: list[torch.Tensor] = []  # per-step losses not yet read back from the device
        self.loader = self._make_loader(0, 0)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._side: torch.cuda.Stream | None = None
        self.graph_error: str | None = None
        self._eager_steps = 0  # since the optimizers' state was (re)built; a graph needs some first
        self._torn = False  # a step stopped between critic updates (see the module docstring)

    def _make_loader(self, epoch: int, position: int) -> BatchLoader:
        return BatchLoader(self.images, self.config.batch_size, self.config.seed, epoch, position,
                           ahead=self.speed.read_ahead, pin=self.device.type == "cuda",
                           augment_dihedral=self.config.augment == "dihedral")

    @property
    def epoch(self) -> int:
        return self.loader.epoch

    @property
    def position(self) -> int:
        return self.loader.position

    def close(self) -> None:
        """Stop the read-ahead thread (it is a daemon; this just ends it early)."""
        self.loader.close()

    # -- one step: the math, on given inputs ------------------------------------------------
    def _step_math(self, inputs: Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]],
                   abort_fn: Callable[[], bool] | None = None) -> torch.Tensor | None:
        """n_critic D updates, one G update, the EMA; returns the losses (4,) on the device.

        `inputs(k)` gives critic update k's uint8 reals, latents, penalty alphas and, with
        `diffaug`, the uniforms of its three augmentation draws (reals, fakes for D, fakes for
        G; None without). With `abort_fn` (eager steps only: a captured graph must not branch on
        the host), it is asked before every critic update after the first; when it says stop, the step ends there and
        None is returned (the trainer is then marked torn)."""
        cfg, D, sp = self.config, self.D, self.speed
        if cfg.lr_decay_steps:
            factor = cfg.lr_factor(self.step)
            for opt, base in self._base_lrs:
                for group in opt.param_groups:
                    group["lr"] = base * factor
        D.requires_grad_(True)
        for k in range(cfg.n_critic):
            if k and abort_fn is not None and abort_fn():
                self._torn = True
                return None
            real_u8, z, alpha, aug = inputs(k)
            reals = [x.contiguous(memory_format=sp.memory_format)
                     for x in real_pyramid(real_u8, cfg.resolution, cfg.depth, self.device)]
            last = k == cfg.n_critic - 1
            with torch.set_grad_enabled(last), sp.autocast():
                fakes = self._G_run(z)  # on the last critic step the graph is kept for the G update
            d_reals, d_fakes = reals, fakes
            if aug is not None:  # DiffAugment: D sees both sides transformed, independently drawn
                d_reals = augment_scales(reals, cfg.diffaug, aug[:, :DRAW_WIDTH])
                d_fakes = augment_scales([f.detach() for f in fakes], cfg.diffaug, aug[:, DRAW_WIDTH:2 * DRAW_WIDTH])
            with sp.autocast():
                d_loss, stats = discriminator_loss(cfg.loss, self._D_run, d_reals, d_fakes, alpha, cfg.gp_lambda,
                                                   cfg.drift, gp_critic=D)
            self.opt_D.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_D.step()

        # G update: D's weights need no gradient here, which skips D's weight-gradient kernels.
        D.requires_grad_(False)
        if aug is not None:  # G's gradient flows back through the transform
            fakes = augment_scales(fakes, cfg.diffaug, aug[:, 2 * DRAW_WIDTH:])
        with sp.autocast():
            g_loss = generator_loss(cfg.loss, self._D_run, fakes, d_reals if cfg.loss == "rahinge" else None)
        self.opt_G.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_G.step()
        D.requires_grad_(True)
        self._update_ema()
        return torch.stack([stats["d_loss"], g_loss.detach(), stats["gp"], stats["wasserstein"]]).float()

    def _draw_one(self, k: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One critic update's inputs, from the data order and the noise stream (in this order;
        the augmentation's uniforms last, and only with `diffaug`, so runs without it draw the
        stream they always drew)."""
        b, latent_dim = self.config.batch_size, self.config.latent_dim
        real = self.loader.next()
        z = torch.randn(b, latent_dim, generator=self.noise_rng, device=self.device)
        alpha = torch.rand(b, 1, 1, 1, generator=self.noise_rng, device=self.device)
        aug = None
        if self.config.diffaug != "none":
            aug = torch.rand(b, 3 * DRAW_WIDTH, generator=self.noise_rng, device=self.device)
        return real, z, alpha, aug

    # -- one step: eager or replayed -------------------------------------------------------
    def _advance(self, abort_fn: Callable[[], bool] | None = None) -> torch.Tensor | None:
        """One step; None when `abort_fn` stopped it between critic updates."""
        sp = self.speed
        if sp.cuda_graph and self._graph is None and self._eager_steps >= sp.graph_warmup:
            self._capture()
        if self._graph is not None:
            reals, zs, alphas, augs = self._static
            for k in range(self.config.n_critic):
                real, z, alpha, aug = self._draw_one(k)
                reals[k].copy_(real, non_blocking=True)
                zs[k].copy_(z)
                alphas[k].copy_(alpha)
                if aug is not None:
                    augs[k].copy_(aug)
            self._graph.replay()
            losses = self._static_losses.clone()
        elif sp.cuda_graph:
            # Warm-up before capture runs on a side stream, as CUDA-graph capture requires.
            if self._side is None:
                self._side = torch.cuda.Stream(self.device)
            side = self._side
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                losses = self._step_math(self._draw_one, abort_fn)
            torch.cuda.current_stream(self.device).wait_stream(side)
        else:
            losses = self._step_math(self._draw_one, abort_fn)
        if losses is None:
            return None
        self._eager_steps += 1
        self.step += 1
        self._pending.append(losses)
        return losses

    def _capture(self) -> None:
        cfg, b, shape = self.config, self.config.batch_size, self.images.shape[1:]
        dev = self.device
        self._static = (
            [torch.zeros((b, *shape), dtype=torch.uint8, device=dev) for _ in range(cfg.n_critic)],
            [torch.zeros(b, cfg.latent_dim, device=dev) for _ in range(cfg.n_critic)],
            [torch.full((b, 1, 1, 1), 0.5, device=dev) for _ in range(cfg.n_critic)],
            [torch.full((b, 3 * DRAW_WIDTH), 0.5, device=dev) if cfg.diffaug != "none" else None
             for _ in range(cfg.n_critic)],
        )
        torch.cuda.synchronize(dev)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):  # records the kernels; nothing is computed until replay
                self._static_losses = self._step_math(lambda k: tuple(s[k] for s in self._static))
        except RuntimeError as exc:  # an op this torch cannot capture: stay eager, and say so
            warnings.warn(f"CUDA-graph capture of the GAN step failed, training eagerly: {exc}", stacklevel=2)
            self.graph_error = f"{type(exc).__name__}: {exc}"
            self.speed = dataclasses.replace(self.speed, cuda_graph=False)
            return
        self._graph = graph

    def _flush(self) -> None:
        """Read the losses of the steps since the last read (one device sync)."""
        if self._pending:
            rows = torch.stack(self._pending).tolist()
            self.history.extend(dict(zip(HISTORY_KEYS, row)) for row in rows)
            self._pending.clear()

    def train_step_on(self, batch_u8: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor) -> dict[str, float]:
        """One eager step (n_critic = 1) on given inputs: uint8 (B, H, W, 3) reals, latents
        (B, latent_dim), penalty alphas (B, 1, 1, 1). For checks against another implementation;
        the data order and noise streams do not advance."""
        if self.config.n_critic != 1:
            raise ValueError("train_step_on takes one critic step's inputs")
        if self.config.diffaug != "none":
            raise ValueError("train_step_on takes no augmentation draws: use diffaug='none'")
        losses = self._step_math(lambda k: (batch_u8.to(self.device), z.to(self.device), alpha.to(self.device),
                                            None))
        self.step += 1
        self._eager_steps += 1
        self._pending.append(losses)
        self._flush()
        return self.history[-1]

    def train_step(self) -> dict[str, float]:
        """One step; returns its losses as floats (a device sync: loops use `train`)."""
        self._advance()
        self._flush()
        return self.history[-1]

    @torch.no_grad()
    def _update_ema(self) -> None:
        # ema <- beta * ema + (1 - beta) * param, one foreach lerp over all parameters
        weight = 1.0 - self.config.ema_beta
        torch._foreach_lerp_(list(self.G_ema.parameters()), list(self.G.parameters()), weight)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    @torch.no_grad()
    def sample_fixed(self) -> list[torch.Tensor]:
        """EMA generator on the fixed latents: CPU float (n, 3, s, s) per scale in [-1, 1]."""
        with self.speed.autocast():
            images = self.G_ema(self.fixed_z.to(self.device))
        return [x.float().clamp(-1, 1).cpu().contiguous() for x in images]

    # -- loop -------------------------------------------------------------------------------
    def train(self, steps: int,
              progress_fn: Callable[[int, int, dict], None] | None = None,
              abort_fn: Callable[[], bool] | None = None,
              checkpoint_fn: Callable[["GanTrainer"], None] | None = None, checkpoint_every: int = 0,
              sample_fn: Callable[[int, list[torch.Tensor]], None] | None = None, sample_every: int = 0) -> bool:
        """Train until `self.step == steps` (a total, so a resumed trainer continues).

        progress_fn(step, steps, losses) runs every `sync_every` steps and at the end, with the
        losses of that step. Returns True when the target was reached, False when `abort_fn`
        stopped it. The caller checkpoints the final state itself if it wants one.
        """
        every = self.speed.sync_every
        while self.step < steps:
            if abort_fn is not None and abort_fn():
                self._flush()
                return False
            if self._advance(abort_fn) is None:  # stopped between critic updates
                self._flush()
                return False
            if self.step % every == 0 or self.step == steps:
                self._flush()
                if progress_fn is not None:
                    progress_fn(self.step, steps, self.history[-1])
            if checkpoint_fn is not None and checkpoint_every > 0 and self.step % checkpoint_every == 0:
                checkpoint_fn(self)
            if sample_fn is not None and sample_every > 0 and self.step % sample_every == 0:
                sample_fn(self.step, self.sample_fixed())
        self._flush()
        return True

    # -- checkpoints ------------------------------------------------------------------------
    def ema_generator_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.G_ema.state_dict().items()}

    def state_dict(self) -> dict:
        """Everything to resume bit-for-bit (on CPU); loads with torch.load(weights_only=True)."""
        if self._torn:
            raise RuntimeError("a step was stopped part-way: this state is not a resumable checkpoint")
        self._flush()
        history = torch.tensor([[h[k] for k in HISTORY_KEYS] for h in self.history],
                               dtype=torch.float64).reshape(-1, len(HISTORY_KEYS))
        return {
            "format": CHECKPOINT_FORMAT, "config": self.config.to_dict(),
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "step": self.step, "epoch": self.epoch, "position": self.position, "fixed_z": self.fixed_z.clone(),
            "rng": {"noise": self.noise_rng.get_state(), "noise_device": self.device.type},
            "history_keys": list(HISTORY_KEYS), "history": history,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {CHECKPOINT_FORMAT} checkpoint (format {state.get('format')!r})")
        # A field added since the checkpoint was written takes its default, which is what the
        # run it comes from did (e.g. `augment`).
        if {**GanConfig().to_dict(), **state["config"]} != self.config.to_dict():
            raise ValueError("checkpoint was made with a different GAN config")
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self._graph, self._eager_steps = None, 0  # the optimizers' state tensors are new: capture again
        self._torn = False
        self.step = int(state["step"])
        self.loader.close()
        self.loader = self._make_loader(int(state["epoch"]), int(state["position"]))
        self.fixed_z = state["fixed_z"].clone()
        if state["rng"]["noise_device"] == self.device.type:
            self.noise_rng.set_state(state["rng"]["noise"])
        else:  # another device's generator state cannot be loaded: a fresh stream, still seeded
            self.noise_rng.manual_seed(self.config.seed + 1 + self.step)
        keys = state["history_keys"]
        self._pending.clear()
        self.history = [dict(zip(keys, row)) for row in state["history"].tolist()]
