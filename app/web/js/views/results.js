// Results: the four-way table beside the paper's Table 3, confusion matrices, ROC curves and
// the audit's figures, for an evaluate, experiment or audit job; and forms that start an evaluation
// or an audit.

import { allPages, api } from "../api.js";
import {
  LABELS, artifactView, errorSlot, field, fmtNum, fmtTime, h, numberInput, onSubmit, select, shortId, showError, table,
} from "../dom.js";
import { PAPER_TABLE3, ROW_TITLES } from "../paper.js";
import { datasetOptions } from "./training.js";

const METRICS = ["accuracy", "precision", "recall", "f1"];
const NAMES = { accuracy: "accuracy", precision: "precision", recall: "recall", f1: "F1", auc: "AUC" };

/** Ours beside the paper: one row per protocol row, "ours (paper)" cells with the difference. */
export function table3(tab) {
  const rows = Object.keys(ROW_TITLES).filter((r) => tab[r]);
  const head = ["row", "train / test"];
  for (const m of METRICS) head.push({ label: `${NAMES[m]} ours`, num: true }, { label: `${NAMES[m]} paper`, num: true });
  head.push({ label: "AUC ours", num: true });
  return table("Four-way protocol beside the paper's Table 3 (the paper: patch split, no AUC)", head,
    rows.map((r) => {
      const ours = tab[r] || {};
      const paper = PAPER_TABLE3[r];
      const cells = [h("th", { scope: "row" }, r), h("td", {}, ROW_TITLES[r])];
      for (const m of METRICS) {
        const o = ours[m];
        const p = paper?.[m];
        let mark = "";
        if (typeof o === "number" && typeof p === "number") mark = o > p + 0.005 ? "better" : o < p - 0.005 ? "worse" : "";
        cells.push(h("td", { class: `num ${mark}`, title: mark ? `${mark} than the paper` : "" }, fmtNum(o),
          mark ? h("span", { class: "sr-only" }, ` (${mark} than the paper)`) : null));
        cells.push(h("td", { class: "num paper" }, p === undefined ? "—" : p.toFixed(2)));
      }
      cells.push(h("td", { class: "num" }, fmtNum(ours.auc)));
      return h("tr", { dataset: { row: r } }, cells);
    }), { className: "table3" });
}

function augmentation(aug) {
  if (!aug) return null;
  const rows = ["accuracy", "balanced_accuracy"].filter((k) => aug[k]).map((k) => {
    const g = aug[k];
    return h("tr", {}, h("th", { scope: "row" }, k.replace("_", " ")), h("td", { class: "num" }, fmtNum(g.alone)),
      h("td", { class: "num" }, fmtNum(g.augmented)), h("td", { class: "num" }, `${g.gain >= 0 ? "+" : ""}${fmtNum(g.gain)}`),
      h("td", { class: "num" }, g.ci95 ? `[${fmtNum(g.ci95[0])}, ${fmtNum(g.ci95[1])}]` : "—"));
  });
  return h("section", {}, h("h2", {}, "Does synthetic data help?"),
    h("p", { class: "note" }, `${Math.round((aug.fraction || 0) * 100)}% of the real training patches alone against the same plus every synthetic patch, on ${fmtNum(aug.n_test_patients)} real test patients (95% paired bootstrap interval).`),
    table("Augmentation gain", ["measure", { label: "alone", num: true }, { label: "+ synthetic", num: true }, { label: "gain", num: true }, { label: "95% interval", num: true }], rows));
}

function figures(title, artifacts, test, level = "h2") {
  const picked = artifacts.filter((a) => test(a.name));
  if (!picked.length) return null;
  return h("section", {}, h(level, {}, title), h("div", { class: "gallery" }, picked.map((a) => artifactView(a))));
}

function reportOf(artifacts, name, title) {
  const a = artifacts.find((x) => x.name === name);
  return a ? h("details", { class: "report" }, h("summary", {}, title), artifactView(a)) : null;
}

async function artifactsOf(jobId, signal) {
  return allPages(`/v1/jobs/${jobId}/artifacts`, { max: 500, params: {} }).catch((err) => {
    if (signal.aborted) return [];
    throw err;
  });
}

function auditSummary(label, s) {
  const keys = ["fid", "kid", "precision", "recall", "density", "coverage"];
  const f = s.fidelity || {};
  const floor = s.real_floor || {};
  return h("div", {},
    table(`Audit${label === null ? "" : `, ${LABELS[label]}`}: synthetic against held-out real patients, beside the real floor`,
      ["measure", { label: "synthetic", num: true }, { label: "real floor", num: true }],
      keys.map((k) => h("tr", {}, h("th", { scope: "row" }, k.toUpperCase() === "FID" || k === "kid" ? k.toUpperCase() : k),
        h("td", { class: "num" }, fmtNum(f[k], k === "kid" ? 4 : 3)), h("td", { class: "num" }, fmtNum(floor[k], k === "kid" ? 4 : 3))))),
    h("p", {}, `Memorization: ${fmtNum(s.flagged_fraction, 4)} of the synthetic patches flagged as closer to a training patch than the holdout's 1st percentile`
      + (s.binomial_p_value !== undefined ? ` (binomial p = ${fmtNum(s.binomial_p_value, 3)})` : "")
      + `; ${fmtNum(s.closer_to_train_share)} closer to training than to holdout patches (0.5 without copying).`));
}

async function showEvaluate(out, job, signal) {
  const arts = await artifactsOf(job.id, signal);
  out.append(h("h2", {}, "Four-way protocol"), table3(job.result.table || {}), augmentation(job.result.augmentation),
    figures("Confusion matrices (percent of the test set)", arts, (n) => n.startsWith("confusion_")),
    figures("ROC curves", arts, (n) => n.startsWith("roc_")),
    reportOf(arts, "report.md", "The full report (Markdown)"));
}

async function showAudit(out, job, signal, label = null) {
  const arts = await artifactsOf(job.id, signal);
  out.append(h("h2", {}, `Audit${label === null ? "" : ` of the ${LABELS[label]} generator`} (job ${shortId(job.id)})`),
    auditSummary(label, job.result.summary || {}),
    figures("Audit figures", arts, (n) => n.endsWith(".png"), "h3"),
    reportOf(arts, "audit.md", "The audit report (Markdown)"));
}

async function showExperiment(out, job, signal) {
  const r = job.result || {};
  const arts = await artifactsOf(job.id, signal);
  out.append(h("h2", {}, "Four-way protocol"), table3(r.table || {}), augmentation(r.augmentation));
  const kids = r.children || {};
  if (kids.evaluate) {
    const evArts = await artifactsOf(kids.evaluate, signal);
    out.append(figures("Confusion matrices (percent of the test set)", evArts, (n) => n.startsWith("confusion_")),
      figures("ROC curves", evArts, (n) => n.startsWith("roc_")));
  }
  for (const label of [0, 1]) {
    const id = kids[`audit_${label}`];
    if (id) await showAudit(out, await api(`/v1/jobs/${id}`, { signal }), signal, label);
  }
  out.append(reportOf(arts, "report.md", "The experiment's report (Markdown)"));
}

async function evaluateForm(ctx) {
  const slot = errorSlot();
  const real = await datasetOptions("real", ctx.signal);
  const synth = await datasetOptions("synthetic", ctx.signal);
  const realSel = select("real_dataset_id", real.length ? real : [["", "no real dataset yet"]], real[0]?.[0]);
  const boxes = synth.map(([id, text]) => h("label", {}, h("input", { type: "checkbox", name: "synthetic", value: id }), ` ${text}`));
  const weights = select("weights", [["imagenet", "imagenet"], ["none", "none"]], "imagenet");
  const mode = select("mode", [["frozen", "frozen (the paper)"], ["finetune", "finetune"]], "frozen");
  const epochs = numberInput("epochs", 150, { min: 1, step: 1 });
  const size = numberInput("input_size", 224, { min: 16, step: 1 });
  const split = select("split_by", [["patient", "patient (no patient on both sides)"], ["patch", "patch (the paper)"]], "patient");
  const augment = numberInput("augment_fraction", 0.1, { min: 0, max: 0.99, step: 0.01 });
  const bootstrap = numberInput("bootstrap", 1000, { min: 10, step: 1 });
  const form = h("form", { class: "panel", id: "evaluate-form" },
    h("div", { class: "fields" }, field("Real dataset", realSel),
      h("fieldset", { class: "field wide" }, h("legend", {}, "Synthetic datasets (both labels)"),
        boxes.length ? h("div", { class: "checks" }, boxes) : h("p", { class: "muted" }, "None yet: generate IDC- and IDC+ patches.")),
      field("Weights", weights), field("Mode", mode), field("Epochs", epochs), field("Input size", size),
      field("Real split by", split), field("Augmentation share", augment, "0: no augmentation rows"), field("Bootstrap resamples", bootstrap)),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Evaluate")), slot);
  onSubmit(form, slot, async () => {
    const ids = boxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
    const params = { real_dataset_id: realSel.value, synthetic_dataset_ids: ids, weights: weights.value, mode: mode.value,
                     epochs: Number(epochs.value), input_size: Number(size.value), split_by: split.value,
                     augment_fraction: Number(augment.value), bootstrap: Number(bootstrap.value) };
    const job = await api("/v1/jobs", { method: "POST", json: { kind: "evaluate", params } });
    ctx.go(`#/jobs/${job.id}`);
  });
  return h("details", {}, h("summary", {}, "Start an evaluation (the four-way protocol)"), form);
}

async function auditForm(ctx) {
  const slot = errorSlot();
  const synth = await datasetOptions("synthetic", ctx.signal);
  const dataset = select("synthetic_dataset_id", synth.length ? synth : [["", "no synthetic dataset yet: generate one"]], synth[0]?.[0]);
  const features = select("features", [["domain", "domain (the promoted classifier's ResNet18 features)"],
                                       ["inception", "inception (needs the weights file on the server)"]], "domain");
  const maxSamples = numberInput("max_samples", 10000, { min: 10, max: 200000, step: 1 });
  const seed = numberInput("seed", 0, { min: 0, step: 1 });
  const form = h("form", { class: "panel", id: "audit-form" },
    h("p", { class: "note" }, "Fidelity (FID, KID, precision, recall, density, coverage) and memorization of a synthetic set, "
      + "against the real patients its generator never saw, beside the same numbers for real patches (the floor)."),
    h("div", { class: "fields" }, field("Synthetic dataset", dataset), field("Features", features),
      field("Samples at most", maxSamples, "per side; FID is biased below ~10,000"), field("Seed", seed)),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Audit")), slot);
  onSubmit(form, slot, async () => {
    const params = { synthetic_dataset_id: dataset.value, features: features.value, max_samples: Number(maxSamples.value),
                     seed: Number(seed.value) };
    const job = await api("/v1/jobs", { method: "POST", json: { kind: "audit", params } });
    ctx.go(`#/jobs/${job.id}`);
  });
  return h("details", {}, h("summary", {}, "Start an audit (fidelity and memorization of a synthetic set)"), form);
}

export async function render(root, ctx) {
  const slot = errorSlot();
  root.append(h("h1", {}, "Results"), slot);
  const lists = await Promise.all(["evaluate", "experiment", "audit"].map((k) =>
    api(`/v1/jobs?kind=${k}&state=succeeded&limit=50`, { signal: ctx.signal })));
  const jobs = lists.flatMap((l) => l.data).sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
  const out = h("div", { class: "results" });
  if (!jobs.length && !ctx.id) {
    out.append(h("p", { class: "empty" }, "No finished evaluation, experiment or audit yet. Start an evaluation below, or the whole pipeline from Experiment."));
  } else {
    const chosen = ctx.id || jobs[0].id;
    const options = jobs.map((j) => [j.id, `${j.kind} ${shortId(j.id)} · ${fmtTime(j.finished_at)}`]);
    if (!options.some(([id]) => id === chosen)) options.unshift([chosen, shortId(chosen)]);
    const pick = select("job", options, chosen);
    pick.addEventListener("change", () => ctx.go(`#/results/${pick.value}`));
    root.append(h("div", { class: "actions" }, field("Results of", pick)));
    try {
      const job = await api(`/v1/jobs/${chosen}`, { signal: ctx.signal });
      out.append(h("p", { class: "note" }, h("a", { href: `#/jobs/${job.id}` }, `${job.kind} job ${shortId(job.id)}`),
        `, finished ${fmtTime(job.finished_at)}.`));
      if (job.kind === "evaluate") await showEvaluate(out, job, ctx.signal);
      else if (job.kind === "experiment") await showExperiment(out, job, ctx.signal);
      else if (job.kind === "audit") await showAudit(out, job, ctx.signal);
      else out.append(h("p", {}, `A ${job.kind} job has no results table; see its details.`));
    } catch (err) {
      if (err.name !== "AbortError") showError(slot, err);
    }
  }
  root.append(out, await evaluateForm(ctx), await auditForm(ctx));
}
