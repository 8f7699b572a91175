// Jobs: a live list (progress bars, state, attempts, elapsed and remaining time), cancel, and a
// form that starts a job of any kind from its params as JSON.

import { api } from "../api.js";
import {
  ACTIVE, clear, errorSlot, field, fmtDuration, fmtTime, h, jobTimes, onSubmit, parseJsonObject, progressBar,
  select, shortId, showError, stateBadge, table,
} from "../dom.js";

export const KINDS = ["ingest", "train_gan", "generate", "train_classifier", "evaluate", "audit", "experiment"];
const PAGE = 50;

/** A cancel button for `job` that shows its problem in `slot`; returns the updated job to `after`. */
export function cancelButton(job, slot, after) {
  const btn = h("button", { type: "button", class: "danger", "aria-label": `Cancel ${job.kind} job ${shortId(job.id)}` }, "Cancel");
  btn.addEventListener("click", async () => {
    btn.disabled = true;
    clear(slot);
    try {
      const updated = await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
      after?.(updated);
    } catch (err) {
      showError(slot, err);
      btn.disabled = false;
    }
  });
  return btn;
}

/** One row of the jobs table, updated in place (focus stays on its buttons while it refreshes). */
function jobRow(job, slot) {
  const cells = {
    kind: h("td", { "data-label": "kind" }),
    id: h("td", { "data-label": "id", class: "mono" }),
    state: h("td", { "data-label": "state" }),
    progress: h("td", { "data-label": "progress" }),
    attempts: h("td", { "data-label": "attempts", class: "num" }),
    elapsed: h("td", { "data-label": "elapsed", class: "num" }),
    remaining: h("td", { "data-label": "remaining", class: "num" }),
    created: h("td", { "data-label": "created" }),
    actions: h("td", { "data-label": "actions" }),
  };
  const bar = progressBar(`Progress of ${job.kind} job ${shortId(job.id)}`);
  cells.progress.append(bar);
  cells.kind.append(job.kind);
  cells.id.append(h("a", { href: `#/jobs/${job.id}`, "aria-label": `${shortId(job.id)}: details of the ${job.kind} job` }, shortId(job.id)));
  const tr = h("tr", { dataset: { jobId: job.id, kind: job.kind } }, Object.values(cells));
  let cancel = null;
  tr.update = (j) => {
    tr.job = j;
    tr.dataset.state = j.state;
    tr.classList.toggle("active", ACTIVE.has(j.state));
    cells.state.replaceChildren(stateBadge(j.state, j.cancel_requested));
    bar.update(j);
    cells.attempts.textContent = String(j.attempts);
    const t = jobTimes(j);
    cells.elapsed.textContent = t.elapsed !== null ? fmtDuration(t.elapsed) : (t.waiting !== undefined && t.waiting !== null ? `waiting ${fmtDuration(t.waiting)}` : "—");
    cells.remaining.textContent = j.state === "running" ? (t.remaining !== null ? `~${fmtDuration(t.remaining)}` : "estimating") : (ACTIVE.has(j.state) ? "—" : "0 s");
    cells.created.textContent = fmtTime(j.created_at);
    const cancellable = ACTIVE.has(j.state) && !j.cancel_requested;
    if (cancellable && !cancel) {
      cancel = cancelButton(j, slot, (u) => tr.update(u));
      cells.actions.append(cancel);
    } else if (!cancellable && cancel) {
      cancel.remove();
      cancel = null;
    }
  };
  tr.update(job);
  return tr;
}

export async function render(root, ctx) {
  const slot = errorSlot();
  const listSlot = errorSlot();
  const kindSel = select("kind", [["", "all kinds"], ...KINDS.map((k) => [k, k])], "");
  const stateSel = select("state", [["", "all states"], ...["queued", "running", "succeeded", "failed", "cancelled"].map((s) => [s, s])], "");
  const filters = h("form", { class: "panel", "aria-label": "Filter jobs" },
    h("div", { class: "fields" }, field("Kind", kindSel), field("State", stateSel)));
  const summary = h("p", { class: "note", "aria-live": "polite", id: "jobs-summary" });
  const tbody = h("tbody");
  const head = ["kind", "id", "state", "progress", "attempts", "elapsed", "remaining", "created", "actions"];
  const tableEl = table("Jobs, newest first (refreshed every 2 s)", head.map((l) => ({ label: l, num: ["attempts", "elapsed", "remaining"].includes(l) })), [], { cards: true, className: "jobs" });
  tableEl.querySelector("table").replaceChild(tbody, tableEl.querySelector("tbody"));
  const empty = h("p", { class: "empty", hidden: true }, "No jobs yet. Start one from Datasets (ingest), Training, Generate or Experiment.");
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Show more");
  let limit = PAGE;
  more.addEventListener("click", () => { limit += PAGE; refresh(); });

  root.append(h("h1", {}, "Jobs"), filters, listSlot, slot, summary, empty, tableEl, h("div", { class: "actions" }, more), newJobForm(ctx));

  const rows = new Map();
  async function refresh() {
    const q = new URLSearchParams({ limit: String(limit) });
    if (kindSel.value) q.set("kind", kindSel.value);
    if (stateSel.value) q.set("state", stateSel.value);
    let list;
    try {
      list = await api(`/v1/jobs?${q}`, { signal: ctx.signal });
    } catch (err) {
      if (err.name !== "AbortError") showError(listSlot, err);
      return;
    }
    if (listSlot.firstChild) clear(listSlot);
    const seen = new Set();
    let prev = null;
    for (const j of list.data) {
      seen.add(j.id);
      let tr = rows.get(j.id);
      if (!tr) {
        tr = jobRow(j, slot);
        rows.set(j.id, tr);
      } else {
        tr.update(j);
      }
      const want = prev ? prev.nextSibling : tbody.firstChild;
      if (want !== tr) tbody.insertBefore(tr, want); // only moves rows that are out of place
      prev = tr;
    }
    for (const [id, tr] of rows) {
      if (!seen.has(id)) { tr.remove(); rows.delete(id); }
    }
    const active = list.data.filter((j) => ACTIVE.has(j.state)).length;
    summary.textContent = `${list.count} job${list.count === 1 ? "" : "s"}${list.count > list.data.length ? `, ${list.data.length} shown` : ""}; ${active} queued or running.`;
    empty.hidden = list.count > 0;
    tableEl.hidden = list.count === 0;
    more.hidden = list.count <= list.data.length;
  }
  for (const s of [kindSel, stateSel]) s.addEventListener("change", () => { clear(tbody); rows.clear(); refresh(); });
  ctx.every(2000, refresh);
}

function newJobForm(ctx) {
  const slot = errorSlot();
  const kind = select("kind", KINDS.map((k) => [k, k]), "ingest");
  const params = h("textarea", { name: "params", rows: 5, spellcheck: "false" }, '{\n  "path": "/abs/path/IDC_regular_ps50_idx5"\n}');
  const form = h("form", { class: "panel" },
    h("div", { class: "fields" },
      field("Kind", kind),
      field("Params (JSON)", params, "The kind's params as in the README's Job kinds table.", { wide: true })),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Start job")), slot);
  onSubmit(form, slot, async () => {
    const body = { kind: kind.value, params: parseJsonObject(params.value, "Params") };
    const created = await api("/v1/jobs", { method: "POST", json: body });
    ctx.go(`#/jobs/${created.id}`);
  });
  return h("details", { class: "new-job" }, h("summary", {}, "Start a job of any kind (params as JSON)"), form);
}
