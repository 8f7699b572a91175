"""The experiment job end to end at CPU scale, through the service's REST API: one POST.

    python bench/experiment_cpu.py --preset cpu-small --steps 2000 --fraction 0.05 [--out docs] [--json]
                                   [--select-every 250 --select-start 2000 --select-size 50]
                                   [--label-filter 0.5]

Starts `histosynth serve` (embedded: SQLite + filesystem broker, a temp home), ingests the
shared data, POSTs one experiment (patient split three ways, two generators, samples, the
audit's domain classifier, evaluate with the augmentation rows, an audit per label), waits,
and saves its report (Markdown and JSON) and the generators' last sample grids under --out
(with --select-every, also the chosen snapshots' grids, `*_labelN_selected.png`).
The last line printed is one JSON object: the table, the augmentation gain, the audits and
the wall time of every step.

    python bench/experiment_cpu.py --attach HOME --job ID [--steps N --out docs --json]

serves an earlier run's home instead and waits for its experiment `ID`. If that experiment
failed (a worker crash outside the pipeline, say), it and its failed steps are put back in the
queue first: the steps that succeeded are kept (the experiment finds its children by their
stable ids) and only the rest runs. The JSON then says `"resumed": true`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.embedded import embedded_service, job_seconds  # noqa: E402
DATA = ROOT.parent / "shared" / "data" / "IDC_regular_ps50_idx5"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--overrides", default="{}", help="JSON GanConfig fields")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--max-per-class", type=int, default=None)
    ap.add_argument("--audit-max-samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--select-every", type=int, default=0, help="train_gan's select_every (0: the last step)")
    ap.add_argument("--select-start", type=int, default=0)
    ap.add_argument("--select-size", type=int, choices=(50, 64), default=50, help="train_gan's select_size")
    ap.add_argument("--label-filter", type=float, default=None, metavar="P",
                    help="the experiment's label_filter at label_filter_min_prob P")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--name", default="cpu_experiment")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--attach", type=Path, default=None, help="HISTOSYNTH_HOME of an earlier run")
    ap.add_argument("--job", default=None, help="with --attach: the experiment job id")
    args = ap.parse_args()
    started = time.monotonic()
    if args.attach:
        requeue_failed(args.attach, args.job)
    with embedded_service("histosynth-experiment-cpu-", home=args.attach) as (c, home):
        if args.attach:
            job_id = args.job
            params = c.get(f"/v1/jobs/{job_id}").json()["params"]
        else:
            job_id, params = submit(c, args)
        while (job := c.get(f"/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed", "cancelled"):
            running = [k for k in job["children"] if k["state"] == "running"]
            step = f"{running[0]['kind']} {running[0]['progress']['current']}/{running[0]['progress']['total']}" if running else ""
            print(f"  experiment {job['progress']['message']}: {step}", file=sys.stderr, flush=True)
            time.sleep(20)
        if job["state"] != "succeeded":
            sys.exit(f"experiment {job['state']}: {job['error']} (logs in {home})")
        args.out.mkdir(parents=True, exist_ok=True)
        names = {a["name"]: a for a in job["artifacts"]}
        (args.out / f"{args.name}_report.md").write_text(c.get(names["report.md"]["url"]).text)
        (args.out / f"{args.name}_report.json").write_text(c.get(names["report.json"]["url"]).text)
        walls = {}
        for kid in job["children"]:
            child = c.get(kid["url"]).json()
            walls[f"{kid['kind']}:{kid['id'][:6]}"] = job_seconds(child)
            for art in child["artifacts"]:
                if art["name"].startswith("samples/label") and art["name"].endswith(f"{args.steps:07d}.png"):
                    label = art["name"].split("/")[1]
                    (args.out / f"{args.name}_{label}.png").write_bytes(c.get(art["url"]).content)
                elif art["name"].startswith("selected_snapshot_label"):  # the model, with select_every
                    label = art["name"].removeprefix("selected_snapshot_").removesuffix(".png")
                    (args.out / f"{args.name}_{label}_selected.png").write_bytes(c.get(art["url"]).content)
    result = {"bench": "experiment_cpu", "home": str(home), "job_id": job_id, "resumed": bool(args.attach),
              "params": params,
              "wall_s": round(time.monotonic() - started, 1),
              "step_wall_s": walls, "parts": job["result"]["parts"], "table": job["result"]["table"],
              "augmentation": job["result"]["augmentation"], "audit": job["result"]["audit"]}
    print(json.dumps(result))


def submit(c, args) -> tuple[str, dict]:  # noqa: ANN001
    """Ingest the shared data and POST the experiment: (job id, params)."""
    job = c.post("/v1/jobs", json={"kind": "ingest", "params": {"path": str(DATA)}}).json()
    while (job := c.get(f"/v1/jobs/{job['id']}").json())["state"] not in ("succeeded", "failed"):
        time.sleep(1)
    if job["state"] != "succeeded":
        sys.exit(f"ingest failed: {job['error']}")
    params = {"dataset_id": job["result"]["dataset_id"], "fraction": args.fraction, "preset": args.preset,
              "overrides": json.loads(args.overrides), "steps": args.steps, "weights": "none",
              "mode": "finetune", "epochs": args.epochs, "input_size": args.input_size,
              "audit_max_samples": args.audit_max_samples, "seed": args.seed}
    if args.max_per_class:
        params["max_per_class"] = args.max_per_class
    if args.select_every:
        params.update(select_every=args.select_every, select_start=args.select_start, select_size=args.select_size)
    if args.label_filter is not None:
        params.update(label_filter=True, label_filter_min_prob=args.label_filter)
    resp = c.post("/v1/experiments", json=params)
    if resp.status_code != 202:
        sys.exit(f"experiment refused: {resp.text}")
    return resp.json()["id"], params


def requeue_failed(home: Path, job_id: str) -> None:
    """Put a failed experiment and its failed steps back in the queue (the service is stopped)."""
    from sqlalchemy import update

    from app.db import session_scope
    from app.settings import Settings
    from app.tables import Job

    with session_scope(Settings(home=home).resolved_database_url) as s:
        s.execute(update(Job).where((Job.id == job_id) | (Job.parent_id == job_id), Job.state == "failed").values(
            state="queued", error=None, finished_at=None, attempts=0, lease_owner=None, lease_expires_at=None,
            cancel_requested=False))


if __name__ == "__main__":
    main()
