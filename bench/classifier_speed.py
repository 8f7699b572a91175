"""ResNet18 rates the four-way protocol is made of, on one device.

    python bench/classifier_speed.py --device cuda --json

Measures, with the project's own functions and the paper's settings (224 px input, batch 32):
- features_images_per_s: models.features.extract_features (frozen mode's one backbone pass
  per image, BN folded, channels_last) at the job's eval batch (32) and at 256;
- finetune_images_per_s: the plain loop's step (models.classifier_training: preprocess on the device,
  forward, CrossEntropyLoss, backward, Adam), batch 32, all layers training;
- head_epoch_s: one epoch of fc on cached features (models.features.fit_head) per 10,000
  features, batch 32.
Random weights and random 50x50 patches: the same arithmetic as trained ones.
bench/paper_estimate.py turns these into the paper experiment's time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models.classifier import build_resnet18, config_from, preprocess  # noqa: E402
from models.classifier_steps import EpochStats, take_batch, train_step  # noqa: E402
from models.features import extract_features, fit_head  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def features_rate(model, images, input_size: int, batch: int, device: torch.device) -> float:  # noqa: ANN001
    extract_features(model, images[:batch * 2], input_size, batch, device)  # warm-up
    sync(device)
    t = time.perf_counter()
    extract_features(model, images, input_size, batch, device)
    sync(device)
    return len(images) / (time.perf_counter() - t)


def finetune_rate(images, labels, input_size: int, batch: int, steps: int, device: torch.device) -> float:  # noqa: ANN001
    torch.manual_seed(0)
    model = build_resnet18("none", "finetune").to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    y = torch.as_tensor(labels)
    rng = np.random.default_rng(0)

    def run(n: int) -> None:
        stats = EpochStats(device)
        for _ in range(n):
            idx = rng.integers(0, len(images), batch)
            x = preprocess(take_batch(images, idx, device), input_size)
            train_step(model, x, y[idx].to(device), loss_fn, optimizer, stats)
        stats.result("train")  # reads the sums back: one sync

    run(3)
    sync(device)
    t = time.perf_counter()
    run(steps)
    sync(device)
    return steps * batch / (time.perf_counter() - t)


def head_epoch_s(n: int, device: torch.device) -> float:
    torch.manual_seed(0)
    model = build_resnet18("none", "frozen").to(device)
    features = torch.randn(n, 512, device=device)
    labels = torch.randint(0, 2, (n,))
    config = config_from({"weights": "none", "epochs": 2})
    fit_head(model, features, labels, config)  # warm-up
    sync(device)
    t = time.perf_counter()
    fit_head(model, features, labels, config)
    sync(device)
    return (time.perf_counter() - t) / config.epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--n", type=int, default=None, help="images for the feature pass (default 8192 CUDA, 128 CPU)")
    ap.add_argument("--steps", type=int, default=None, help="finetune steps timed (default 100 CUDA, 3 CPU)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    n = args.n or (8192 if cuda else 128)
    steps = args.steps or (100 if cuda else 3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 50, 50, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, n)
    torch.manual_seed(0)
    model = build_resnet18("none", "frozen").to(device)
    result = {
        "bench": "classifier_speed", "device": str(device), "input_size": args.input_size,
        "gpu": torch.cuda.get_device_name(device) if cuda else None, "torch": torch.__version__,
        "features_images_per_s": {str(b): round(features_rate(model, images, args.input_size, b, device), 1)
                                  for b in (32, 256)},
        "finetune_images_per_s": round(finetune_rate(images, labels, args.input_size, 32, steps, device), 1),
        "head_epoch_s_per_10k": round(head_epoch_s(10_000 if cuda else 1000, device) * (1 if cuda else 10), 4),
    }
    if not args.json:
        for k, v in result.items():
            print(f"{k:28} {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
