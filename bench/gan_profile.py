"""Where a GAN training step spends its GPU time: torch.profiler over a few eager steps.

    python bench/gan_profile.py --device cuda [--width 1] [--precision bf16] [--steps 5]

Prints the operators and the kernels ranked by device time (self), for the project's trainer
at the given speed options, after warm-up steps. Profiles guide the speed work
(BENCHMARKS.md); no target is checked here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.gan_speed import TrainSpeed  # noqa: E402
from models.gan_trainer import GanTrainer  # noqa: E402
from models.msggan import config_from  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rows", type=int, default=30)
    args = ap.parse_args()
    images = np.random.default_rng(0).integers(0, 256, (256, 50, 50, 3), dtype=np.uint8)
    cfg = config_from("paper", {"width": args.width, "batch_size": args.batch})
    trainer = GanTrainer(cfg, images, args.device, TrainSpeed(precision=args.precision, cuda_graph=False))
    trainer.train(3)
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        trainer.train(3 + args.steps)
        if cuda:
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows))
    trainer.close()


if __name__ == "__main__":
    main()
