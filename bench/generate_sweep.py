"""Raw generator forward throughput under speed variants (what bench/generate.py's ceiling is made of).

    python bench/generate_sweep.py --device cuda [--preset paper] [--n 20480]

Variants: precision (fp32 = TF32 convs, bf16 autocast), memory layout, batch size, and
torch.compile of the generator. Each prints images/s of the bare forward (no conversion, no
copy to the host); the product uses what measures fastest here (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.msggan import config_from  # noqa: E402


def rate(fn, latent: int, n: int, batch: int, bf16: bool, device: str) -> float:  # noqa: ANN001
    z = torch.randn(n, latent, device=device)
    cast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    with torch.inference_mode(), cast:
        for i in range(0, 2 * batch, batch):  # warm-up (and compilation)
            fn(z[i:i + batch])
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(0, n, batch):
            fn(z[i:i + batch])
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--n", type=int, default=20480)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    cfg = config_from(args.preset)
    results = {}
    for layout in ("channels_last", "contiguous"):
        G = cfg.make_generator().to(args.device, memory_format=getattr(torch, f"{layout}_format"
                                                                        if layout == "contiguous" else layout)).eval()
        for bf16 in (True, False):
            for batch in ((512, 1024, 2048) if bf16 and layout == "channels_last" else (1024,)):
                name = f"{'bf16' if bf16 else 'tf32'}-{layout}-b{batch}"
                results[name] = round(rate(G, cfg.latent_dim, args.n, batch, bf16, args.device), 1)
                print(name, results[name], flush=True)
    if args.compile:
        G = cfg.make_generator().to(args.device, memory_format=torch.channels_last).eval()
        compiled = torch.compile(G)
        results["bf16-channels_last-b1024-compile"] = round(rate(compiled, cfg.latent_dim, args.n, 1024, True,
                                                                 args.device), 1)
        print("compile", results["bf16-channels_last-b1024-compile"], flush=True)
    print(json.dumps({"bench": "generate_sweep", "gpu": torch.cuda.get_device_name(), "images_per_s": results}))


if __name__ == "__main__":
    main()
