"""A finished experiment's four-way evaluate again, on the same real and synthetic datasets, with
other classifier fields: which classifier recipe reads synthetic patches best, without training
the generators again.

    python bench/evaluate_again.py --attach HOME --job EXPERIMENT_ID \\
        --variant plain='{}' --variant dihedral='{"augment": "dihedral"}' [--seeds 0 1] [--json]

Serves the experiment's home (`bench/experiment_cpu.py` prints it), reads its evaluate child's
params, and POSTs one evaluate job per variant and classifier seed with those classifier fields
merged into the child's `overrides` (a variant's own `seed` wins over --seeds).
`--sample-size S` first draws both synthetic sets again from the experiment's own generators
(generate jobs: the same models, counts and seed, at S px instead of the experiment's
`sample_size`), evaluates on those, and audits them as the experiment's audit steps did (same
holdout, features and sample cap); their fidelity rows are printed under `audits`.
`--label-filter P` draws them again through a label filter instead (models/label_filter.py): a
classifier trained as the experiment's domain classifier was, but on its GAN part's patients,
keeps only the candidates it gives P(label) >= P (what the experiment's `label_filter` does);
what each filter kept is printed under `label_filter`. `--gan-part-as-synthetic` evaluates with the
GAN part's real patches in the synthetic sets' place: its TSTR row is what the generators' own
training patches give a classifier on the same test patients, the most a generator trained on
them could be expected to give. Each job is an
ordinary evaluate of the service: the same test patients, the same split seed, the same
synthetic patches, the augmentation rows included. The experiment's own evaluate is printed as
`experiment` beside them (its classifier seed is 0 unless its overrides say otherwise). The last
line is one JSON object: every row's accuracy / balanced accuracy / AUC per variant and seed,
and the mean over seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.embedded import embedded_service, job_seconds, wait_job  # noqa: E402

ROWS = ("TRTR", "TSTS", "TRTS", "TSTR", "AUG_REAL", "AUG_MIX", "GRTR")


def variant(text: str) -> tuple[str, dict]:
    """`name={json}` from the command line."""
    name, sep, fields = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a variant is name={{json}}, got {text!r}")
    try:
        overrides = json.loads(fields)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"variant {name}: {exc}") from exc
    if not isinstance(overrides, dict):
        raise argparse.ArgumentTypeError(f"variant {name}: the fields must be a JSON object")
    return name, overrides


def table(result: dict) -> dict:
    """Accuracy, balanced accuracy (the macro recall) and AUC of each row of an evaluate result,
    and the augmentation gain in balanced accuracy with its interval."""
    rows = {row: {"accuracy": round(m["accuracy"], 4), "balanced_accuracy": round(m["recall"], 4),
                  "auc": round(m["auc"], 4)} for row, m in result["table"].items() if row in ROWS}
    gain = (result.get("augmentation") or {}).get("balanced_accuracy")
    if gain:
        rows["gain"] = {"balanced_accuracy": round(gain["gain"], 4), "ci95": [round(x, 4) for x in gain["ci95"]]}
    return rows


def _run(c, kind: str, params: dict) -> dict:  # noqa: ANN001
    resp = c.post("/v1/jobs", json={"kind": kind, "params": params})
    if resp.status_code != 202:
        sys.exit(f"{kind} refused: {resp.status_code} {resp.text}")
    job = wait_job(c, resp.json()["id"], poll=2)
    if job["state"] != "succeeded":
        sys.exit(f"{kind} {job['state']}: {job['error']}")
    return job


def filter_classifier(c, experiment: dict) -> str:  # noqa: ANN001
    """A classifier trained with the experiment's domain classifier's params on its GAN part
    (the generators' own patients): the label filter's model id."""
    domain_id = experiment["result"]["children"].get("domain_classifier") or experiment["result"]["children"]["train_classifier"]
    domain = c.get(f"/v1/jobs/{domain_id}").json()
    params = {**domain["params"], "dataset_id": experiment["result"]["parts"]["gan"]["dataset_id"]}
    job = _run(c, "train_classifier", params)
    print(f"label filter classifier {job['result']['model_id']} ({job_seconds(job)} s)", file=sys.stderr, flush=True)
    return job["result"]["model_id"]


def redraw(c, experiment: dict, size: int | None, extra: dict | None = None) -> tuple[list[str], dict]:  # noqa: ANN001
    """Both synthetic sets drawn again (at `size` px, or the experiment's size; with `extra`
    generate params) from the experiment's generate steps' models, counts and seeds, and each
    audited as the experiment's audit step for that label was: (the new synthetic dataset ids
    in the generate steps' order, fidelity (and what a label filter kept) per label)."""
    children = [c.get(k["url"]).json() for k in experiment["children"]]
    audits = {str(a["params"]["label"]): a["params"] for a in children if a["kind"] == "audit"}
    ids, fidelity = [], {}
    for gen in (g for g in children if g["kind"] == "generate"):
        job = _run(c, "generate", {**gen["params"], "size": size or gen["params"]["size"], **(extra or {})})
        dataset_id, label = job["result"]["dataset_id"], str(gen["params"]["label"])
        ids.append(dataset_id)
        if "label_filter" in job["result"]:
            print(f"label filter {label}: {json.dumps(job['result']['label_filter'])}", file=sys.stderr, flush=True)
        if label in audits:
            summary = _run(c, "audit", {**audits[label], "synthetic_dataset_id": dataset_id})["result"]["summary"]
            fidelity[label] = {"counts": summary["counts"], "fidelity": summary["fidelity"],
                               "real_floor": summary["real_floor"], "flagged_fraction": summary["flagged_fraction"],
                               **({"label_filter": job["result"]["label_filter"]} if "label_filter" in job["result"] else {})}
            print(f"audit label {label} at {size or gen['params']['size']} px: {json.dumps(fidelity[label])}", file=sys.stderr, flush=True)
    return ids, fidelity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attach", type=Path, required=True, help="HISTOSYNTH_HOME of a finished experiment")
    ap.add_argument("--job", required=True, help="the experiment job id")
    ap.add_argument("--variant", type=variant, action="append", required=True, help="name={classifier fields}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="classifier seeds per variant")
    ap.add_argument("--sample-size", type=int, choices=(50, 64), default=None,
                    help="draw the synthetic sets again at this size (the experiment's generators)")
    ap.add_argument("--label-filter", type=float, default=None, metavar="P",
                    help="draw the synthetic sets again through a label filter trained on the GAN part")
    ap.add_argument("--gan-part-as-synthetic", action="store_true",
                    help="the GAN part's real patches in place of the synthetic sets")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    started = time.monotonic()
    out: dict = {"bench": "evaluate_again", "job_id": args.job, "variants": {}}
    with embedded_service("histosynth-evaluate-again-", home=args.attach) as (c, _home):
        experiment = c.get(f"/v1/jobs/{args.job}").json()
        if experiment.get("kind") != "experiment" or experiment.get("state") != "succeeded":
            sys.exit(f"job {args.job} is not a succeeded experiment: {experiment.get('kind')} {experiment.get('state')}")
        child = next((k for k in experiment["children"] if k["kind"] == "evaluate"), None)
        if child is None:
            sys.exit(f"experiment {args.job} has no evaluate step")
        base = c.get(child["url"]).json()
        out["experiment"] = table(base["result"])
        print(f"experiment: {json.dumps(out['experiment'])}", file=sys.stderr, flush=True)
        if args.sample_size or args.label_filter is not None:
            out["sample_size"] = args.sample_size
            extra = None
            if args.label_filter is not None:
                extra = {"filter_model_id": filter_classifier(c, experiment), "filter_min_prob": args.label_filter}
                out["label_filter"] = extra
            base["params"]["synthetic_dataset_ids"], out["audits"] = redraw(c, experiment, args.sample_size, extra)
        if args.gan_part_as_synthetic:
            out["gan_part_as_synthetic"] = True
            base["params"]["synthetic_dataset_ids"] = [experiment["result"]["parts"]["gan"]["dataset_id"]]
        for name, fields in args.variant:
            runs = {}
            for seed in args.seeds:
                params = {**base["params"], "overrides": {**base["params"].get("overrides", {}), "seed": seed, **fields}}
                job = _run(c, "evaluate", params)
                runs[str(seed)] = {"table": table(job["result"]), "seconds": job_seconds(job)}
                print(f"{name} seed {seed}: {json.dumps(runs[str(seed)])}", file=sys.stderr, flush=True)
            mean = {row: {m: round(sum(r["table"][row][m] for r in runs.values()) / len(runs), 4)
                          for m in ("accuracy", "balanced_accuracy", "auc")} for row in ROWS
                    if all(row in r["table"] for r in runs.values())}
            out["variants"][name] = {"fields": fields, "runs": runs, "mean": mean}
    out["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
