"""Build the starter models shipped in `app/starters/` (app/starter_models.py) from a finished
CPU experiment, and measure them on patients they never saw.

    python bench/experiment_cpu.py --preset cpu-small-he --steps N ... --json   # prints "home"
    python bench/build_starters.py --home <that home> [--json]

Takes the experiment's two generators and its domain classifier (a ResNet18 trained from
scratch at 64 px on the classification patients), stores their weights in fp16 (the
repository stays light; the loaders upcast), and writes `manifest.json` with each file's
sha256, config, and measured numbers: the classifier's balanced accuracy and AUC on the
experiment's audit-holdout patients (never used to train either the generators or the
classifier), with the fp16 weights as shipped; each generator's audit (domain FID, KID,
density, coverage, flagged fraction) against the same holdout patients.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from app.db import session_scope  # noqa: E402
from app.packed import open_patches, read_index  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.starter_models import MANIFEST, STARTERS_DIR  # noqa: E402
from app.storage import Storage  # noqa: E402
from app.tables import Dataset, Job, ModelVersion  # noqa: E402
from models.classification_metrics import classification_metrics  # noqa: E402
from models.classifier import load_classifier  # noqa: E402
from models.inference import predict_proba  # noqa: E402


def half(payload: dict) -> dict:
    """Float tensors to fp16, everything else (integer buffers, configs) as is."""
    def conv(v):  # noqa: ANN001, ANN202
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v.half()
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(payload)


def save(payload: dict, name: str, out: Path) -> str:
    buf = io.BytesIO()
    torch.save(payload, buf)
    (out / name).write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, required=True, help="HISTOSYNTH_HOME of a finished experiment_cpu run")
    ap.add_argument("--out", type=Path, default=STARTERS_DIR)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    settings = Settings(home=args.home)
    storage = Storage.from_settings(settings)
    with session_scope(settings.resolved_database_url) as s:
        job = s.query(Job).filter(Job.kind == "experiment", Job.state == "succeeded").order_by(Job.finished_at.desc()).first()
        if job is None:
            raise SystemExit(f"no succeeded experiment in {args.home}")
        result, params = dict(job.result), dict(job.params)
        rows = {m.id: (m.kind, m.label, dict(m.config), m.key) for m in s.query(ModelVersion)}
        holdout = s.get(Dataset, result["parts"]["holdout"]["dataset_id"])
        holdout_key, holdout_patients = holdout.key, list(holdout.source.get("patients", []))
    args.out.mkdir(parents=True, exist_ok=True)
    entries = []
    for label in (0, 1):
        model_id = result["generators"][str(label)]
        _, _, config, key = rows[model_id]
        payload = torch.load(io.BytesIO(storage.read_bytes(key)), map_location="cpu", weights_only=True)
        name = f"generator_label{label}.pt"
        digest = save(half(payload), name, args.out)
        audit = result["audit"][str(label)]
        gan_config = {k: v for k, v in payload["config"].items()}
        entries.append({"kind": "generator", "label": label, "file": name, "sha256": digest, "config": gan_config,
                        "metrics": {"audit": {"fidelity": audit["fidelity"], "flagged_fraction": audit["flagged_fraction"]},
                                    "preset": params.get("preset"), "steps": params.get("steps"),
                                    "train_patients": len(config.get("train_patients", [])),
                                    "source_model_id": model_id}})
    cls_id = result["domain_classifier"]
    _, _, _, key = rows[cls_id]
    payload = torch.load(io.BytesIO(storage.read_bytes(key)), map_location="cpu", weights_only=True)
    shipped = half(payload)
    digest = save(shipped, "classifier.pt", args.out)
    model, config = load_classifier(torch.load(args.out / "classifier.pt", map_location="cpu", weights_only=True))
    folder = storage.local_tree(holdout_key)
    images, labels = np.asarray(open_patches(folder)), read_index(folder)["label"].astype(np.int64)
    probs = predict_proba(model.eval(), images, input_size=config.input_size, batch_size=256)
    measured = classification_metrics(labels, probs=probs)
    cls_metrics = {"holdout": {"n": int(len(labels)), "patients": len(holdout_patients),
                               # macro-averaged recall is balanced accuracy
                               "balanced_accuracy": measured["recall"] if measured["averaging"] == "macro" else None,
                               "accuracy": measured["accuracy"], "auc": measured["auc"],
                               "precision": "fp16 weights as shipped, fp32 compute"},
                   "train": {"dataset": "the experiment's classification patients", "epochs": config.epochs,
                             "input_size": config.input_size, "weights": config.weights},
                   "source_model_id": cls_id}
    entries.append({"kind": "classifier", "label": None, "file": "classifier.pt", "sha256": digest,
                    "config": config.to_dict(), "metrics": cls_metrics})
    manifest = {"trained_by": "bench/experiment_cpu.py + bench/build_starters.py on the public IDC dataset",
                "experiment": {"params": params, "parts": result["parts"], "table": result["table"]},
                "models": entries}
    (args.out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    summary = {"bench": "build_starters", "classifier_holdout": cls_metrics["holdout"],
               "generators": {e["label"]: e["metrics"]["audit"] for e in entries if e["kind"] == "generator"},
               "bytes": {e["file"]: (args.out / e["file"]).stat().st_size for e in entries}}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
