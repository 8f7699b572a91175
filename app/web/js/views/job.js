// A job's detail: state, progress and times, params, result, metrics, checkpoints, an
// experiment's steps, and every artifact rendered (PNGs inline, Markdown rendered, JSON pretty).

import { allPages, api } from "../api.js";
import {
  ACTIVE, artifactView, clear, errorSlot, fmtBytes, fmtDuration, fmtTime, h, jobTimes, jsonBlock, progressBar,
  shortId, showError, stateBadge, table,
} from "../dom.js";
import { cancelButton } from "./jobs.js";

const isSample = (a) => a.name.startsWith("samples/");

export async function render(root, ctx) {
  const slot = errorSlot();
  let job = await api(`/v1/jobs/${encodeURIComponent(ctx.id)}`, { signal: ctx.signal });
  const title = h("h1", {}, `${job.kind} job ${shortId(job.id)}`);
  const bar = progressBar(`Progress of ${job.kind} job ${shortId(job.id)}`);
  const facts = h("dl", { class: "facts" });
  const actions = h("div", { class: "actions" });
  const errorBox = h("div");
  const children = h("section", { hidden: true }, h("h2", {}, "Steps"));
  const childTable = h("div");
  children.append(childTable);
  const resultBlock = h("div");
  const metricsBlock = h("div");
  const checkpoints = h("section", {}, h("h2", {}, "Checkpoints"));
  const cpBody = h("div");
  checkpoints.append(cpBody);
  const artifactsSec = h("section", {}, h("h2", {}, "Artifacts"));
  const artifactNote = h("p", { class: "note", "aria-live": "polite" });
  const artifactGrid = h("div", { class: "artifacts gallery" });
  const samplesCount = h("span");
  const samplesGrid = h("div", { class: "gallery" });
  const samples = h("details", { class: "samples", hidden: true }, h("summary", {}, "Sample grids ", samplesCount), samplesGrid);
  const allButton = h("button", { type: "button", class: "secondary", hidden: true }, "Show every artifact");
  artifactsSec.append(artifactNote, artifactGrid, samples, h("div", { class: "actions" }, allButton));

  const shown = new Map();
  const addArtifact = (a) => {
    if (shown.has(a.id)) return;
    const view = artifactView(a);
    shown.set(a.id, view);
    (isSample(a) ? samplesGrid : artifactGrid).append(view);
  };
  allButton.addEventListener("click", async () => {
    allButton.disabled = true;
    try {
      (await allPages(job.artifacts_url, { max: 2000 })).forEach(addArtifact);
      updateArtifacts();
    } catch (err) { showError(slot, err); }
    allButton.disabled = false;
  });

  root.append(h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")), title, slot, facts, actions, errorBox, children,
    h("section", {}, h("h2", {}, "Params"), jsonBlock(job.params, "params")),
    h("section", {}, h("h2", {}, "Result"), resultBlock),
    h("section", {}, h("h2", {}, "Metrics"), metricsBlock),
    checkpoints, artifactsSec);
  if (job.kind === "train_gan") {
    actions.append(h("a", { href: `#/training/${job.id}` }, "Sample grids by step and loss curves (Training)"));
  }
  if (["evaluate", "experiment", "audit"].includes(job.kind)) {
    actions.append(h("a", { href: `#/results/${job.id}` }, "Tables and figures (Results)"));
  }

  let cancel = null;
  function updateArtifacts() {
    const nSamples = [...shown.values()].filter((v) => v.dataset.name.startsWith("samples/")).length;
    samples.hidden = nSamples === 0;
    samplesCount.textContent = `(${nSamples}; open to load them)`;
    artifactNote.textContent = job.artifact_count === 0 ? "No artifacts yet."
      : `${job.artifact_count} artifact${job.artifact_count === 1 ? "" : "s"}${shown.size < job.artifact_count ? `, the newest ${shown.size} shown` : ""}.`;
    allButton.hidden = shown.size >= job.artifact_count;
  }

  function update(j) {
    job = j;
    const t = jobTimes(j);
    bar.update(j);
    const rows = [
      ["id", h("span", { class: "mono" }, j.id)],
      ["state", stateBadge(j.state, j.cancel_requested)],
      ["progress", bar],
      ["attempts", String(j.attempts)],
      ["created", fmtTime(j.created_at)],
      ["started", fmtTime(j.started_at)],
      ["finished", fmtTime(j.finished_at)],
      ["elapsed", t.elapsed !== null ? fmtDuration(t.elapsed) : "—"],
      ["remaining", j.state === "running" ? (t.remaining !== null ? `~${fmtDuration(t.remaining)}` : "estimating") : (ACTIVE.has(j.state) ? "—" : "0 s")],
    ];
    if (j.parent_id) rows.push(["part of", h("a", { href: `#/jobs/${j.parent_id}` }, `job ${shortId(j.parent_id)}`)]);
    facts.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    clear(errorBox);
    if (j.error) errorBox.append(h("div", { class: "problem" }, h("p", { class: "problem-title" }, `Job ${j.state}`), h("p", {}, j.error)));
    const cancellable = ACTIVE.has(j.state) && !j.cancel_requested;
    if (cancellable && !cancel) { cancel = cancelButton(j, slot, update); actions.prepend(cancel); }
    if (!cancellable && cancel) { cancel.remove(); cancel = null; }
    children.hidden = j.children.length === 0;
    if (j.children.length) {
      childTable.replaceChildren(table("Steps of this job, in order", ["step", "kind", "state", "progress"],
        j.children.map((c, i) => {
          const pb = progressBar(`Progress of step ${i + 1}, ${c.kind}`);
          pb.update(c);
          return h("tr", {}, h("td", { "data-label": "step" }, h("a", { href: `#/jobs/${c.id}` }, `${i + 1}. job ${shortId(c.id)}`)),
            h("td", { "data-label": "kind" }, c.kind), h("td", { "data-label": "state" }, stateBadge(c.state)),
            h("td", { "data-label": "progress" }, pb));
        }), { cards: true }));
    }
    resultBlock.replaceChildren(Object.keys(j.result || {}).length ? jsonBlock(j.result, "result") : h("p", { class: "muted" }, "None yet."));
    metricsBlock.replaceChildren(Object.keys(j.metrics || {}).length ? jsonBlock(j.metrics, "metrics") : h("p", { class: "muted" }, "None yet."));
    if (j.checkpoints.length) {
      cpBody.replaceChildren(table(`Checkpoints (${j.checkpoint_count}${j.checkpoint_count > j.checkpoints.length ? `, newest ${j.checkpoints.length} shown` : ""})`,
        [{ label: "step", num: true }, "name", { label: "size", num: true }, "written"],
        j.checkpoints.map((c) => h("tr", {}, h("td", { class: "num" }, String(c.step)), h("td", { class: "mono" }, c.name),
          h("td", { class: "num" }, fmtBytes(c.size_bytes)), h("td", {}, fmtTime(c.created_at))))));
    } else {
      cpBody.replaceChildren(h("p", { class: "muted" }, "None."));
    }
    j.artifacts.forEach(addArtifact);
    updateArtifacts();
  }
  update(job);

  let finished = !ACTIVE.has(job.state);
  ctx.every(2000, async () => {
    if (finished) return;
    const j = await api(`/v1/jobs/${job.id}`, { signal: ctx.signal });
    finished = !ACTIVE.has(j.state);
    update(j);
  });
}
