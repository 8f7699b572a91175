"""Generation throughput and memory.

    python bench/generate.py [--preset cpu-small] [--n 2000] [--batch 256] [--json]
    python bench/generate.py --device cuda --json          # paper preset, batch 1024, n 50,000

Project: worker.generate.generate_to (seeded latents -> EMA generator -> uint8 -> packed
dataset streamed to disk; on a GPU in bf16 with the next batch computed while the last one is
copied out and written; the PNG zip is encoded when downloaded, see app/zipstream.py).
Same run, same batch, interleaved rounds, medians:
- forward: the raw generator forward alone at the project's precision (no conversion, no
  copy to the host, no disk): the ceiling. Target on CPU: project >= 80% of it.
- plain_fp32 (CUDA only): what a first implementation does: fp32 forward, convert, `.cpu()`,
  write, one batch after another. Target on a GPU: project >= 20,000 patches/s.
peak_rss_mb (CPU only): a fresh process generating n = 1,000 and n = 20,000 (streams to disk,
so it must not grow with n). Weights are a freshly initialised generator of the preset: the
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


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def raw_forward(generator, n: int, batch: int, device: str = "cpu", precision: str = "fp32") -> float:  # noqa: ANN001
    import torch
    from contextlib import nullcontext

    z_all = torch.randn(n, generator.latent_dim, generator=torch.Generator().manual_seed(0)).to(device)
    cast = torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode(), cast:
        for i in range(0, n, batch):
            generator(z_all[i:i + batch])
    _sync(device)
    return time.perf_counter() - start


def plain_fp32(generator, n: int, batch: int, device: str, folder: Path) -> float:  # noqa: ANN001
    """A first implementation: fp32, convert, copy to the host, write; one batch at a time."""
    import torch

    from models.sampling import to_uint8

    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    with open(folder / "plain.u8", "wb") as f, torch.inference_mode():
        for i in range(0, n, batch):
            z = torch.randn(min(batch, n - i), generator.latent_dim, generator=gen).to(device)
            f.write(to_uint8(generator(z)[-1], 64).tobytes())
    return time.perf_counter() - start


def project(generator, n: int, batch: int, folder: Path, device: str = "cpu", precision: str = "auto") -> float:  # noqa: ANN001
    from worker.generate import generate_to

    start = time.perf_counter()
    generate_to(folder / "ds", generator, 1, n, seed=0, size=64, batch_size=batch, device=device, precision=precision)
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
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default=None, help="default: paper on CUDA, cpu-small on CPU")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--n", type=int, default=None, help="default: 50,000 on CUDA, 2,000 on CPU")
    parser.add_argument("--batch", type=int, default=None, help="default: 1024 on CUDA, 256 on CPU")
    parser.add_argument("--rss-n", type=int, nargs="*", default=None, help="default: 1000 20000 on CPU, none on CUDA")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import torch

    cuda = args.device.startswith("cuda")
    preset = args.preset or ("paper" if cuda else "cpu-small")
    n = args.n or (50_000 if cuda else 2000)
    batch = args.batch or (1024 if cuda else 256)
    rss_n = args.rss_n if args.rss_n is not None else ([] if cuda else [1000, 20000])
    precision = args.precision if args.precision != "auto" else ("bf16" if cuda else "fp32")
    generator = make_generator(preset).to(args.device, memory_format=torch.channels_last if cuda else torch.contiguous_format)
    # the plain loop's own copy in torch's default layout
    plain_generator = make_generator(preset).to(args.device) if cuda else None
    raw_forward(generator, 2 * batch, batch, args.device, precision)  # warm-up
    if cuda:
        plain_fp32(plain_generator, 2 * batch, batch, args.device, Path(tempfile.mkdtemp()))
    # Interleaved rounds, median of each: on a shared 2-core box the order alone moved one
    # side by 20% when each ran once.
    proj, raw, plain = [], [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            proj.append(project(generator, n, batch, Path(tmp), args.device, precision))
            if cuda:
                plain.append(plain_fp32(plain_generator, n, batch, args.device, Path(tmp)))
        raw.append(raw_forward(generator, n, batch, args.device, precision))
    med = (lambda xs: sorted(xs)[len(xs) // 2])
    proj_s, raw_s = med(proj), med(raw)
    result = {
        "bench": "generate", "device": args.device, "gpu": torch.cuda.get_device_name() if cuda else None,
        "preset": preset, "precision": precision, "n": n, "batch": batch, "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "project_images_per_s": round(n / proj_s, 1),
        "forward_images_per_s": round(n / raw_s, 1),
        "ratio": round(raw_s / proj_s, 3),
        "peak_rss_mb": {str(k): round(rss(preset, k, batch), 1) for k in rss_n},
        "cpus": os.cpu_count(),
    }
    if cuda:
        result["plain_fp32_images_per_s"] = round(n / med(plain), 1)
        result["speedup_vs_plain_fp32"] = round(med(plain) / proj_s, 2)
    if not args.json:
        for k, v in result.items():
            print(f"{k:24} {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
