"""Train one MSG-GAN for a fixed wall-clock budget and keep what a user would look at.

    python bench/gpu_train.py --data .gpu_data/idc_label1.npz --seconds 180 --out OUT --device cuda
    python bench/gpu_train.py --data .gpu_data/idc_label1.npz --seconds 10 --preset cpu-small --out OUT

The job's own trainer (models.gan_trainer.GanTrainer, its default speed options for the
device) and the job's own figures (worker.figures): a sample grid of the EMA generator at
every scale, the loss curves, the loss history as JSON, and a JSON line with the step count,
s/step and images/s. The data is an .npz with uint8 "patches" (N, H, W, 3), as
bench/pack_gpu_data.py writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models.gan_speed import TrainSpeed  # noqa: E402
from models.gan_trainer import GanTrainer  # noqa: E402
from models.msggan import config_from  # noqa: E402
from worker.figures import loss_curves_png, sample_grid_png  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--overrides", default="{}", help="JSON GanConfig fields")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--sample-every", type=int, default=0, help="also keep a grid every N steps (0: only the last)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default="gpu_train")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    images = np.load(args.data)["patches"]
    config = config_from(args.preset, json.loads(args.overrides))
    trainer = GanTrainer(config, images, device=args.device, speed=TrainSpeed())
    chunk = trainer.speed.sync_every
    start = time.perf_counter()
    deadline = start + args.seconds
    first_chunk_s = None
    while time.perf_counter() < deadline:
        trainer.train(trainer.step + chunk)  # reads the losses once per chunk
        if first_chunk_s is None:
            first_chunk_s = time.perf_counter() - start  # includes warm-up and the graph capture
            steady_from, steady_t0 = trainer.step, time.perf_counter()
        if args.sample_every and trainer.step % args.sample_every < chunk:
            (args.out / f"{args.name}_step{trainer.step}.png").write_bytes(sample_grid_png(trainer.sample_fixed()))
    elapsed = time.perf_counter() - start
    steady = (time.perf_counter() - steady_t0) / max(trainer.step - steady_from, 1)
    trainer.close()
    (args.out / f"{args.name}_samples.png").write_bytes(sample_grid_png(trainer.sample_fixed()))
    (args.out / f"{args.name}_losses.png").write_bytes(
        loss_curves_png(trainer.history, keys=("d_loss", "g_loss", "gp", "wasserstein"),
                        title=f"MSG-GAN ({args.preset}) losses, {len(images)} patches"))
    (args.out / f"{args.name}_history.json").write_text(json.dumps(trainer.history))
    last = trainer.history[-1]
    result = {
        "bench": "gpu_train", "device": args.device, "preset": args.preset, "n_images": len(images),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "steps": trainer.step, "seconds": round(elapsed, 1), "epochs": round(trainer.step * config.batch_size / len(images), 2),
        "first_chunk_s": round(first_chunk_s, 2), "steady_s_per_step": round(steady, 5),
        "steady_images_per_s": round(config.batch_size / steady, 1),
        "speed": trainer.speed.describe(), "graph_error": trainer.graph_error, "last_losses": {k: round(v, 4) for k, v in last.items()},
        "finite": bool(np.isfinite([list(h.values()) for h in trainer.history]).all()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
