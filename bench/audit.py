"""Audit cost at two sizes: 2,500 and 10,000 synthetic patches against as many real ones.

    python bench/audit.py [--sizes 2500 10000] [--input-size 64] [--json]

Each size runs in a fresh process (for its peak RSS) on real patches of the shared data:
`train`, `holdout` and `synthetic` are seeded draws from one pool of real patches (they
overlap, so the flags mean nothing here), the synthetic ones flipped and with a little noise:
the cost does not depend on what the patches show. The
extractor is a ResNet18 with random weights at --input-size (a trained one costs the same).
Printed per size: features_seconds (three sets through the extractor), metrics_seconds (FID,
KID, precision/recall, density/coverage, the real floor, memorization in feature and
8-symmetry pixel space) and peak_rss_mb. Targets: metrics time at 4x the samples <= 20x
(nearest neighbours are batched tensor work), peak RSS < 2 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "IDC_regular_ps50_idx5"


def one_size(n: int, input_size: int) -> dict:
    import numpy as np
    import torch

    from models import all_metrics
    from models.classifier import build_resnet18
    from models.feature_extractors import domain_extractor
    from models.fidelity import FEATURE_METRICS
    from models.memorization import memorization
    from worker.idc_layout import decode_chunk, scan

    paths = [c.path for c in scan(DATA)[0]]
    rng = np.random.default_rng(0)
    pool = decode_chunk([paths[i] for i in rng.permutation(len(paths))[:min(len(paths), 2 * n)]])[0]
    def pick(seed: int) -> np.ndarray:
        return pool[np.random.default_rng(seed).choice(len(pool), n, replace=len(pool) < n)]

    train, holdout = pick(1), pick(2)
    synthetic = pick(3)[:, ::-1]
    synthetic = np.clip(synthetic + rng.integers(-3, 4, synthetic.shape, dtype=np.int16), 0, 255).astype(np.uint8)
    pool = None  # the bench's own copy should not count against the audit
    torch.manual_seed(0)
    extractor = domain_extractor(build_resnet18("none", "frozen"), input_size, {"model_id": "random"})
    t0 = time.perf_counter()
    feats = {k: extractor(v) for k, v in (("synthetic", synthetic), ("train", train), ("holdout", holdout))}
    t1 = time.perf_counter()
    all_metrics.compute(list(FEATURE_METRICS), real=feats["holdout"], fake=feats["synthetic"])
    all_metrics.compute(list(FEATURE_METRICS), real=feats["holdout"], fake=feats["train"])
    memo = memorization(feats["synthetic"], feats["train"], feats["holdout"], synthetic, train, holdout)
    t2 = time.perf_counter()
    return {"n": n, "features_seconds": round(t1 - t0, 2), "metrics_seconds": round(t2 - t1, 2),
            "seconds": round(t2 - t0, 2), "memorization_spaces": sorted(memo.summary["spaces"]),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2500, 10000])
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one_size(args.one, args.input_size)))
        return
    runs = {}
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--input-size", str(args.input_size)],
                             capture_output=True, text=True, check=True)
        runs[str(n)] = json.loads(out.stdout.strip().splitlines()[-1])
        if not args.json:
            print(runs[str(n)])
    small, large = runs[str(min(args.sizes))], runs[str(max(args.sizes))]
    result = {"bench": "audit", "input_size": args.input_size, "runs": runs,
              "seconds": {k: v["seconds"] for k, v in runs.items()},
              "metrics_time_ratio": round(large["metrics_seconds"] / max(small["metrics_seconds"], 1e-9), 2),
              "sample_ratio": max(args.sizes) / min(args.sizes),
              "peak_rss_mb": max(v["peak_rss_mb"] for v in runs.values())}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
