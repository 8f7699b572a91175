"""How far bf16 serving moves a trained classifier's answers from fp32.

    python bench/precision.py [--input-size 224] [--per-label 600] [--epochs 2] [--json]

Trains a ResNet18 (finetune, weights none: ImageNet weights cannot be fetched offline) on
real IDC patches from the first 60% of patients (sorted ids), then serves every patch of the
held-out patients (up to --test-per-label per label) through models.inference.InferenceModel
at fp32 and at bf16, batch 32. Prints label agreement, the distribution of |P_bf16 - P_fp32|,
each precision's accuracy and its time per image, all from this one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.classifier import config_from  # noqa: E402
from models.classifier_training import train_classifier  # noqa: E402
from models.inference import InferenceModel  # noqa: E402
from worker.idc_layout import decode_chunk, scan  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "IDC_regular_ps50_idx5"


def sample(candidates: list, patients: set[str], per_label: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in (0, 1):
        paths = sorted(c.path for c in candidates if c.patient in patients and c.label == label)
        chosen = rng.choice(len(paths), size=min(per_label, len(paths)), replace=False)
        decoded, _, failures = decode_chunk([paths[i] for i in sorted(chosen)])
        if failures:
            raise SystemExit(f"could not decode {failures[:3]}")
        images.append(decoded)
        labels.append(np.full(len(decoded), label))
    return np.concatenate(images), np.concatenate(labels)


def serve(runner: InferenceModel, images: np.ndarray, batch: int = 32) -> tuple[np.ndarray, float]:
    """P(IDC+) for every image and the median ms per image over the batches."""
    probs, per_image = [], []
    for start in range(0, len(images), batch):
        chunk = [torch.from_numpy(im) for im in images[start:start + batch]]
        t = time.perf_counter()
        probs.append(runner.probabilities(chunk).numpy())
        per_image.append((time.perf_counter() - t) * 1000 / len(chunk))
    return np.concatenate(probs), statistics.median(per_image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--per-label", type=int, default=600, help="training patches per label")
    parser.add_argument("--test-per-label", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    candidates, _ = scan(args.data)
    patients = sorted({c.patient for c in candidates})
    cut = int(0.6 * len(patients))
    train_x, train_y = sample(candidates, set(patients[:cut]), args.per_label, seed=0)
    test_x, test_y = sample(candidates, set(patients[cut:]), args.test_per_label, seed=1)

    config = config_from({"weights": "none", "mode": "finetune", "input_size": args.input_size,
                          "epochs": args.epochs})
    start = time.perf_counter()
    model, _ = train_classifier(config, train_x, train_y)
    train_s = time.perf_counter() - start

    p32, ms32 = serve(InferenceModel(model, args.input_size, "fp32"), test_x)
    p16, ms16 = serve(InferenceModel(model, args.input_size, "bf16"), test_x)
    diff = np.abs(p16 - p32)
    result = {
        "input_size": args.input_size, "train_patches": len(train_y), "test_patches": len(test_y),
        "test_patients": len(patients) - cut, "epochs": args.epochs, "train_s": round(train_s, 1),
        "label_agreement": round(float(np.mean((p16 >= 0.5) == (p32 >= 0.5))), 5),
        "labels_flipped": int(np.sum((p16 >= 0.5) != (p32 >= 0.5))),
        "abs_diff_mean": round(float(diff.mean()), 5), "abs_diff_p99": round(float(np.quantile(diff, 0.99)), 5),
        "abs_diff_max": round(float(diff.max()), 5),
        "accuracy_fp32": round(float(np.mean((p32 >= 0.5) == test_y)), 4),
        "accuracy_bf16": round(float(np.mean((p16 >= 0.5) == test_y)), 4),
        "ms_per_image_fp32": round(ms32, 2), "ms_per_image_bf16": round(ms16, 2),
    }
    if not args.json:
        for k, v in result.items():
            print(f"{k:20} {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
