// DOM helpers shared by the views: an element builder (text only, never innerHTML, except for
// the Markdown renderer's escaped output), formatting, problems, states, progress, artifacts.

import { api, blobUrl, download, serverNow } from "./api.js";
import { escapeHtml, renderMarkdown } from "./markdown.js";

/** h("p", {class: "x", onclick: f}, "text", child, [more]) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k in el && typeof v !== "string" && k !== "list") el[k] = v;
    else if (["value", "checked", "disabled", "hidden", "selected", "min", "max", "step"].includes(k)) el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const clear = (el) => { el.replaceChildren(); return el; };

let uid = 0;
export const newId = (prefix = "f") => `${prefix}-${++uid}`;

// ---- formatting -------------------------------------------------------------------------

export function parseTime(iso) {
  if (!iso) return null;
  const s = /[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`;
  const t = Date.parse(s);
  return Number.isNaN(t) ? null : t;
}

export function fmtDuration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—";
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr} h ${String(m % 60).padStart(2, "0")} min`;
  return `${Math.floor(hr / 24)} d ${hr % 24} h`;
}

export function fmtTime(iso) {
  const t = parseTime(iso);
  if (t === null) return "—";
  const d = new Date(t);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u += 1; }
  return `${u === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

export function fmtNum(v, digits = 3) {
  if (v === null || v === undefined || v === "") return "—";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return v.toLocaleString("en-US");
  return v.toFixed(digits);
}

export const LABELS = { 0: "IDC-", 1: "IDC+", "0": "IDC-", "1": "IDC+" };
export const shortId = (id) => (id ? id.slice(0, 8) : "—");

/** Elapsed and estimated remaining time of a job, from its timestamps and progress. */
export function jobTimes(job) {
  const start = parseTime(job.started_at);
  const end = parseTime(job.finished_at);
  const created = parseTime(job.created_at);
  const now = serverNow();
  if (job.state === "queued") return { elapsed: null, waiting: created ? now - created : null, remaining: null };
  if (start === null) return { elapsed: null, remaining: null };
  const elapsed = (end ?? now) - start;
  let remaining = null;
  const f = job.progress?.fraction;
  if (job.state === "running" && f && f > 0.005 && f < 1) remaining = (elapsed * (1 - f)) / f;
  if (["succeeded", "failed", "cancelled"].includes(job.state)) remaining = 0;
  return { elapsed, remaining };
}

// ---- problems and messages --------------------------------------------------------------

/** An element showing an API error: the problem's title, detail, validation errors, request id. */
export function problemBox(err) {
  const p = err?.problem || { title: err?.message || String(err) };
  const box = h("div", { class: "problem" },
    h("p", { class: "problem-title" }, p.title || "Error", p.status ? ` (${p.status})` : ""),
    p.detail ? h("p", { class: "problem-detail" }, p.detail) : null);
  const errors = Array.isArray(p.errors) ? p.errors : [];
  if (errors.length) {
    box.append(h("ul", {}, errors.slice(0, 10).map((e) => h("li", {},
      typeof e === "string" ? e : `${(e.loc || []).join(".")}: ${e.msg || JSON.stringify(e)}`))));
  } else if (Array.isArray(p.problems) && p.problems.length) {
    box.append(h("ul", {}, p.problems.slice(0, 10).map((e) => h("li", {}, String(e)))));
  }
  if (p.request_id) box.append(h("p", { class: "request-id" }, `request id ${p.request_id}`));
  return box;
}

/** Put `err` (or nothing) into the live region `slot`. */
export function showError(slot, err) {
  clear(slot);
  if (err) slot.append(problemBox(err));
}

/** A live region for one form's errors (role=alert is announced when filled). */
export const errorSlot = () => h("div", { class: "error-slot", role: "alert" });

// ---- states and progress ----------------------------------------------------------------

const STATE_SYMBOL = { queued: "◌", running: "▶", succeeded: "✓", failed: "✗", cancelled: "■" };
export const ACTIVE = new Set(["queued", "running"]);

export function stateBadge(state, cancelRequested = false) {
  const word = cancelRequested && ACTIVE.has(state) ? `${state}, cancelling` : state;
  return h("span", { class: `state state-${state}` }, `${STATE_SYMBOL[state] || "?"} ${word}`);
}

/** A <progress> bar with its text; update(job) refreshes both in place. */
export function progressBar(labelText) {
  const bar = h("progress", { max: 1, "aria-label": labelText });
  const text = h("span", { class: "progress-text" });
  const el = h("div", { class: "progress" }, bar, text);
  el.update = (job) => {
    const p = job.progress || {};
    const done = job.state === "succeeded";
    const f = done ? 1 : p.fraction;
    if (f === null || f === undefined) {
      if (job.state === "running") bar.removeAttribute("value"); // indeterminate
      else bar.value = 0;
    } else {
      bar.value = Math.min(1, Math.max(0, f));
    }
    const pct = f === null || f === undefined ? "" : `${Math.round(f * 100)}%`;
    const counts = p.total ? `${p.current}/${p.total}` : "";
    let words;
    if (done) words = ["done", counts];
    else if (job.state === "failed") words = ["failed", pct, counts];
    else if (job.state === "cancelled") words = ["cancelled", pct];
    else if (job.state === "queued") words = ["waiting for a worker"];
    else words = [pct, counts, p.message || ""];
    text.textContent = words.filter(Boolean).join(" · ") || job.state;
    bar.setAttribute("aria-valuetext", text.textContent);
    el.dataset.state = job.state;
  };
  return el;
}

// ---- images and artifacts ---------------------------------------------------------------

const lazy = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
  for (const e of entries) {
    if (e.isIntersecting) { lazy.unobserve(e.target); e.target.load?.(); }
  }
}, { rootMargin: "300px" }) : null;

/** An <img> whose source is fetched with the key (as a blob) when it nears the viewport. */
export function authImage(path, alt, { eager = false, className = "", zoom = 1 } = {}) {
  const img = h("img", { alt, class: className, decoding: "async" });
  if (zoom !== 1) { // small patches drawn larger (pixelated), never wider than their box (CSS max-width)
    img.addEventListener("load", () => { img.style.width = `${Math.round(img.naturalWidth * zoom)}px`; });
  }
  img.dataset.src = path;
  img.load = () => {
    blobUrl(path).then((u) => {
      if (img.dataset.src === path) img.src = u;
    }, (err) => {
      img.alt = `${alt} (could not load: ${err.problem?.title || err.message})`;
      img.dataset.failed = "true";
    });
  };
  if (eager || !lazy) img.load(); else lazy.observe(img);
  return img;
}

/** Point an authImage at another path (the step slider). */
export function retarget(img, path, alt) {
  img.dataset.src = path;
  img.alt = alt;
  blobUrl(path).then((u) => { if (img.dataset.src === path) img.src = u; }, () => {});
}

export function downloadButton(path, filename, text = "Download", slot = null) {
  const btn = h("button", { type: "button", class: "secondary", "aria-label": `${text} ${filename}` }, text);
  btn.addEventListener("click", async () => {
    btn.disabled = true;
    try {
      await download(path, filename);
      if (slot) clear(slot);
    } catch (err) {
      showError(slot || document.getElementById("global-alert"), err);
    } finally {
      btn.disabled = false;
    }
  });
  return btn;
}

const JSON_INLINE_MAX = 400_000;
const baseName = (name) => name.split("/").pop();

/** An artifact rendered by its type: PNGs inline, Markdown rendered, JSON pretty, others a download. */
export function artifactView(a, { eager = false } = {}) {
  const slot = errorSlot();
  const body = h("div", { class: "artifact-body" });
  const caption = h("figcaption", {}, h("span", { class: "mono" }, a.name), ` · ${a.media_type} · ${fmtBytes(a.size_bytes)} `,
                    downloadButton(a.url, baseName(a.name), "Download", slot));
  const fig = h("figure", { class: "artifact", dataset: { artifact: a.id, name: a.name } }, body, caption, slot);
  if (a.media_type.startsWith("image/")) {
    body.append(authImage(a.url, a.name, { eager }));
  } else if (a.media_type === "text/markdown") {
    const md = h("div", { class: "markdown" }, h("p", { class: "muted" }, "loading report…"));
    body.append(md);
    api(a.url, { as: "text" }).then((text) => { md.innerHTML = renderMarkdown(text, { label: escapeHtml(a.name) }); },
                                     (err) => showError(slot, err));
  } else if (a.media_type === "application/json" || a.name.endsWith(".json")) {
    if (a.size_bytes > JSON_INLINE_MAX) {
      body.append(h("p", { class: "muted" }, "Large JSON: download it to read it."));
    } else {
      const pre = h("pre", { tabindex: "0", "aria-label": a.name }, "loading…");
      body.append(pre);
      api(a.url, { as: "text" }).then((text) => {
        try { pre.textContent = JSON.stringify(JSON.parse(text), null, 2); } catch { pre.textContent = text; }
      }, (err) => showError(slot, err));
    }
  } else {
    body.append(h("p", { class: "muted" }, a.media_type === "application/zip" ? "A zip of PNG patches." : "A file."));
  }
  return fig;
}

/** A JSON value, pretty, in a focusable (scrollable) <pre>. */
export const jsonBlock = (value, label) => h("pre", { tabindex: "0", "aria-label": label },
                                             JSON.stringify(value ?? {}, null, 2));

/** A <table> in a focusable scroll region. */
export function table(caption, head, rows, { cards = false, className = "" } = {}) {
  const t = h("table", { class: `${cards ? "cards " : ""}${className}` },
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col", class: c.num ? "num" : "" }, c.label ?? c)))),
    h("tbody", {}, rows));
  return h("div", { class: "table-wrap", role: "region", "aria-label": caption, tabindex: "0" }, t);
}

/** A labelled form field. `input` gets the id. */
export function field(labelText, input, hint = "", { wide = false } = {}) {
  const id = input.id || newId();
  input.id = id;
  const hintEl = hint ? h("span", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintEl) input.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: `field${wide ? " wide" : ""}` }, h("label", { for: id }, labelText), input, hintEl);
}

export function select(name, options, value) {
  return h("select", { name }, options.map(([v, text]) => h("option", { value: String(v), selected: String(v) === String(value) }, text)));
}

export const numberInput = (name, value, { min, max, step = "any", required = true } = {}) =>
  h("input", { type: "number", name, value: String(value), min, max, step, required, inputmode: "decimal" });

/** Parse an optional JSON object typed in a textarea; throws an ApiError-like problem. */
export function parseJsonObject(text, what) {
  if (!text.trim()) return {};
  try {
    const v = JSON.parse(text);
    if (v && typeof v === "object" && !Array.isArray(v)) return v;
  } catch (err) {
    throw { problem: { title: `${what} is not valid JSON`, detail: String(err.message) } };
  }
  throw { problem: { title: `${what} must be a JSON object`, detail: 'For example {"width": 0.03125}' } };
}

/** Wire a form: on submit, disable its buttons, run `fn`, show its error in `slot`. */
export function onSubmit(form, slot, fn) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const buttons = [...form.querySelectorAll("button")];
    buttons.forEach((b) => { b.disabled = true; });
    clear(slot);
    try {
      await fn(new FormData(form));
    } catch (err) {
      showError(slot, err);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  });
}
