// Generate: label, n, seed, size -> progress -> a grid preview and the zip download.

import { api } from "../api.js";
import {
  ACTIVE, LABELS, authImage, downloadButton, errorSlot, field, fmtNum, fmtTime, h, numberInput, onSubmit, progressBar,
  select, shortId, showError, stateBadge, table,
} from "../dom.js";

function resultView(job) {
  const slot = errorSlot();
  const zip = job.artifacts.find((a) => a.media_type === "application/zip");
  const r = job.result || {};
  const n = Math.min(32, r.n || 32);
  const img = authImage(`/v1/datasets/${r.dataset_id}/examples.png?n=${n}&columns=8`,
    `Preview: ${n} of the ${fmtNum(r.n)} generated ${LABELS[r.label]} patches (seed ${r.seed}, ${r.size} px)`,
    { eager: true, className: "pixelated", zoom: 2 });
  img.dataset.role = "generation-preview";
  return h("div", { class: "generation-result" },
    h("figure", {}, img, h("figcaption", {}, `The first ${n} patches of ${fmtNum(r.n)}, ${r.size} px, seed ${r.seed}, generator ${shortId(r.model_id)}.`)),
    h("div", { class: "actions" },
      zip ? downloadButton(zip.url, zip.name, `Download zip (${fmtNum(r.n)} PNGs)`, slot) : "no zip",
      h("a", { href: `#/datasets/${r.dataset_id}` }, "the synthetic dataset")),
    slot);
}

function watchJob(holder, ctx, jobId) {
  const bar = progressBar(`Progress of generation ${shortId(jobId)}`);
  const state = h("span");
  const out = h("div");
  const slot = errorSlot();
  holder.replaceChildren(h("section", { class: "panel", "aria-labelledby": "gen-current" },
    h("h2", { id: "gen-current" }, `Generation ${shortId(jobId)}`), h("p", {}, state), bar, slot, out));
  let finished = false;
  ctx.every(1500, async () => {
    if (finished) return;
    const job = await api(`/v1/jobs/${jobId}`, { signal: ctx.signal });
    state.replaceChildren(stateBadge(job.state, job.cancel_requested), " ", h("a", { href: `#/jobs/${jobId}` }, "job details"));
    bar.update(job);
    if (!ACTIVE.has(job.state)) {
      finished = true;
      if (job.state === "succeeded") out.replaceChildren(resultView(job));
      else showError(slot, { problem: { title: `Generation ${job.state}`, detail: job.error || "" } });
    }
  });
}

export async function render(root, ctx) {
  const slot = errorSlot();
  const label = select("label", [["1", "IDC+ (1)"], ["0", "IDC- (0)"]], "1");
  const n = numberInput("n", 64, { min: 1, step: 1 });
  const seed = numberInput("seed", 0, { min: 0, step: 1 });
  const size = select("size", [["64", "64 px (the generator's)"], ["50", "50 px (the dataset's)"]], "64");
  const model = select("model_id", [["", "the label's promoted generator"]], "");
  const current = h("div");
  const form = h("form", { class: "panel", id: "generate-form" },
    h("div", { class: "fields" }, field("Label", label), field("How many (n)", n), field("Seed", seed), field("Size", size),
      field("Generator", model)),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Generate")), slot);
  root.append(h("h1", {}, "Generate"), form, current);

  const loadModels = async () => {
    const list = await api(`/v1/models?kind=generator&label=${label.value}&limit=100`, { signal: ctx.signal });
    model.replaceChildren(h("option", { value: "" }, "the label's promoted generator"),
      ...list.data.map((m) => h("option", { value: m.id }, `v${m.version}${m.promoted ? " ★ promoted" : ""}${m.starter ? " · starter" : ""} · ${shortId(m.id)} · ${fmtTime(m.created_at)}`)));
  };
  label.addEventListener("change", () => loadModels().catch((err) => showError(slot, err)));
  await loadModels().catch((err) => showError(slot, err));

  onSubmit(form, slot, async () => {
    const body = { label: Number(label.value), n: Number(n.value), seed: Number(seed.value), size: Number(size.value) };
    if (model.value) body.model_id = model.value;
    const job = await api("/v1/generations", { method: "POST", json: body });
    ctx.go(`#/generate/${job.id}`);
  });
  if (ctx.id) watchJob(current, ctx, ctx.id);

  const recent = await api("/v1/jobs?kind=generate&limit=20", { signal: ctx.signal });
  if (recent.data.length) {
    root.append(h("section", {}, h("h2", {}, "Recent generations"),
      table("Recent generations, newest first", ["job", "state", "label", { label: "n", num: true }, "seed", "size", "created"],
        recent.data.map((j) => h("tr", {},
          h("td", { "data-label": "job" }, h("a", { href: `#/generate/${j.id}` }, shortId(j.id))),
          h("td", { "data-label": "state" }, stateBadge(j.state)),
          h("td", { "data-label": "label" }, LABELS[j.params.label] ?? String(j.params.label)),
          h("td", { class: "num", "data-label": "n" }, fmtNum(j.params.n)),
          h("td", { "data-label": "seed" }, String(j.params.seed)),
          h("td", { "data-label": "size" }, `${j.params.size} px`),
          h("td", { "data-label": "created" }, fmtTime(j.created_at)))), { cards: true })));
  }
}
