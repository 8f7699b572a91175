"""Prediction latency over HTTP and the gain from micro-batching.

    python bench/predict.py [--input-size 224] [--seconds 15] [--json]

Starts a real uvicorn API (SQLite, a temp home) whose promoted classifier is a ResNet18 of
the given input size (random weights: same arithmetic as a trained one). Measures, in the
same run and on the same 50x50 PNG:
- p50_ms / p99_ms: one request at a time over HTTP;
- forward_ms: the bare model forward (decode + preprocess + ResNet18) in this process;
- rps_1 / rps_16: requests per second with 1 and with 16 concurrent clients.
Targets: p50 within 20% of forward_ms; rps_16 >= 2x rps_1 (batching).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def patch_png() -> bytes:
    data = ROOT.parent / "shared" / "data" / "IDC_regular_ps50_idx5" / "10255" / "1"
    files = sorted(data.glob("*.png"))
    if files:
        return files[0].read_bytes()
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 50, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def setup(home: Path, input_size: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HISTOSYNTH_")}
    env.update({"HISTOSYNTH_HOME": str(home), "PYTHONPATH": str(ROOT)})
    os.environ.update(env)
    from app.migrate import upgrade_head
    from app.settings import Settings
    from app.db import session_scope
    from app.tables import ModelVersion
    from models.classifier import build_resnet18, classifier_state, config_from
    from worker.models_store import save_state

    settings = Settings(home=home)
    upgrade_head(settings.resolved_database_url)
    import torch

    torch.manual_seed(0)
    config = config_from({"weights": "none", "mode": "finetune", "input_size": input_size})
    model = build_resnet18("none", "finetune")
    path = home / "clf.pt"
    save_state(path, classifier_state(model, config))
    with session_scope(settings.resolved_database_url) as s:
        s.add(ModelVersion(id="bench", kind="classifier", version=1, path=str(path), promoted=True))
    return env


def bare_forward_ms(png: bytes, input_size: int, home: Path, repeats: int) -> float:
    import torch

    from app.images import decode_upload
    from models.classifier import load_classifier, preprocess

    model, _ = load_classifier(home / "clf.pt")
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 3):
            t = time.perf_counter()
            im = decode_upload(png, "p.png", 1 << 24)
            x = preprocess(torch.from_numpy(im)[None], input_size)
            torch.softmax(model(x), 1)
            times.append(time.perf_counter() - t)
    return statistics.median(times[3:]) * 1000


def throughput(url: str, png: bytes, clients: int, seconds: float) -> float:
    import httpx

    stop = time.monotonic() + seconds
    counts = [0] * clients

    def run(i: int) -> None:
        with httpx.Client(timeout=120) as c:
            while time.monotonic() < stop:
                r = c.post(url, files=[("files", ("p.png", png, "image/png"))])
                r.raise_for_status()
                counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import httpx

    png = patch_png()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = setup(home, args.input_size)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port",
                                   str(port), "--log-level", "warning"], cwd=ROOT, env=env)
        url = f"http://127.0.0.1:{port}/v1/predictions"
        try:
            for _ in range(200):
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz")
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            lat = []
            with httpx.Client(timeout=120) as c:
                for i in range(args.requests + 5):
                    t = time.perf_counter()
                    c.post(url, files=[("files", ("p.png", png, "image/png"))]).raise_for_status()
                    lat.append((time.perf_counter() - t) * 1000)
            lat = sorted(lat[5:])
            forward = bare_forward_ms(png, args.input_size, home, args.requests)
            rps_1 = throughput(url, png, 1, args.seconds)
            rps_16 = throughput(url, png, 16, args.seconds)
        finally:
            server.terminate()
            server.wait(30)
    p50 = statistics.median(lat)
    result = {
        "input_size": args.input_size,
        "p50_ms": round(p50, 2), "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2),
        "forward_ms": round(forward, 2), "overhead_pct": round(100 * (p50 - forward) / forward, 1),
        "rps_1": round(rps_1, 2), "rps_16": round(rps_16, 2), "batching_gain": round(rps_16 / rps_1, 2),
        "cpus": os.cpu_count(),
    }
    if not args.json:
        for k, v in result.items():
            print(f"{k:16} {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
