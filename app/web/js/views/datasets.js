// Datasets: ingest (upload a zip, or a server folder with an admin key), the list, and one
// dataset's counts per label and per patient (owners only), its edge patches and example patches.

import { api, keyStore } from "../api.js";
import {
  LABELS, authImage, clear, errorSlot, field, fmtNum, fmtTime, h, jsonBlock, onSubmit, select, shortId,
  showError, table,
} from "../dom.js";

const byLabel = (d, label) => d.counts?.by_label?.[String(label)] ?? 0;

/** POST the zip with upload progress (XMLHttpRequest: fetch reports none); resolves {upload_id}. */
function uploadZip(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/uploads");
    const key = keyStore.get();
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.setRequestHeader("Content-Type", "application/zip");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText || "{}"); } catch { body = { detail: xhr.responseText }; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject({ status: xhr.status, problem: { title: `HTTP ${xhr.status}`, ...body } });
    };
    xhr.onerror = () => reject({ problem: { title: "The upload failed", detail: "The API could not be reached." } });
    xhr.send(file);
  });
}

function ingestForms(ctx) {
  const slot = errorSlot();
  const file = h("input", { type: "file", name: "zip", accept: ".zip,application/zip", required: true });
  const name = h("input", { type: "text", name: "name", maxlength: "200" });
  const sent = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const upload = h("form", { class: "panel", id: "ingest-upload" },
    h("h3", {}, "Upload a zip"),
    h("div", { class: "fields" },
      field("Zip of patches", file, "The public IDC layout: <patient>/<0|1>/<pid>_idx5_x<X>_y<Y>_class<0|1>.png"),
      field("Name (optional)", name)),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Upload and ingest"), sent), slot);
  onSubmit(upload, slot, async () => {
    const f = file.files[0];
    if (!f) throw { problem: { title: "Choose a zip first" } };
    sent.hidden = false;
    const { upload_id: uploadId } = await uploadZip(f, (x) => { sent.value = x; });
    const params = { upload_id: uploadId };
    if (name.value.trim()) params.name = name.value.trim();
    await api("/v1/jobs", { method: "POST", json: { kind: "ingest", params } });
    ctx.go("#/jobs");
  });

  const pslot = errorSlot();
  const path = h("input", { type: "text", name: "path", required: true, placeholder: "/datasets/IDC_regular_ps50_idx5" });
  const pname = h("input", { type: "text", name: "name", maxlength: "200" });
  const server = h("form", { class: "panel", id: "ingest-path" },
    h("h3", {}, "Or a folder on the server (admin keys)"),
    h("div", { class: "fields" }, field("Server path", path, "Absolute; must be under HISTOSYNTH_INGEST_ROOTS when keys are required."),
      field("Name (optional)", pname)),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Ingest folder")), pslot);
  onSubmit(server, pslot, async () => {
    const params = { path: path.value.trim() };
    if (pname.value.trim()) params.name = pname.value.trim();
    await api("/v1/jobs", { method: "POST", json: { kind: "ingest", params } });
    ctx.go("#/jobs");
  });
  return h("section", {}, h("h2", {}, "Ingest"), h("div", { class: "two-col" }, upload, server));
}

async function listView(root, ctx) {
  const slot = errorSlot();
  root.append(h("h1", {}, "Datasets"), slot);
  const holder = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  root.append(h("section", {}, h("h2", {}, "Your datasets"), holder), ingestForms(ctx));
  ctx.every(5000, async () => {
    try {
      const list = await api("/v1/datasets?limit=200", { signal: ctx.signal });
      clear(slot);
      if (!list.data.length) {
        holder.replaceChildren(h("p", { class: "empty" }, "No datasets yet: ingest one below."));
        return;
      }
      holder.replaceChildren(table(`${list.count} dataset${list.count === 1 ? "" : "s"}, newest first`,
        ["name", "kind", { label: "patches", num: true }, { label: "IDC-", num: true }, { label: "IDC+", num: true },
          { label: "patients", num: true }, { label: "edge", num: true }, "created", "shared"],
        list.data.map((d) => h("tr", { dataset: { datasetId: d.id } },
          h("td", { "data-label": "name" }, h("a", { href: `#/datasets/${d.id}` }, d.name || shortId(d.id))),
          h("td", { "data-label": "kind" }, d.kind),
          h("td", { class: "num", "data-label": "patches" }, fmtNum(d.n_patches)),
          h("td", { class: "num", "data-label": "IDC-" }, fmtNum(byLabel(d, 0))),
          h("td", { class: "num", "data-label": "IDC+" }, fmtNum(byLabel(d, 1))),
          h("td", { class: "num", "data-label": "patients" }, fmtNum(d.n_patients)),
          h("td", { class: "num", "data-label": "edge" }, fmtNum(d.n_edge_patches)),
          h("td", { "data-label": "created" }, fmtTime(d.created_at)),
          h("td", { "data-label": "shared" }, d.shared ? "shared" : "private"))), { cards: true }));
    } catch (err) {
      if (err.name !== "AbortError") showError(slot, err);
    }
  });
}

/** A seeded grid of a dataset's patches (examples.png), with "other examples" and a label filter. */
export function exampleGrid(dataset, { edge = false, n = 32, caption = "" } = {}) {
  const labelSel = select("label", [["", "both labels"], ["0", "IDC- only"], ["1", "IDC+ only"]], "");
  let seed = 0;
  const imgHolder = h("div");
  const note = h("p", { class: "note", "aria-live": "polite" });
  const show = () => {
    const q = new URLSearchParams({ n: String(n), seed: String(seed) });
    if (edge) q.set("edge", "true");
    if (labelSel.value) q.set("label", labelSel.value);
    const what = `${edge ? "edge patches" : "example patches"}${labelSel.value ? `, ${LABELS[labelSel.value]}` : ""}, draw ${seed + 1}`;
    const img = authImage(`/v1/datasets/${dataset.id}/examples.png?${q}`, `Grid of ${what} from ${dataset.name}`,
                          { eager: true, className: "pixelated", zoom: 2 });
    imgHolder.replaceChildren(h("figure", {}, img, h("figcaption", {}, caption || `Up to ${n} ${what}; each tile ${dataset.patch_size} px.`)));
    note.textContent = `Showing ${what}.`;
  };
  const again = h("button", { type: "button", class: "secondary" }, "Other examples");
  again.addEventListener("click", () => { seed += 1; show(); });
  labelSel.addEventListener("change", () => { seed = 0; show(); });
  show();
  return h("div", {}, h("div", { class: "actions" }, field("Label", labelSel), again), note, imgHolder);
}

async function detailView(root, ctx) {
  const slot = errorSlot();
  const d = await api(`/v1/datasets/${encodeURIComponent(ctx.id)}`, { signal: ctx.signal });
  root.append(h("p", {}, h("a", { href: "#/datasets" }, "← All datasets")), h("h1", {}, `Dataset ${d.name || shortId(d.id)}`), slot);
  const facts = [["id", h("span", { class: "mono" }, d.id)], ["kind", d.kind], ["patches", fmtNum(d.n_patches)],
    ["patch size", `${d.patch_size} px`], ["patients", fmtNum(d.n_patients)], ["edge patches", fmtNum(d.n_edge_patches)],
    ["created", fmtTime(d.created_at)], ["shared", d.shared ? "yes, read-only with every key" : "no"]];
  if (d.job_id) facts.push(["made by", h("a", { href: `#/jobs/${d.job_id}` }, `job ${shortId(d.job_id)}`)]);
  root.append(h("dl", { class: "facts" }, facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));

  const share = h("button", { type: "button", class: "secondary" }, d.shared ? "Stop sharing" : "Share read-only with every key");
  share.addEventListener("click", async () => {
    try {
      const u = await api(`/v1/datasets/${d.id}/share`, { method: "POST", json: { shared: !d.shared } });
      d.shared = u.shared;
      share.textContent = d.shared ? "Stop sharing" : "Share read-only with every key";
      clear(slot);
    } catch (err) { showError(slot, err); }
  });
  root.append(h("div", { class: "actions" }, share));

  const labels = Object.entries(d.counts?.by_label || {}).sort();
  root.append(h("section", {}, h("h2", {}, "Counts per label"),
    table("Patches per label", ["label", { label: "patches", num: true }, { label: "share", num: true }],
      labels.map(([l, c]) => h("tr", {}, h("td", {}, `${LABELS[l] ?? l} (${l})`), h("td", { class: "num" }, fmtNum(c)),
        h("td", { class: "num" }, `${((100 * c) / Math.max(1, d.n_patches)).toFixed(1)}%`))))));

  const perPatient = h("section", {}, h("h2", {}, "Counts per patient"));
  const bp = d.counts?.by_patient;
  if (bp && Object.keys(bp).length) {
    const rows = Object.entries(bp).sort(([a], [b]) => a.localeCompare(b, "en", { numeric: true }));
    perPatient.append(table(`${rows.length} patients (shown to the dataset's owner and admins only)`,
      ["patient", { label: "IDC-", num: true }, { label: "IDC+", num: true }, { label: "total", num: true }],
      rows.map(([p, c]) => h("tr", {}, h("td", { class: "mono" }, p), h("td", { class: "num" }, fmtNum(c["0"] ?? 0)),
        h("td", { class: "num" }, fmtNum(c["1"] ?? 0)), h("td", { class: "num" }, fmtNum((c["0"] ?? 0) + (c["1"] ?? 0)))))));
  } else {
    perPatient.append(h("p", { class: "note" }, d.kind === "synthetic" ? "A synthetic dataset has no patients."
      : "Per-patient counts are shown to the dataset's owner and admins only."));
  }
  root.append(perPatient);

  root.append(h("section", {}, h("h2", {}, "Example patches"), exampleGrid(d)));
  const edge = h("section", {}, h("h2", {}, `Edge patches (${fmtNum(d.n_edge_patches)})`));
  if (d.n_edge_patches > 0) {
    edge.append(h("p", { class: "note" }, "Patches from a tissue edge, narrower than the patch size, padded with white at the top-left (as stored)."),
      exampleGrid(d, { edge: true, n: 16 }));
  } else {
    edge.append(h("p", { class: "note" }, "None in this dataset."));
  }
  root.append(edge);
  if (Object.keys(d.source || {}).length) root.append(h("section", {}, h("h2", {}, "Source"), jsonBlock(d.source, "source")));
}

export async function render(root, ctx) {
  if (ctx.id) return detailView(root, ctx);
  return listView(root, ctx);
}
