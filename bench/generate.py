"""Generation throughput and memory.

    python bench/generate.py [--preset cpu-small] [--n 2000] [--batch 256] [--json]

Project: worker.generate.generate_to (seeded latents -> EMA generator -> uint8 -> packed
dataset streamed to disk; the PNG zip is encoded when downloaded, see app/zipstream.py). Baseline, same run, same batch:
the raw generator forward alone (no conversion, no disk). Target: project >= 80% of raw.
peak_rss_mb: a fresh process generating n = 1,000 and n = 20,000 (streams to disk, so it
must not grow with n). Weights are a freshly initialised generator of the preset: the
arithmetic per image is the same as a trained one's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_generator(preset: str):  # noqa: ANN201
    import torch

    from models.msggan import config_from

    torch.manual_seed(0)
    return config_from(preset).make_generator().eval().requires_grad_(False)


def raw_forward(generator, n: int, batch: int) -> float:  # noqa: ANN001
    import torch

    z_all = torch.randn(n, generator.latent_dim, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, n, batch):
            generator(z_all[i:i + batch])
    return time.perf_counter() - start


def project(generator, n: int, batch: int, folder: Path) -> float:  # noqa: ANN001
    from worker.generate import generate_to

    start = time.perf_counter()
    generate_to(folder / "ds", generator, 1, n, seed=0, size=64, batch_size=batch, device="cpu")
    return time.perf_counter() - start


def rss(preset: str, n: int, batch: int) -> float:
    code = (
        "import resource,sys,tempfile; from pathlib import Path; sys.path.insert(0, %r); sys.argv=['x'];"
        "import bench.generate as b; g=b.make_generator(%r); d=Path(tempfile.mkdtemp());"
        "b.project(g, %d, %d, d); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)"
    ) % (str(ROOT), preset, n, batch)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rss-n", type=int, nargs=2, default=[1000, 20000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import torch

    generator = make_generator(args.preset)
    raw_forward(generator, 2 * args.batch, args.batch)  # warm-up
    # Interleaved rounds, median of each: on a shared 2-core box the order alone moved one
    # side by 20% when each ran once.
    proj, raw = [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            proj.append(project(generator, args.n, args.batch, Path(tmp)))
        raw.append(raw_forward(generator, args.n, args.batch))
    proj_s, raw_s = sorted(proj)[len(proj) // 2], sorted(raw)[len(raw) // 2]
    result = {
        "preset": args.preset, "n": args.n, "batch": args.batch, "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
        "project_images_per_s": round(args.n / proj_s, 1),
        "forward_images_per_s": round(args.n / raw_s, 1),
        "ratio": round(raw_s / proj_s, 3),
        "peak_rss_mb": {str(n): round(rss(args.preset, n, args.batch), 1) for n in args.rss_n},
        "cpus": os.cpu_count(),
    }
    if not args.json:
        for k, v in result.items():
            print(f"{k:24} {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
