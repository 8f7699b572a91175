"""Benchmark: the four-way protocol (Table 3) in frozen mode, cached features vs the plain loop.

project:  run_four_way with the config's fast path (backbone features of every real and
          synthetic patch once, shared by the four rows; only fc trains per epoch).
baseline: the same run_four_way, same data, same config, with fast_path=False (every epoch
          of every row runs every training patch through the whole network).

"real" = a balanced subset of IDC patches (Pillow-decoded, 50x50, from the first patients in
sorted order, at most --max-per-patient per patient and label); "synthetic" = a perturbed copy of it: flipped
left-right, per-image colour jitter (channel gains 0.85-1.15, brightness +-20), upscaled to
64 px (the generator's size), so the pipeline also resizes two input sizes. Weights "none"
(ImageNet weights cannot be downloaded offline); a random frozen backbone runs the same code
and costs the same time. Both sides run on one torch thread by default (--threads), which
keeps timings steady on a shared 2-core box.

    python bench/protocol.py --json            # last line: one JSON object
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.classifier import config_from  # noqa: E402
from models.protocol import ROWS, run_four_way  # noqa: E402


def load_real(root: Path, n_per_class: int, max_per_patient: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Balanced 50x50 patches: up to `max_per_patient` per (patient, label), patients in sorted order."""
    images, labels, patients = [], [], []
    taken = {0: 0, 1: 0}
    used = set()
    for patient in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for label in (0, 1):
            folder = root / patient / str(label)
            if taken[label] >= n_per_class or not folder.is_dir():
                continue
            count = 0
            for path in sorted(folder.glob("*.png")):
                if count >= max_per_patient or taken[label] >= n_per_class:
                    break
                with Image.open(path) as im:
                    if im.size != (50, 50):  # skip the few smaller edge patches
                        continue
                    images.append(np.asarray(im.convert("RGB")))
                labels.append(label)
                patients.append(patient)
                taken[label] += 1
                count += 1
                used.add(patient)
        if min(taken.values()) >= n_per_class:
            break
    if min(taken.values()) < n_per_class:
        raise SystemExit(f"only {taken} patches found under {root}")
    return np.stack(images), np.array(labels), np.array(patients), len(used)


def perturbed_copy(images: np.ndarray, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, img in enumerate(images):
        x = img[:, ::-1].astype(np.float32) * rng.uniform(0.85, 1.15, 3) + rng.uniform(-20, 20)
        pil = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(pil)
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "IDC_regular_ps50_idx5")
    ap.add_argument("--n-per-class", type=int, default=100, help="real patches per label (synthetic: the same)")
    ap.add_argument("--max-per-patient", type=int, default=15,
                    help="patches per (patient, label), so the patient split has patients")
    ap.add_argument("--input-size", type=int, default=112,
                    help="224 is the paper's; 112 keeps the baseline to minutes on 2 CPU cores")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--split-by", default="patient", choices=["patient", "patch"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for both sides (0: torch's default). 1 by default: on a shared "
                         "2-core box, 2 threads spend their time in pool handshakes whenever another process holds "
                         "a core (measured 2x slower than 1 thread there), which makes timings erratic")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    (real, real_labels, real_patients, n_patients), load_s = timed(
        lambda: load_real(args.data, args.n_per_class, args.max_per_patient))
    synth = perturbed_copy(real, 64, seed=1)
    synth_labels = real_labels.copy()
    base = {"weights": "none", "mode": "frozen", "input_size": args.input_size, "epochs": args.epochs}
    run = dict(real_images=real, real_labels=real_labels, real_patients=real_patients, synth_images=synth,
               synth_labels=synth_labels, split_by=args.split_by, seed=0, device=args.device)

    project, project_s = timed(lambda: run_four_way(config=config_from({**base, "fast_path": True}), **run))
    print(f"project (cached features): {project_s:.1f}s  {project['timing_s']}", file=sys.stderr)
    out = {
        "bench": "four_way_protocol_frozen",
        "project_s": round(project_s, 3),
        "baseline_s": None,
        "speedup": None,
        "epochs": args.epochs,
        "input_size": args.input_size,
        "n_real": int(len(real)),
        "n_synthetic": int(len(synth)),
        "n_real_patients": n_patients,
        "real": f"IDC patches from {args.data.name}, {args.n_per_class} per label, 50 px",
        "synthetic": "perturbed copy of the real patches: flipped, colour-jittered, upscaled to 64 px",
        "weights": "none (random frozen backbone; offline)",
        "split_by": args.split_by,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_s": round(load_s, 3),
        "project_timing_s": {k: round(v, 3) for k, v in project["timing_s"].items()},
        # images through the backbone: once each (project) vs every epoch of every row + the test pass
        "backbone_passes": {
            "project": int(len(real) + len(synth)),
            "baseline": int(sum(args.epochs * r["n_train"] + r["n_test"] for r in project["rows"].values())),
        },
        "project_accuracy": {r: round(project["rows"][r]["metrics"]["accuracy"], 4) for r in ROWS},
    }
    if not args.skip_baseline:
        baseline, baseline_s = timed(lambda: run_four_way(config=config_from({**base, "fast_path": False}), **run))
        print(f"baseline (plain loop): {baseline_s:.1f}s  {baseline['timing_s']}", file=sys.stderr)
        out.update(
            baseline_s=round(baseline_s, 3),
            speedup=round(baseline_s / project_s, 2),
            baseline_timing_s={k: round(v, 3) for k, v in baseline["timing_s"].items()},
            baseline_accuracy={r: round(baseline["rows"][r]["metrics"]["accuracy"], 4) for r in ROWS},
            # the two paths train the same fc; their results should agree up to float rounding
            max_abs_auc_diff=round(max(abs(project["rows"][r]["metrics"]["auc"] - baseline["rows"][r]["metrics"]["auc"])
                                       for r in ROWS), 6),
        )
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
