"""The paper's pipeline at CPU scale, through the service's own REST API.

    python bench/paper_cpu.py --steps 1500 --n 1000 --epochs 5 [--out docs] [--json]

Starts `histosynth serve` (embedded: SQLite + filesystem broker, a temp home), then:
ingest the shared data -> train_gan (both labels, cpu-small) -> generate n per label (50 px,
to match real) -> evaluate (four-way protocol, ResNet18 finetune from weights none, patient
split). Saves the final sample grids and the report under --out and prints one JSON object
(the four rows beside the paper's Table 3, timings) as its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.embedded import embedded_service  # noqa: E402
DATA = ROOT.parent / "shared" / "data" / "IDC_regular_ps50_idx5"


def wait(c: httpx.Client, job: dict, label: str) -> dict:
    start = time.monotonic()
    while (job := c.get(f"/v1/jobs/{job['id']}").json())["state"] not in ("succeeded", "failed", "cancelled"):
        print(f"  {label}: {job['progress']['current']}/{job['progress']['total']} {job['progress']['message']}",
              file=sys.stderr, flush=True)
        time.sleep(10)
    if job["state"] != "succeeded":
        sys.exit(f"{label} {job['state']}: {job['error']}")
    job["wall_s"] = round(time.monotonic() - start, 1)
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--n", type=int, default=1000, help="synthetic patches per label")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--max-per-class", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with embedded_service("histosynth-paper-cpu-") as (c, home):
        ingest = wait(c, c.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(DATA)}}).json(), "ingest")
        dataset_id = ingest["result"]["dataset_id"]
        gan = wait(c, c.post("/v1/jobs", json={"kind": "train_gan", "params": {
            "dataset_id": dataset_id, "label": "both", "preset": "cpu-small", "steps": args.steps,
            "checkpoint_every": 500, "sample_every": 500}}).json(), "train_gan")
        args.out.mkdir(parents=True, exist_ok=True)
        for label in ("0", "1"):
            grid = [a for a in gan["artifacts"] if a["name"] == f"samples/label{label}/step{args.steps:07d}.png"][0]
            (args.out / f"cpu_small_label{label}.png").write_bytes(c.get(grid["url"]).content)
        synth = []
        for label, model_id in gan["result"]["model_ids"].items():
            gen = wait(c, c.post("/v1/generations", json={"label": int(label), "n": args.n, "size": 50, "seed": 1,
                                                         "model_id": model_id}).json(), f"generate {label}")
            synth.append(gen["result"]["dataset_id"])
        evaluation = wait(c, c.post("/v1/jobs", json={"kind": "evaluate", "params": {
            "real_dataset_id": dataset_id, "synthetic_dataset_ids": synth, "weights": "none", "mode": "finetune",
            "epochs": args.epochs, "input_size": args.input_size, "max_per_class": args.max_per_class,
            "split_by": "patient", "seed": 0}}).json(), "evaluate")
        report = [a for a in evaluation["artifacts"] if a["name"] == "report.md"][0]
        (args.out / "cpu_protocol_report.md").write_text(c.get(report["url"]).text)
    result = {
        "steps": args.steps, "n_per_label": args.n, "epochs": args.epochs, "input_size": args.input_size,
        "max_per_class": args.max_per_class, "table": evaluation["result"]["table"],
        "gan_metrics": gan["metrics"],
        "wall_s": {"ingest": ingest["wall_s"], "train_gan": gan["wall_s"], "evaluate": evaluation["wall_s"]},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
