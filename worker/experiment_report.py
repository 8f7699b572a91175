"""The experiment's Markdown report: the split, Table 3 beside the paper's, the augmentation
gain, and each label's audit beside the real floor. Numbers come only from the summary."""

from __future__ import annotations

from typing import Any

from models.protocol import AUG_ROWS, PAPER_TABLE3, REFERENCE_ROW, ROWS

LABELS = {"0": "IDC-", "1": "IDC+"}


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _selection_lines(run: dict[str, Any], selected: dict[str, int]) -> list[str]:
    if not run.get("select_every"):
        return []
    picks = ", ".join(f"{LABELS.get(label, label)} step {step}" for label, step in sorted(selected.items()))
    size = f" on samples drawn at {run['select_size']} px" if run.get("select_size") else ""
    return [f"Each generator is its best snapshot, scored every {run['select_every']} steps by FID against its own "
            f"training patches in the domain classifier's features (never the holdout){size}: {picks}.", ""]


def _filter_lines(filtered: dict[str, dict[str, Any]]) -> list[str]:
    """What the label filter kept, per label (models/label_filter.py)."""
    if not filtered:
        return []
    first = next(iter(filtered.values()))
    kept = "; ".join(f"{LABELS.get(label, label)} kept {f['kept']} of {f['candidates']} candidates "
                     f"(acceptance {f['acceptance']:.3f}; the filter put {f['agreement']:.1%} of them on their "
                     "label)" for label, f in sorted(filtered.items()))
    return [f"The synthetic patches are label-filtered: only candidates that a ResNet18 trained on the GAN part's "
            f"patients (classifier `{first['model_id']}`, never the classification or holdout patients) gives "
            f"P(label) >= {first['min_prob']} were kept: {kept}. TSTR here measures the generator with its filter.",
            ""]


def experiment_markdown(summary: dict[str, Any]) -> str:
    run = summary["params"]  # the experiment's params that the report names
    lines = ["# Experiment: the paper's pipeline", "",
             f"Preset `{run.get('preset')}`, {run.get('steps')} GAN steps per generator, fraction {run.get('fraction')} "
             f"of the paper's sizes, classifier epochs {run.get('epochs')}, seed {run.get('seed')}.", "",
             *_selection_lines(run, summary.get("selected_steps") or {}),
             *_filter_lines(summary.get("label_filter") or {}),
             "## Patients, split three ways", "", "| part | patients | IDC- patches | IDC+ patches | dataset |",
             "|---|---|---|---|---|"]
    for part, info in summary["parts"].items():
        lines.append(f"| {part} | {info['patients']} | {info['by_label'].get('0', 0)} | {info['by_label'].get('1', 0)} | "
                     f"`{info['dataset_id']}` |")
    lines += ["", "## Four-way protocol beside the paper's Table 3", "",
              "| row | accuracy | precision | recall | F1 | AUC | paper accuracy / P / R / F1 |", "|---|---|---|---|---|---|---|"]
    for row in ROWS:
        m, paper = summary["table"][row], PAPER_TABLE3[row]
        lines.append(f"| {row} | " + " | ".join(_f(m.get(k)) for k in ("accuracy", "precision", "recall", "f1", "auc"))
                     + " | " + " / ".join(f"{paper[k]:.2f}" for k in ("accuracy", "precision", "recall", "f1")) + " |")
    ref = summary["table"].get(REFERENCE_ROW)
    if ref:
        lines += ["", f"{REFERENCE_ROW}, what TSTR could reach: a classifier on the GAN part's real patches (the ones the "
                  f"generators learned from), tested as TSTR is: accuracy {_f(ref.get('accuracy'))}, AUC "
                  f"{_f(ref.get('auc'))}. TSTR's distance below it is what the generators lose."]
    aug = summary.get("augmentation")
    if aug:
        lines += ["", "## Does synthetic data help?", "",
                  f"{aug['fraction']:.0%} of the real training patches alone against the same plus every synthetic "
                  f"patch, on the real test patients ({aug['n_test_patients']}; 95% paired bootstrap interval):", "",
                  "| measure | alone | + synthetic | gain | 95% interval |", "|---|---|---|---|---|"]
        for key in ("accuracy", "balanced_accuracy"):
            g = aug[key]
            lines.append(f"| {key.replace('_', ' ')} | {g['alone']:.3f} | {g['augmented']:.3f} | {g['gain']:+.3f} | "
                         f"[{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}] |")
        for row in AUG_ROWS:
            if row in summary["table"]:
                lines.append(f"\n{row}: accuracy {_f(summary['table'][row].get('accuracy'))}, "
                             f"AUC {_f(summary['table'][row].get('auc'))}")
    lines += ["", "## Audit (domain features, against the holdout patients)", "",
              "| label | FID (floor) | KID (floor) | precision (floor) | recall (floor) | density (floor) | "
              "coverage (floor) | flagged fraction | closer to train |", "|---|---|---|---|---|---|---|---|---|"]
    for label, a in summary["audit"].items():
        f, floor = a["fidelity"], a["real_floor"]
        cells = [f"{_f(f[k], 4 if k == 'kid' else 3)} ({_f(floor[k], 4 if k == 'kid' else 3)})"
                 for k in ("fid", "kid", "precision", "recall", "density", "coverage")]
        lines.append(f"| {LABELS[label]} | " + " | ".join(cells)
                     + f" | {_f(a['flagged_fraction'], 4)} | {_f(a['closer_to_train_share'])} |")
    lines += ["", "The real floor is real GAN-training patches against the same holdout, with as many samples: what "
              "\"as good as real\" scores. Each audit job's own report has the distance histograms and closest pairs.",
              "", "## Steps (child jobs)", ""]
    lines += [f"- {name}: `/v1/jobs/{job_id}`" for name, job_id in summary["children"].items()]
    return "\n".join(lines) + "\n"
