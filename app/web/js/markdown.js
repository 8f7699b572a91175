// A tiny, safe Markdown renderer for the jobs' reports: the text is HTML-escaped first, then
// only the constructs the reports use become tags (headings, paragraphs, pipe tables, lists,
// fenced code, `code`, **bold**, *emphasis*, links to http(s) or same-site paths). Nothing from
// the input can become an attribute other than an escaped, checked href.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ESCAPES[c]);

const UNESCAPES = Object.fromEntries(Object.entries(ESCAPES).map(([c, e]) => [e, c]));

function safeHref(escapedUrl) {
  const url = escapedUrl.replace(/&(amp|lt|gt|quot|#39);/g, (e) => UNESCAPES[e]);
  if (/^(https?:\/\/|\/(?!\/)|#|\.{0,2}\/)/i.test(url) || /^[\w.-]+(\/[\w./-]*)?$/.test(url)) {
    return /^javascript:|^data:|^vbscript:/i.test(url) ? null : escapeHtml(url);
  }
  return null;
}

// Inline markup on already-escaped text. Code spans are cut out first so their contents stay literal.
function inline(text) {
  const codes = [];
  let s = text.replace(/`([^`]+)`/g, (_, c) => `\u0000${codes.push(c) - 1}\u0000`);
  s = s.replace(/!\[([^\]]*)\]\(([^)\s]+)\)/g, (_, alt) => `[image: ${alt}]`); // images would need the key
  s = s.replace(/\[([^\]]+)\]\(([^)\s]+)\)/g, (m, label, url) => {
    const href = safeHref(url);
    return href ? `<a href="${href}" rel="noopener noreferrer">${label}</a>` : label;
  });
  s = s.replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>");
  s = s.replace(/(^|[\s(])\*([^*\s][^*]*?)\*(?=[\s).,;:!?]|$)/g, "$1<em>$2</em>");
  return s.replace(/\u0000(\d+)\u0000/g, (_, i) => `<code>${codes[Number(i)]}</code>`);
}

function splitRow(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|")) row = row.slice(0, -1);
  return row.split("|").map((c) => c.trim());
}

const isTableSep = (line) => /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/.test(line);

/** HTML for `source` (Markdown). Headings are shifted down by `shift` levels (the page owns h1). */
export function renderMarkdown(source, { shift = 2, label = "" } = {}) {
  const lines = escapeHtml(String(source).replace(/\r\n?/g, "\n")).split("\n");
  const out = [];
  let tables = 0;
  let lastHeading = "";
  let i = 0;
  let para = [];
  const flush = () => {
    if (para.length) out.push(`<p>${inline(para.join(" "))}</p>`);
    para = [];
  };
  while (i < lines.length) {
    const line = lines[i];
    if (/^\s*```/.test(line)) {
      flush();
      const body = [];
      for (i += 1; i < lines.length && !/^\s*```/.test(lines[i]); i += 1) body.push(lines[i]);
      out.push(`<pre><code>${body.join("\n")}</code></pre>`);
      i += 1;
      continue;
    }
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    if (heading) {
      flush();
      const level = Math.min(6, heading[1].length + shift);
      lastHeading = heading[2].replace(/\s+#+\s*$/, "");
      out.push(`<h${level}>${inline(lastHeading)}</h${level}>`);
      i += 1;
      continue;
    }
    if (line.trim().startsWith("|") && i + 1 < lines.length && isTableSep(lines[i + 1])) {
      flush();
      const head = splitRow(line);
      const rows = [];
      for (i += 2; i < lines.length && lines[i].trim().startsWith("|"); i += 1) rows.push(splitRow(lines[i]));
      const th = head.map((c) => `<th scope="col">${inline(c)}</th>`).join("");
      const body = rows.map((r) => `<tr>${r.map((c) => `<td>${inline(c)}</td>`).join("")}</tr>`).join("");
      tables += 1; // each scrollable table a landmark of its own name
      const name = `${label ? `${label}, ` : ""}table ${tables}${lastHeading ? `: ${lastHeading.replace(/[`*]/g, "")}` : ""}`;
      out.push(`<div class="table-wrap" role="region" aria-label="${name}" tabindex="0"><table><thead><tr>${th}</tr></thead>`
               + `<tbody>${body}</tbody></table></div>`);
      continue;
    }
    const bullet = /^\s*([-*+]|\d+[.)])\s+(.*)$/.exec(line);
    if (bullet) {
      flush();
      const ordered = /\d/.test(bullet[1]);
      const items = [];
      while (i < lines.length) {
        const m = /^\s*([-*+]|\d+[.)])\s+(.*)$/.exec(lines[i]);
        if (m) { items.push(m[2]); i += 1; continue; }
        if (lines[i].trim() && /^\s{2,}/.test(lines[i]) && items.length) { items[items.length - 1] += ` ${lines[i].trim()}`; i += 1; continue; }
        break;
      }
      const tag = ordered ? "ol" : "ul";
      out.push(`<${tag}>${items.map((it) => `<li>${inline(it)}</li>`).join("")}</${tag}>`);
      continue;
    }
    if (!line.trim()) { flush(); i += 1; continue; }
    para.push(line.trim());
    i += 1;
  }
  flush();
  return out.join("\n");
}
