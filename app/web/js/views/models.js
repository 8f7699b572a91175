// Models: generator and classifier versions with their metrics, promotion (admin keys), and a
// form that trains a classifier.

import { api } from "../api.js";
import {
  LABELS, errorSlot, field, fmtNum, fmtTime, h, jsonBlock, numberInput, onSubmit, select, shortId, showError, table,
} from "../dom.js";
import { datasetOptions } from "./training.js";

function headline(m) {
  const x = m.metrics || {};
  if (m.kind === "classifier") {
    const v = x.val || {};
    return `val accuracy ${fmtNum(v.accuracy)}, AUC ${fmtNum(v.auc)}, F1 ${fmtNum(v.f1)} (${fmtNum(x.n_train)} train / ${fmtNum(x.n_val)} val)`;
  }
  const parts = [];
  if (x.step !== undefined) parts.push(`${fmtNum(x.step)} steps`);
  if (x.audit?.fidelity?.fid !== undefined) parts.push(`FID ${fmtNum(x.audit.fidelity.fid, 1)} (real floor ${fmtNum(x.audit.real_floor?.fid, 1)})`);
  if (x.audit?.flagged_fraction !== undefined) parts.push(`flagged ${fmtNum(x.audit.flagged_fraction, 4)}`);
  return parts.join(", ") || "—";
}

function trainForm(ctx, options) {
  const slot = errorSlot();
  const dataset = select("dataset_id", options.length ? options : [["", "no real dataset yet"]], options[0]?.[0]);
  const weights = select("weights", [["imagenet", "imagenet (torchvision; needs the cached file offline)"], ["none", "none (random init)"]], "imagenet");
  const mode = select("mode", [["frozen", "frozen (the paper)"], ["finetune", "finetune"]], "frozen");
  const epochs = numberInput("epochs", 150, { min: 1, step: 1 });
  const size = numberInput("input_size", 224, { min: 16, step: 1 });
  const maxPer = h("input", { type: "number", name: "max_per_class", min: 1, step: 1, inputmode: "numeric" });
  const form = h("form", { class: "panel", id: "classifier-form" },
    h("div", { class: "fields" }, field("Dataset", dataset), field("Weights", weights), field("Mode", mode),
      field("Epochs", epochs), field("Input size", size, "px; the paper: 224"),
      field("Max per class (optional)", maxPer, "subsample each class, for CPU-scale runs")),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Train classifier")), slot);
  onSubmit(form, slot, async () => {
    const params = { dataset_id: dataset.value, weights: weights.value, mode: mode.value, epochs: Number(epochs.value),
                     input_size: Number(size.value) };
    if (maxPer.value) params.max_per_class = Number(maxPer.value);
    const job = await api("/v1/jobs", { method: "POST", json: { kind: "train_classifier", params } });
    ctx.go(`#/jobs/${job.id}`);
  });
  return h("details", {}, h("summary", {}, "Train a ResNet18 classifier"), form);
}

export async function render(root, ctx) {
  const slot = errorSlot();
  const kind = select("kind", [["", "all"], ["generator", "generators"], ["classifier", "classifiers"]], "");
  const holder = h("div");
  root.append(h("h1", {}, "Models"),
    h("p", { class: "note" }, "A label's first generator is promoted at once; a classifier answers /v1/predictions only once an admin promotes it."),
    slot, h("div", { class: "actions" }, field("Show", kind)), holder);
  root.append(trainForm(ctx, await datasetOptions("real", ctx.signal)));

  async function load() {
    const q = new URLSearchParams({ limit: "200" });
    if (kind.value) q.set("kind", kind.value);
    const list = await api(`/v1/models?${q}`, { signal: ctx.signal });
    if (!list.data.length) { holder.replaceChildren(h("p", { class: "empty" }, "No models yet: train a generator (Training) or a classifier (below).")); return; }
    holder.replaceChildren(table(`${list.count} model version${list.count === 1 ? "" : "s"}`,
      ["kind", "label", { label: "version", num: true }, "promoted", "metrics", "made by", "created", "actions"],
      list.data.map((m) => {
        const actions = h("td", { "data-label": "actions" });
        if (!m.promoted) {
          const btn = h("button", { type: "button", "aria-label": `Promote ${m.kind} version ${m.version}${m.label === null ? "" : ` (${LABELS[m.label]})`}` }, "Promote");
          btn.addEventListener("click", async () => {
            btn.disabled = true;
            try {
              await api(`/v1/models/${m.id}/promote`, { method: "POST" });
              await load();
              holder.querySelector("button")?.focus();
            } catch (err) {
              showError(slot, err);
              btn.disabled = false;
            }
          });
          actions.append(btn);
        }
        return h("tr", { dataset: { modelId: m.id, kind: m.kind, promoted: String(m.promoted) } },
          h("td", { "data-label": "kind" }, m.kind, m.starter ? h("span", { class: "note" }, " (starter: shipped, not trained here)") : null),
          h("td", { "data-label": "label" }, m.label === null ? "—" : `${LABELS[m.label]} (${m.label})`),
          h("td", { class: "num", "data-label": "version" }, `v${m.version}`),
          h("td", { "data-label": "promoted" }, m.promoted ? "★ promoted" : "no"),
          h("td", { "data-label": "metrics" }, headline(m),
            h("details", {}, h("summary", {}, "all metrics and config"), jsonBlock({ metrics: m.metrics, config: m.config }, `metrics of ${m.kind} v${m.version}`))),
          h("td", { "data-label": "made by" }, m.job_id ? h("a", { href: `#/jobs/${m.job_id}` }, `job ${shortId(m.job_id)}`) : "—"),
          h("td", { "data-label": "created" }, fmtTime(m.created_at)),
          actions);
      }), { cards: true }));
  }
  kind.addEventListener("change", () => load().catch((err) => showError(slot, err)));
  await load();
}
