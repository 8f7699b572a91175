"""Pack real IDC patches into one compressed file that can travel with the repository to a
GPU machine (which sees neither ../shared nor the internet).

    python bench/pack_gpu_data.py [--label 1] [--out .gpu_data]

Writes <out>/idc_label<L>.npz (uint8 (N, 50, 50, 3) under "patches", patient ids under
"patients"; edge patches padded white exactly as ingest pads them) and <out>/sample.png (one
real patch file, for bench/predict.py --png). The folder is git-ignored; bench/gpu_check.sh
reads it and `device run` carries it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from worker.idc_layout import decode_chunk, scan  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "IDC_regular_ps50_idx5"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--label", type=int, default=1, choices=[0, 1])
    ap.add_argument("--limit", type=int, default=0, help="at most this many patches (0: all of the label)")
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu_data")
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"no IDC data at {args.data}")
    candidates = [c for c in scan(args.data)[0] if c.label == args.label]
    if args.limit:
        candidates = candidates[:args.limit]
    patches, _, failures = decode_chunk([c.path for c in candidates])
    if failures:
        raise SystemExit(f"{len(failures)} files failed to decode, e.g. {failures[0]}")
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"idc_label{args.label}.npz"
    np.savez_compressed(target, patches=patches, patients=np.array([c.patient for c in candidates]))
    shutil.copyfile(candidates[0].path, args.out / "sample.png")
    print(f"{target}: {len(patches)} patches, {target.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
