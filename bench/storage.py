"""The S3 backend against the local folder, same run, through the embedded service's REST API.

    python bench/storage.py [--steps 2000] [--n 10000] [--patients 20] [--json]

For each backend: ingest of an upload (a zip of --patients patients of the shared data), a
cpu-small train_gan of --steps steps (checkpoints every 500, as a user would), and a
generation of --n patches; job wall times from the job rows. S3 is a real SeaweedFS server
(tests/s3_server.py) on this machine, so the ratio measures the storage layer's own cost
(PUTs, listing, the worker's dataset cache), not a network. Bytes moved: what the store holds
after the run, and what the worker and API fetched into their caches.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.embedded import embedded_service, job_seconds, wait_job  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "IDC_regular_ps50_idx5"


def upload_zip(data: Path, patients: int) -> bytes:
    buf = io.BytesIO()
    chosen = sorted(p for p in data.iterdir() if p.is_dir())[:patients]
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for patient in chosen:
            for f in sorted(patient.rglob("*.png")):
                zf.write(f, f.relative_to(data).as_posix())
    return buf.getvalue()


def run_backend(name: str, env: dict[str, str], body: bytes, steps: int, n: int) -> dict:
    with embedded_service(f"histosynth-storage-{name}-", env) as (c, home):
        upload = c.post("/v1/uploads", content=body, headers={"Content-Type": "application/zip"})
        upload.raise_for_status()
        out = {}
        ingest = wait_job(c, c.post("/v1/jobs", json={"kind": "ingest", "params": {
            "upload_id": upload.json()["upload_id"]}}).json()["id"])
        assert ingest["state"] == "succeeded", ingest["error"]
        out["ingest_s"] = job_seconds(ingest)
        train = wait_job(c, c.post("/v1/jobs", json={"kind": "train_gan", "params": {
            "dataset_id": ingest["result"]["dataset_id"], "label": 1, "preset": "cpu-small", "steps": steps,
            "checkpoint_every": 500, "sample_every": 500}}).json()["id"], poll=2)
        assert train["state"] == "succeeded", train["error"]
        out["train_s"] = job_seconds(train)
        gen = wait_job(c, c.post("/v1/generations", json={"label": 1, "n": n, "size": 50}).json()["id"])
        assert gen["state"] == "succeeded", gen["error"]
        out["generate_s"] = job_seconds(gen)
        z = c.get(f"/v1/artifacts/{gen['result']['zip_artifact_id']}")
        out["zip_bytes"] = len(z.content)
        cache = home / "cache"
        out["fetched_bytes"] = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()
                                   and "trees" not in f.parts) if cache.exists() else 0
        out["home"] = str(home)
    return out


def stored_bytes(endpoint, prefix: str) -> int:  # noqa: ANN001
    import s3fs

    fs = s3fs.S3FileSystem(**endpoint.s3fs_options())
    return sum(int(info["size"]) for info in fs.find(f"{endpoint.bucket}/{prefix}", detail=True).values())


def main() -> None:
    from tests.s3_server import seaweed_s3

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    body = upload_zip(args.data, args.patients)
    result = {"bench": "storage", "steps": args.steps, "n": args.n, "upload_bytes": len(body)}
    with tempfile.TemporaryDirectory(prefix="histosynth-bench-s3-") as tmp:
        with seaweed_s3(Path(tmp)) as endpoint:
            prefix = f"bench-{uuid.uuid4().hex[:8]}"
            result["local"] = run_backend("local", {}, body, args.steps, args.n)
            result["s3"] = run_backend("s3", endpoint.storage_env(prefix), body, args.steps, args.n)
            result["s3"]["stored_bytes"] = stored_bytes(endpoint, prefix)
    for step in ("ingest", "train", "generate"):
        result[f"s3_over_local_{step}"] = round(result["s3"][f"{step}_s"] / result["local"][f"{step}_s"], 3)
    if not args.json:
        for step in ("ingest", "train", "generate"):
            print(f"{step}: local {result['local'][f'{step}_s']} s, s3 {result['s3'][f'{step}_s']} s, "
                  f"s3/local {result[f's3_over_local_{step}']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
