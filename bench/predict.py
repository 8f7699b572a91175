"""Prediction latency over HTTP and the gain from micro-batching.

    python bench/predict.py [--input-size 224] [--seconds 8] [--rounds 3] [--precision fp32 bf16] [--json]
    python bench/predict.py --device cuda --json       # the API serving from a GPU

Starts a real uvicorn API (SQLite, a temp home) whose promoted classifier is a ResNet18 of
the given input size (random weights: same arithmetic as a trained one), once per serving
precision. Measures, in the same run and on the same 50x50 PNG:
- p50_ms / p99_ms: one request at a time over HTTP;
- forward_ms: the bare forward (decode + preprocess + the served network, batch 1) in this
  process, at the same precision;
- rps_1 / rps_16: requests per second with 1 and with 16 concurrent clients (medians of
  `--rounds` interleaved rounds), and the mean batch size the server formed (its /metrics);
- compute_ceiling: per-image forward time at batch 1 over that at batch 16, in this process:
  the most batching can gain from the arithmetic alone on this machine.
The load clients send one pre-built request over a kept-alive socket each and read the
response with a minimal parser, so the client's own CPU (the same 2 cores) stays small.
Targets: p50 within 20% of forward_ms; rps_16 >= 2x rps_1 (batching) on CPU, >= 4x on a GPU.
--device sets HISTOSYNTH_PREDICT_DEVICE for the server and runs the in-process figures there.
The top-level figures are the default precision (fp32); other precisions are nested by name.
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


def patch_png(path: Path | None = None) -> bytes:
    if path is not None:
        return path.read_bytes()
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
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.update({"HISTOSYNTH_HOME": str(home), "PYTHONPATH": path})
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
    save_state(settings.resolved_storage_dir / "models" / "bench.pt", classifier_state(model, config))
    with session_scope(settings.resolved_database_url) as s:
        s.add(ModelVersion(id="bench", kind="classifier", version=1, key="models/bench.pt", promoted=True))
    return env


def bare_forward_ms(png: bytes, input_size: int, home: Path, repeats: int, precision: str, device: str) -> float:
    import torch

    from app.images import decode_upload
    from models.classifier import load_classifier
    from models.inference import InferenceModel

    model, _ = load_classifier(home / "storage" / "models" / "bench.pt")
    runner = InferenceModel(model, input_size, precision, device)
    times = []
    for _ in range(repeats + 3):
        t = time.perf_counter()
        runner.probabilities([torch.from_numpy(decode_upload(png, "p.png", 1 << 24))])
        times.append(time.perf_counter() - t)
    return statistics.median(times[3:]) * 1000


def compute_ceiling(input_size: int, home: Path, precision: str, device: str, batch: int = 16,
                    repeats: int = 5) -> float:
    """The most batching can gain from compute alone on this machine: per-image time of a
    batch-1 forward over that of a batch-`batch` forward (same network, same precision)."""
    import torch

    from models.classifier import load_classifier
    from models.inference import InferenceModel

    runner = InferenceModel(load_classifier(home / "storage" / "models" / "bench.pt")[0], input_size, precision, device)
    image = torch.randint(0, 256, (50, 50, 3), dtype=torch.uint8)

    def per_image_ms(n: int) -> float:
        images = [image] * n
        runner.probabilities(images)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            runner.probabilities(images)
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1000 / n

    return per_image_ms(1) / per_image_ms(batch)


def multipart_request(port: int, png: bytes) -> bytes:
    boundary = "histosynthbench"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"p.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /v1/predictions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class RawClient:
    """One kept-alive HTTP/1.1 connection that sends a fixed request and reads one response."""

    def __init__(self, port: int, request: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request, self.buf = request, b""

    def post(self) -> int:
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(self.buf) < length:
            self.buf += self._recv()
        self.buf = self.buf[length:]
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        return status

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def throughput(port: int, request: bytes, clients: int, seconds: float) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * clients
    conns = [RawClient(port, request) for _ in range(clients)]

    def run(i: int) -> None:
        while time.monotonic() < stop:
            conns[i].post()
            counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    for c in conns:
        c.close()
    return sum(counts) / elapsed


def mean_batch(port: int) -> tuple[float, float]:
    """(sum, count) of the server's histosynth_prediction_batch_size histogram."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("histosynth_prediction_batch_size_")}
    return values.get("histosynth_prediction_batch_size_sum", 0.0), values.get("histosynth_prediction_batch_size_count", 0.0)


def measure(env: dict[str, str], home: Path, png: bytes, args: argparse.Namespace, precision: str) -> dict:
    import httpx

    # In-process figures first, with no server alive: its idle OpenMP threads skewed them.
    forward = bare_forward_ms(png, args.input_size, home, args.requests, precision, args.device)
    ceiling = compute_ceiling(args.input_size, home, precision, args.device)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port",
                               str(port), "--log-level", "warning"], cwd=ROOT,
                              env={**env, "HISTOSYNTH_PREDICT_PRECISION": precision,
                                   "HISTOSYNTH_PREDICT_DEVICE": args.device})
    request = multipart_request(port, png)
    try:
        for _ in range(200):
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.2)
        client = RawClient(port, request)
        lat = []
        for _ in range(args.requests + 20):
            t = time.perf_counter()
            client.post()
            lat.append((time.perf_counter() - t) * 1000)
        client.close()
        lat = sorted(lat[20:])
        rps_1, rps_16, batches = [], [], []
        for _ in range(args.rounds):  # interleaved rounds: drift on a shared machine hits both alike
            rps_1.append(throughput(port, request, 1, args.seconds))
            before = mean_batch(port)
            rps_16.append(throughput(port, request, 16, args.seconds))
            after = mean_batch(port)
            batches.append((after[0] - before[0]) / max(after[1] - before[1], 1))
    finally:
        server.terminate()
        server.wait(30)
    p50, r1, r16 = statistics.median(lat), statistics.median(rps_1), statistics.median(rps_16)
    return {
        "precision": precision, "p50_ms": round(p50, 2), "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2),
        "forward_ms": round(forward, 2), "overhead_pct": round(100 * (p50 - forward) / forward, 1),
        "rps_1": round(r1, 2), "rps_16": round(r16, 2), "batching_gain": round(r16 / r1, 2),
        "gain_by_round": [round(b / a, 2) for a, b in zip(rps_1, rps_16)],
        "mean_batch_16": round(statistics.median(batches), 2),
        "compute_ceiling": round(ceiling, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--png", type=Path, default=None, help="the patch to send (default: a shared-data patch)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=8, help="per throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    png = patch_png(args.png)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = setup(home, args.input_size)
        runs = [measure(env, home, png, args, p) for p in args.precision]
    import torch

    result = {"bench": "predict", "device": args.device, "input_size": args.input_size, "cpus": os.cpu_count(),
              "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None, **runs[0]}
    for run in runs[1:]:
        result[run["precision"]] = run
    if not args.json:
        for run in runs:
            print(f"-- precision {run['precision']}")
            for k, v in run.items():
                print(f"{k:16} {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
