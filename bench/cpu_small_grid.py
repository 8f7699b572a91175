"""Train the cpu-small preset on one label of a packed dataset and save sample grids.

    python bench/cpu_small_grid.py DATASET_FOLDER --label 1 --steps 3000 --every 250 --out /tmp

DATASET_FOLDER is a packed dataset made by an ingest job (storage/datasets/<id>). Uses the
same GanTrainer and grid rendering as the train_gan job; prints "step seconds" per grid.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--label", type=int, default=1, choices=(0, 1))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    import numpy as np

    from app.packed import LabelView, open_patches, read_index
    from models.gan_trainer import GanTrainer
    from models.msggan import config_from
    from worker.train_gan import sample_grid_png

    patches, index = open_patches(args.dataset), read_index(args.dataset)
    trainer = GanTrainer(config_from("cpu-small"), LabelView(patches, np.flatnonzero(index["label"] == args.label)))
    start = time.time()
    args.out.mkdir(parents=True, exist_ok=True)

    def save(step: int, images) -> None:  # noqa: ANN001
        (args.out / f"cpu_small_label{args.label}_step{step}.png").write_bytes(sample_grid_png(images))
        print(step, round(time.time() - start), flush=True)

    trainer.train(args.steps, sample_fn=save, sample_every=args.every)


if __name__ == "__main__":
    main()
