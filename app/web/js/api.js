// The one way the page talks to the API: every /v1 call carries the key from sessionStorage
// in an Authorization header (never in a URL), and every error becomes an ApiError holding the
// server's RFC 9457 problem (title, detail, errors, request_id).

const KEY_SLOT = "histosynth.apiKey";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

const blobs = new Map(); // url -> Promise<object URL>; artifacts and example grids never change
const BLOB_CACHE = 300;

// Released a while later, not at once: an image of the view being replaced may still be about
// to take its URL (a revoked blob: URL is a failed load).
function release(promises) {
  setTimeout(() => promises.forEach((p) => p.then((u) => URL.revokeObjectURL(u), () => {})), 60_000);
}

function dropBlobs() {
  release([...blobs.values()]);
  blobs.clear();
}

export const keyStore = {
  get() {
    try { return sessionStorage.getItem(KEY_SLOT) || ""; } catch { return ""; }
  },
  set(key) {
    const value = (key || "").trim();
    if (value) sessionStorage.setItem(KEY_SLOT, value); else sessionStorage.removeItem(KEY_SLOT);
    dropBlobs(); // another key may not read what this one could
    window.dispatchEvent(new CustomEvent("hs:key-changed"));
  },
};

let skewMs = 0; // the server's clock minus ours (from Date headers), for elapsed times
export const serverNow = () => Date.now() + skewMs;

function noteDate(resp) {
  const date = Date.parse(resp.headers.get("Date") || "");
  if (!Number.isNaN(date)) {
    const skew = date + 500 - Date.now(); // a Date header has whole seconds
    skewMs = Math.abs(skew) < 1500 ? 0 : skew;
  }
}

async function problemOf(resp) {
  const problem = { title: `HTTP ${resp.status}`, detail: resp.statusText || "", status: resp.status };
  const type = resp.headers.get("Content-Type") || "";
  try {
    if (type.includes("json")) return { ...problem, ...(await resp.json()) };
    const text = await resp.text();
    if (text) problem.detail = text.slice(0, 600);
  } catch { /* the status line is all there is */ }
  return problem;
}

/** fetch `path` (a same-origin /v1 path) with the key; `as`: json, text, blob or response. */
export async function api(path, { method = "GET", json, body, headers = {}, as = "json", signal } = {}) {
  const h = new Headers(headers);
  const key = keyStore.get();
  if (key) h.set("Authorization", `Bearer ${key}`);
  let payload = body;
  if (json !== undefined) {
    h.set("Content-Type", "application/json");
    payload = JSON.stringify(json);
  }
  let resp;
  try {
    resp = await fetch(path, { method, headers: h, body: payload, signal, credentials: "omit", cache: "no-store",
                               referrerPolicy: "no-referrer" });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { title: "The API cannot be reached", detail: String(err.message || err) });
  }
  noteDate(resp);
  if (!resp.ok) {
    const err = new ApiError(resp.status, await problemOf(resp));
    if (resp.status === 401) window.dispatchEvent(new CustomEvent("hs:unauthorized", { detail: err }));
    throw err;
  }
  if (as === "response") return resp;
  if (as === "blob") return resp.blob();
  if (as === "text") return resp.text();
  return resp.status === 204 ? null : resp.json();
}

/** An object URL for an immutable resource that needs the key (artifacts, example grids). */
export function blobUrl(path) {
  if (!blobs.has(path)) {
    const promise = api(path, { as: "blob" }).then((b) => URL.createObjectURL(b));
    promise.catch(() => blobs.delete(path));
    blobs.set(path, promise);
    if (blobs.size > BLOB_CACHE) {
      const [oldest, old] = blobs.entries().next().value;
      blobs.delete(oldest);
      release([old]);
    }
  }
  return blobs.get(path);
}

function saveAs(url, filename) {
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  a.rel = "noreferrer";
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
}

const ARTIFACT = /^\/v1\/artifacts\/[0-9a-f]{32}$/;

/** Save `path` as `filename`. An artifact goes through a short-lived download link (POST
 * .../link; app/download_links.py), so the browser streams it to disk and the key never
 * appears in a URL; anything else is fetched with the key and saved from memory. */
export async function download(path, filename) {
  if (ARTIFACT.test(path)) {
    const link = await api(`${path}/link`, { method: "POST" });
    saveAs(link.url, filename);
    return;
  }
  const url = URL.createObjectURL(await api(path, { as: "blob" }));
  saveAs(url, filename);
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** Every row of a paged list (`{data, count}`), `limit` at a time, at most `max` rows. */
export async function allPages(path, { limit = 500, max = 5000, params = {} } = {}) {
  const rows = [];
  for (let offset = 0; offset < max; offset += limit) {
    const q = new URLSearchParams({ ...params, limit: String(limit), offset: String(offset) });
    const page = await api(`${path}?${q}`);
    rows.push(...page.data);
    if (rows.length >= page.count || page.data.length === 0) break;
  }
  return rows;
}
