// The page: a hash router over the sections, the key form, and polling that stops when the
// view changes. Routes are "#/section" or "#/section/id"; anything else (the skip link's
// "#main") is not a route.

import { keyStore } from "./api.js";
import { clear, h, problemBox, showError } from "./dom.js";
import * as datasets from "./views/datasets.js";
import * as experiment from "./views/experiment.js";
import * as generate from "./views/generate.js";
import * as job from "./views/job.js";
import * as jobs from "./views/jobs.js";
import * as models from "./views/models.js";
import * as predict from "./views/predict.js";
import * as results from "./views/results.js";
import * as training from "./views/training.js";

const VIEWS = { jobs, datasets, training, models, predict, generate, results, experiment };
const main = document.getElementById("main");
const globalAlert = document.getElementById("global-alert");
let current = null; // {controller} of the view on screen
let firstRender = true;

function parseHash() {
  const hash = location.hash || "#/jobs";
  if (!hash.startsWith("#/")) return null;
  const [section, ...rest] = hash.slice(2).split("/").map(decodeURIComponent);
  return { section: section || "jobs", id: rest.join("/") || null };
}

/** Run `fn` now and again `ms` after each run ends, until the view changes; slower when the tab is hidden. */
function every(signal, ms, fn) {
  let timer = null;
  const tick = async () => {
    if (signal.aborted) return;
    try { await fn(); } catch (err) { if (err?.name !== "AbortError") console.warn("poll", err); }
    if (!signal.aborted) timer = setTimeout(tick, document.hidden ? Math.max(ms, 10_000) : ms);
  };
  signal.addEventListener("abort", () => clearTimeout(timer));
  tick();
}

async function render() {
  const route = parseHash();
  if (!route) return;
  current?.controller.abort();
  const controller = new AbortController();
  current = { controller, route };
  const view = route.section === "jobs" && route.id ? job : VIEWS[route.section];
  for (const a of document.querySelectorAll("nav.sections a")) {
    if (a.dataset.section === route.section) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  clear(globalAlert);
  const root = h("div", { class: "view" });
  main.replaceChildren(root);
  if (!view) {
    root.append(h("h1", { tabindex: "-1" }, "Not found"), h("p", {}, "No such section. ", h("a", { href: "#/jobs" }, "Go to the jobs.")));
  } else {
    const ctx = {
      id: route.id,
      signal: controller.signal,
      every: (ms, fn) => every(controller.signal, ms, fn),
      go: (hash) => { if (!controller.signal.aborted) location.hash = hash; }, // not once the user has moved on
      alert: (err) => showError(globalAlert, err),
    };
    try {
      await view.render(root, ctx);
    } catch (err) {
      if (err?.name !== "AbortError" && !controller.signal.aborted) root.append(problemBox(err));
    }
  }
  if (controller.signal.aborted) return;
  const heading = root.querySelector("h1");
  document.title = `${heading ? heading.textContent : "histosynth"} · histosynth`;
  if (!firstRender && heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: false });
  }
  firstRender = false;
}

// ---- the key ------------------------------------------------------------------------------

const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("key-input");
const keyStatus = document.getElementById("key-status");
const keyForget = document.getElementById("key-forget");

function showKeyState() {
  const key = keyStore.get();
  keyForget.hidden = !key;
  keyStatus.textContent = key ? `Key …${key.slice(-4)} kept for this tab` : "No key (open mode needs none)";
  keyInput.value = "";
  keyInput.placeholder = key ? "another key" : "hs_…";
}

keyForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = keyInput.value.trim();
  if (!value) { keyInput.focus(); return; }
  keyStore.set(value);
});
keyForget.addEventListener("click", () => { keyStore.set(""); keyInput.focus(); });
window.addEventListener("hs:key-changed", () => { showKeyState(); render(); });
window.addEventListener("hs:unauthorized", (ev) => {
  current?.controller.abort(); // no polling with a refused key; a new key renders the view again
  const p = ev.detail.problem || {};
  globalAlert.replaceChildren(problemBox({ problem: { ...p, detail: `${p.detail || ""} Enter an API key above.`.trim() } }));
  keyStatus.textContent = keyStore.get() ? "The key was refused" : "This server needs an API key";
});

document.getElementById("skip-link").addEventListener("click", (ev) => {
  ev.preventDefault();
  (main.querySelector("h1") || main).focus();
});

window.addEventListener("hashchange", render);
showKeyState();
render();
