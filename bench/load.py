"""The API under load and under attack, while a training job runs.

    python bench/load.py [--seconds 60] [--baseline-seconds 30] [--clients 16] [--hostile 8] [--json]

Starts `histosynth serve` (API + one worker; SQLite, a temp home, API keys required) whose
promoted classifier is a paper-size ResNet18 at 224 px (random weights: the same arithmetic as
a trained one), ingests three patients of the shared data and starts a `train_gan` job, so the
worker trains on the same 2 cores throughout. Then, in this same run:
- baseline: `--clients` clients, each posting one 50x50 patch per request in a loop, for
  `--baseline-seconds`;
- hostile: the same clients for `--seconds` while `--hostile` clients (another key) send the
  review's request in a loop: 64 blank 4096x4096 PNGs, 3 MB on the wire, several GB decoded.
Reported per phase: `errors` (any non-200 answer or transport error of a normal client; must
be 0), `rps`, `p50_ms`, `p99_ms`; the hostile answers by status; the API process's peak
resident memory `peak_rss_mb` (sampled every 50 ms; must stay under 2 GB) and /healthz's worst
latency during the phase. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.predict import patch_png, setup  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "IDC_regular_ps50_idx5"


def hostile_body() -> list[tuple[str, tuple[str, bytes, str]]]:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4096, 4096), (255, 255, 255)).save(buf, format="PNG", optimize=True)
    return [("files", (f"blank{i}.png", buf.getvalue(), "image/png")) for i in range(64)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """Peak RSS of the API process and worst /healthz latency, while a phase runs."""

    def __init__(self, pid: int, url: str) -> None:
        super().__init__(daemon=True)
        self.pid, self.url, self.stop = pid, url, threading.Event()
        self.peak_rss_mb, self.health_ms = 0.0, []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as c:
            while not self.stop.wait(0.05):
                self.peak_rss_mb = max(self.peak_rss_mb, rss_mb(self.pid))
                t0 = time.perf_counter()
                try:
                    c.get("/healthz")
                    self.health_ms.append((time.perf_counter() - t0) * 1000)
                except httpx.HTTPError:
                    self.health_ms.append(60_000.0)


async def normal_client(url: str, key: str, png: bytes, until: float, lat: list, errors: list) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as c:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            try:
                r = await c.post("/v1/predictions", files=[("files", ("p.png", png, "image/png"))])
                if r.status_code != 200:
                    errors.append(r.status_code)
                    continue
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
                continue
            lat.append((time.perf_counter() - t0) * 1000)


async def hostile_client(url: str, key: str, body: list, until: float, statuses: dict) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as c:
        while time.monotonic() < until:
            try:
                r = await c.post("/v1/predictions", files=body)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1


def phase(url: str, pid: int, keys: dict, seconds: float, clients: int, hostile: int) -> dict:
    png, body = patch_png(), hostile_body() if hostile else None
    lat: list[float] = []
    errors: list = []
    statuses: dict = {}
    sampler = Sampler(pid, url)
    sampler.start()

    async def main() -> None:
        until = time.monotonic() + seconds
        tasks = [normal_client(url, keys["user"], png, until, lat, errors) for _ in range(clients)]
        tasks += [hostile_client(url, keys["hostile"], body, until, statuses) for _ in range(hostile)]
        await asyncio.gather(*tasks)
    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    lat.sort()
    pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 1)) if lat else (lambda q: None)
    return {"seconds": round(wall, 1), "clients": clients, "hostile_clients": hostile, "requests": len(lat),
            "errors": len(errors), "error_kinds": sorted({str(e) for e in errors}),
            "rps": round(len(lat) / wall, 1), "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "hostile_answers": {str(k): v for k, v in sorted(statuses.items(), key=str)},
            "peak_rss_mb": round(sampler.peak_rss_mb, 1),
            "healthz_worst_ms": round(max(sampler.health_ms), 1) if sampler.health_ms else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--baseline-seconds", type=float, default=30)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--hostile", type=int, default=8)
    ap.add_argument("--gan-steps", type=int, default=100_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))

    home = Path(tempfile.mkdtemp(prefix="histosynth-load-"))
    env = setup(home, 224)
    from app import auth
    from app.db import session_scope
    from app.settings import Settings

    with session_scope(Settings(home=home).resolved_database_url) as s:
        keys = {"admin": auth.create_key(s, "bench-admin", "admin")[1], "user": auth.create_key(s, "bench", "user")[1],
                "hostile": auth.create_key(s, "hostile", "user")[1]}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    slice_root = home / "slice"
    for patient in ("10255", "10273", "10275"):
        shutil.copytree(DATA / patient, slice_root / patient)
    env |= {"HISTOSYNTH_AUTH": "keys", "HISTOSYNTH_STARTER_MODELS": "false", "HISTOSYNTH_INGEST_ROOTS": json.dumps([str(home)]),
            # Normal clients are one key: let the rate limit measure nothing here.
            "HISTOSYNTH_RATE_PREDICTION_IMAGES_PER_MINUTE": "1000000000"}
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                              stdout=open(home / "serve.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    admin = httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {keys['admin']}"})
    try:
        for _ in range(400):
            try:
                admin.get("/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.3)
        job = admin.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(slice_root)}}).json()
        while (job := admin.get(f"/v1/jobs/{job['id']}").json())["state"] not in ("succeeded", "failed"):
            time.sleep(0.5)
        assert job["state"] == "succeeded", job
        gan = admin.post("/v1/jobs", json={"kind": "train_gan", "params": {
            "dataset_id": job["result"]["dataset_id"], "preset": "cpu-small", "steps": args.gan_steps, "label": 1,
            "checkpoint_every": 0, "sample_every": 0}})
        assert gan.status_code == 202, gan.text
        gan_id = gan.json()["id"]
        while admin.get(f"/v1/jobs/{gan_id}").json()["state"] != "running":
            time.sleep(0.5)
        warm = httpx.post(f"{url}/v1/predictions", files=[("files", ("p.png", patch_png(), "image/png"))],
                          headers={"Authorization": f"Bearer {keys['user']}"}, timeout=300)
        assert warm.status_code == 200, warm.text  # the classifier is loaded before anything is timed
        log("training job running; baseline phase")
        api_pid = server.pid  # `histosynth serve` runs uvicorn in its own process; the worker is a child
        baseline = phase(url, api_pid, keys, args.baseline_seconds, args.clients, 0)
        log(f"baseline: {baseline}")
        hostile = phase(url, api_pid, keys, args.seconds, args.clients, args.hostile)
        log(f"hostile: {hostile}")
        training = admin.get(f"/v1/jobs/{gan_id}").json()
        admin.post(f"/v1/jobs/{gan_id}/cancel")
        result = {"bench": "load", "baseline": baseline, "hostile": hostile,
                  "training_job": {"state": training["state"], "steps_done": training["progress"]["current"]},
                  "errors": baseline["errors"] + hostile["errors"], "rps": hostile["rps"], "p99_ms": hostile["p99_ms"],
                  "peak_rss_mb": max(baseline["peak_rss_mb"], hostile["peak_rss_mb"]),
                  "cpu_count": os.cpu_count()}
        print(json.dumps(result))
    finally:
        admin.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
