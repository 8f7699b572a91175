"""The whole paper experiment's time on one device, from rates measured on it.

    python bench/paper_estimate.py OUT_DIR [--gan-epochs 50]

Reads the JSON lines bench/gpu_check.sh left in OUT_DIR (gan_step.json, generate.json,
classifier.json) and multiplies them by the paper's sizes (DESIGN.md, "The paper in
brief"): two generators, each on 40,000 patches of its class at batch 16 for --gan-epochs
epochs (the paper does not state its training length: the epochs are our choice, stated in
the output); 38,000 samples per class (76,000); the four-way protocol at 150 epochs on 38,000
real patches per class and 38,000 synthetic per class with 70:30 splits for TRTR and TSTS,
frozen (the paper: one backbone pass per image, then fc on cached features) and finetune
(every layer, every epoch). Prints one JSON object; also writes OUT_DIR/paper_estimate.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GAN_TRAIN_PER_CLASS = 40_000   # the paper: 40,000 patches per class train the GAN
CLASSIFY_PER_CLASS = 38_000    # the paper: the real patches the GAN never saw, and the synthetic count
BATCH = 16                     # the paper's GAN batch
EPOCHS_CLS = 150               # the paper's classifier epochs


def last_json(path: Path) -> dict:
    lines = [line for line in path.read_text().splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"{path}: no JSON line")
    return json.loads(lines[-1])


def estimate(gan: dict, gen: dict, cls: dict, gan_epochs: int) -> dict:
    s_step = gan["project_s_per_step"]
    steps = gan_epochs * GAN_TRAIN_PER_CLASS // BATCH
    gan_s = 2 * steps * s_step
    sample_s = 2 * CLASSIFY_PER_CLASS / gen["project_images_per_s"]
    real = synth = 2 * CLASSIFY_PER_CLASS
    # rows: (train size, test size) -- TRTR/TSTS 70:30 within one source, TRTS/TSTR all -> all
    rows = {"TRTR": (0.7 * real, 0.3 * real), "TSTS": (0.7 * synth, 0.3 * synth),
            "TRTS": (real, synth), "TSTR": (synth, real)}
    feat_rate = cls["features_images_per_s"]["32"]
    head_epoch_per_image = cls["head_epoch_s_per_10k"] / 10_000
    frozen_s = (real + synth) / feat_rate + sum(EPOCHS_CLS * tr * head_epoch_per_image for tr, _ in rows.values())
    finetune_s = sum(EPOCHS_CLS * tr / cls["finetune_images_per_s"] + te / feat_rate for tr, te in rows.values())
    total_frozen = gan_s + sample_s + frozen_s
    return {
        "gan_epochs": gan_epochs, "gan_steps_per_generator": steps, "gan_s_per_step": s_step,
        "gan_hours": round(gan_s / 3600, 3), "sampling_s": round(sample_s, 1),
        "protocol_frozen_s": round(frozen_s, 1), "protocol_finetune_hours": round(finetune_s / 3600, 3),
        "total_frozen_hours": round(total_frozen / 3600, 3),
        "total_finetune_hours": round((gan_s + sample_s + finetune_s) / 3600, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--gan-epochs", type=int, nargs="+", default=[25, 50, 100])
    args = ap.parse_args()
    gan = last_json(args.out / "gan_step.json")
    gen = last_json(args.out / "generate.json")
    cls = last_json(args.out / "classifier.json")
    result = {"bench": "paper_estimate", "device": gan.get("gpu") or gan.get("device"),
              "by_gan_epochs": {str(e): estimate(gan, gen, cls, e) for e in args.gan_epochs}}
    (args.out / "paper_estimate.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
