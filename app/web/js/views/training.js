// Training: start an MSG-GAN training; watch its sample grids at every scale through the steps
// (a step slider per label) and its loss curves.

import { allPages, api } from "../api.js";
import {
  ACTIVE, LABELS, artifactView, errorSlot, field, fmtNum, fmtTime, h, numberInput, onSubmit, parseJsonObject,
  newId, progressBar, retarget, select, shortId, showError, stateBadge, table,
} from "../dom.js";

const PRESETS = ["cpu-small", "cpu-small-he", "cpu-tissue", "cpu-medium", "paper", "gpu-large"];
const LOSS_KEYS = ["d_loss", "g_loss", "gp", "wasserstein"];

export function labelsOf(params) {
  const l = params?.label;
  if (l === "both") return [0, 1];
  if (l === "IDC+" || l === 1 || l === "1") return [1];
  return [0];
}

/** <option>s of the caller's datasets of `kind` (newest first). */
export async function datasetOptions(kind, signal) {
  const q = kind ? `?kind=${kind}&limit=200` : "?limit=200";
  const list = await api(`/v1/datasets${q}`, { signal });
  return list.data.map((d) => [d.id, `${d.name || shortId(d.id)} · ${fmtNum(d.n_patches)} patches (${shortId(d.id)})`]);
}

async function startForm(ctx) {
  const slot = errorSlot();
  const options = await datasetOptions("real", ctx.signal);
  const dataset = select("dataset_id", options.length ? options : [["", "no real dataset yet: ingest one"]], options[0]?.[0]);
  const label = select("label", [["1", "IDC+ (1)"], ["0", "IDC- (0)"], ["both", "both (one generator each)"]], "1");
  const preset = select("preset", PRESETS.map((p) => [p, p]), "cpu-small");
  const steps = numberInput("steps", 2000, { min: 1, step: 1 });
  const sampleEvery = numberInput("sample_every", 500, { min: 0, step: 1 });
  const checkpointEvery = numberInput("checkpoint_every", 500, { min: 0, step: 1 });
  const holdout = numberInput("holdout_fraction", 0, { min: 0, max: 0.99, step: 0.01 });
  const selectEvery = numberInput("select_every", 0, { min: 0, step: 1 });
  const overrides = h("textarea", { name: "overrides", rows: 2, spellcheck: "false", placeholder: '{"width": 0.03125, "batch_size": 8}' });
  const form = h("form", { class: "panel", id: "train-form" },
    h("div", { class: "fields" },
      field("Dataset", dataset), field("Label", label), field("Preset", preset, "cpu-tissue is the best on a CPU (6,000 steps, select every 125 from 2,000)"),
      field("Steps", steps), field("Sample grid every", sampleEvery, "steps; 0 or at least 10"),
      field("Checkpoint every", checkpointEvery, "steps; 0 or at least 10"),
      field("Holdout fraction", holdout, "patients kept out, for the audit"),
      field("Keep the best snapshot, scored every", selectEvery, "steps, in the promoted classifier's features; 0 keeps the last"),
      field("Overrides (JSON, optional)", overrides, "GanConfig fields within their bounds", { wide: true })),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Start training")), slot);
  onSubmit(form, slot, async () => {
    const params = {
      dataset_id: dataset.value, label: label.value === "both" ? "both" : Number(label.value), preset: preset.value,
      steps: Number(steps.value), sample_every: Number(sampleEvery.value), checkpoint_every: Number(checkpointEvery.value),
      holdout_fraction: Number(holdout.value), overrides: parseJsonObject(overrides.value, "Overrides"),
    };
    if (Number(selectEvery.value)) params.select_every = Number(selectEvery.value);
    const job = await api("/v1/jobs", { method: "POST", json: { kind: "train_gan", params } });
    ctx.go(`#/training/${job.id}`);
  });
  return h("details", { class: "start", open: !ctx.id }, h("summary", {}, "Start a training"), form);
}

const stepOf = (name) => Number(/step(\d+)\.png$/.exec(name)?.[1] ?? NaN);

/** One label's panel: the sample grid at the chosen step, the loss curves. */
function labelPanel(job, label) {
  const name = `label${label}`;
  const depth = job.params?.overrides?.depth ?? 5;
  const scales = Array.from({ length: depth }, (_, i) => `${4 * 2 ** i} px`);
  const grids = []; // [{step, artifact}] by step
  const slider = h("input", { type: "range", min: 0, max: 0, step: 1, value: 0, disabled: true, id: newId("step") });
  const out = h("output", { for: slider.id, "aria-live": "off" }, "no grid yet");
  const follow = h("input", { type: "checkbox", checked: true });
  const img = h("img", { alt: `No sample grid yet for ${LABELS[label]}`, class: "pixelated", dataset: { role: "sample-grid", label: String(label) } });
  const holder = h("div", { class: "grid-view", hidden: true },
    h("div", { class: "scale-labels", "aria-hidden": "true" }, scales.map((s) => h("span", {}, s))), img);
  const waiting = h("p", { class: "note" }, "Waiting for the first sample grid…");
  const loss = h("div");
  const sliderField = field("Step", slider);
  const panel = h("section", { class: "panel label-panel", dataset: { label: String(label) } },
    h("h3", {}, `${LABELS[label]} generator (label ${label})`),
    h("div", { class: "slider" }, sliderField, out, h("label", {}, follow, " follow the newest step")),
    waiting,
    h("figure", {}, holder, h("figcaption", {}, `Rows: the generator's outputs at ${scales.join(", ")} (each shown at the largest size) for the same fixed latents.`)),
    h("h4", {}, "Losses"), loss);

  const show = (i) => {
    const g = grids[i];
    if (!g) return;
    const alt = `Sample grid of the ${LABELS[label]} generator at step ${g.step}: rows ${scales.join(", ")}`;
    retarget(img, g.artifact.url, alt);
    const text = `step ${g.step} (${i + 1} of ${grids.length})`;
    out.textContent = text;
    slider.setAttribute("aria-valuetext", text);
    holder.hidden = false;
    waiting.hidden = true;
    // the neighbours, so the slider moves without waiting
    for (const j of [i - 1, i + 1]) if (grids[j]) retarget(new Image(), grids[j].artifact.url, "");
  };
  slider.addEventListener("input", () => {
    follow.checked = Number(slider.value) === grids.length - 1;
    show(Number(slider.value));
  });
  follow.addEventListener("change", () => { if (follow.checked && grids.length) { slider.value = String(grids.length - 1); show(grids.length - 1); } });

  panel.addGrids = (artifacts) => {
    const bySteps = new Map(grids.map((g) => [g.step, g]));
    for (const a of artifacts) {
      const step = stepOf(a.name);
      if (Number.isFinite(step)) bySteps.set(step, { step, artifact: a });
    }
    const before = grids.length;
    grids.splice(0, grids.length, ...[...bySteps.values()].sort((a, b) => a.step - b.step));
    if (!grids.length) return;
    slider.max = String(grids.length - 1);
    slider.disabled = grids.length < 2;
    if (follow.checked || before === 0) {
      slider.value = String(grids.length - 1);
      show(grids.length - 1);
    } else {
      show(Number(slider.value));
    }
  };
  panel.updateLoss = (j, curves) => {
    if (curves) {
      if (!loss.querySelector(`[data-artifact="${curves.id}"]`)) loss.replaceChildren(artifactView(curves, { eager: true }));
      return;
    }
    const m = j.metrics?.[name];
    if (!m) { loss.replaceChildren(h("p", { class: "muted" }, "No losses yet.")); return; }
    loss.replaceChildren(h("p", { class: "note" }, "The loss curves are drawn when the training ends; the latest values:"),
      table(`Latest losses, ${LABELS[label]}`, [{ label: "step", num: true }, ...LOSS_KEYS.map((k) => ({ label: k, num: true }))],
        [h("tr", {}, h("td", { class: "num" }, fmtNum(m.step)), LOSS_KEYS.map((k) => h("td", { class: "num" }, fmtNum(m[k], 4))))]));
  };
  panel.grids = grids;
  return panel;
}

async function watch(holder, ctx, jobId) {
  const slot = errorSlot();
  let job = await api(`/v1/jobs/${jobId}`, { signal: ctx.signal });
  const bar = progressBar(`Progress of training ${shortId(job.id)}`);
  const state = h("span");
  const head = h("div", { class: "panel" },
    h("p", {}, h("a", { href: `#/jobs/${job.id}` }, `train_gan job ${shortId(job.id)}`), " · ", state,
      ` · ${job.params.preset}, ${fmtNum(job.params.steps)} steps, started ${fmtTime(job.started_at || job.created_at)}`),
    bar, slot);
  const panels = labelsOf(job.params).map((l) => labelPanel(job, l));
  holder.replaceChildren(head, h("div", { class: "two-col" }, panels));
  const counts = new Map(); // label -> artifacts already read (oldest-first paging: new ones come after)
  let finished = false;
  ctx.every(2500, async () => {
    if (finished) return;
    job = await api(`/v1/jobs/${jobId}`, { signal: ctx.signal });
    state.replaceChildren(stateBadge(job.state, job.cancel_requested));
    bar.update(job);
    finished = !ACTIVE.has(job.state);
    for (const panel of panels) {
      const label = Number(panel.dataset.label);
      const prefix = `samples/label${label}/`;
      const seen = counts.get(label) || 0;
      const page = await api(`/v1/jobs/${jobId}/artifacts?name_prefix=${encodeURIComponent(prefix)}&limit=500&offset=${seen}`,
                             { signal: ctx.signal });
      let rows = page.data;
      counts.set(label, seen + rows.length);
      if (page.count > seen + rows.length) { // more than a page arrived at once: read them all
        rows = await allPages(`/v1/jobs/${jobId}/artifacts`, { params: { name_prefix: prefix }, max: 2000 });
        counts.set(label, rows.length);
      }
      if (rows.length) panel.addGrids(rows);
      const curves = job.artifacts.find((a) => a.name === `loss_curves_label${label}.png`);
      panel.updateLoss(job, curves);
    }
    if (job.error) showError(slot, { problem: { title: `Training ${job.state}`, detail: job.error } });
  });
}

export async function render(root, ctx) {
  const slot = errorSlot();
  root.append(h("h1", {}, "Training"), slot, await startForm(ctx));
  const jobs = await api("/v1/jobs?kind=train_gan&limit=100", { signal: ctx.signal });
  const section = h("section", {}, h("h2", {}, "Sample grids by step"));
  root.append(section);
  if (!jobs.data.length && !ctx.id) {
    section.append(h("p", { class: "empty" }, "No training yet: start one above."));
    return;
  }
  const chosen = ctx.id || jobs.data[0].id;
  const options = jobs.data.map((j) => [j.id, `${shortId(j.id)} · ${j.state} · label ${j.params.label} · ${fmtNum(j.params.steps)} steps · ${fmtTime(j.created_at)}`]);
  if (!options.some(([id]) => id === chosen)) options.unshift([chosen, shortId(chosen)]);
  const pick = select("job", options, chosen);
  pick.addEventListener("change", () => ctx.go(`#/training/${pick.value}`));
  const holder = h("div");
  section.append(h("div", { class: "actions" }, field("Training job", pick)), holder);
  try {
    await watch(holder, ctx, chosen);
  } catch (err) {
    if (err.name !== "AbortError") showError(slot, err);
  }
}
