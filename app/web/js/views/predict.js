// Predict: drop (or choose) one or many patches; each image is shown beside its label and
// probability from the promoted classifier.

import { api } from "../api.js";
import { clear, errorSlot, h, showError } from "../dom.js";

const PER_REQUEST = 8; // the smallest file cap the API is run with; more files go in several requests

export async function render(root) {
  const slot = errorSlot();
  const input = h("input", { type: "file", id: "predict-files", accept: "image/png,image/jpeg", multiple: true });
  const zone = h("label", { class: "dropzone", for: "predict-files" },
    h("strong", {}, "Drop PNG or JPEG patches here"), h("br"), "or choose them:", input);
  const status = h("p", { class: "note", "aria-live": "polite" });
  const model = h("p", { class: "note" });
  const list = h("ul", { class: "predictions", "aria-label": "Predictions" });
  root.append(h("h1", {}, "Predict"),
    h("p", {}, "Each patch is classified by the promoted ResNet18 (IDC+ when its probability is at least 0.5)."),
    zone, slot, status, model, list);

  let urls = []; // the shown files' object URLs, released on the next drop
  async function run(files) {
    const images = [...files].filter((f) => /^image\/(png|jpeg)$/.test(f.type) || /\.(png|jpe?g)$/i.test(f.name));
    clear(slot);
    if (!images.length) { status.textContent = "No PNG or JPEG files in what was dropped."; return; }
    clear(list);
    urls.forEach((u) => URL.revokeObjectURL(u));
    urls = [];
    status.textContent = `Classifying ${images.length} patch${images.length === 1 ? "" : "es"}…`;
    let done = 0;
    for (let i = 0; i < images.length; i += PER_REQUEST) {
      const chunk = images.slice(i, i + PER_REQUEST);
      const form = new FormData();
      chunk.forEach((f) => form.append("files", f, f.name));
      let answer;
      try {
        answer = await api("/v1/predictions", { method: "POST", body: form });
      } catch (err) {
        showError(slot, err);
        status.textContent = `${done} of ${images.length} classified.`;
        return;
      }
      model.textContent = `Classifier ${answer.model.id.slice(0, 8)}, version ${answer.model.version}, ${answer.model.precision}`
        + `${answer.model.starter ? ", the shipped starter model (promote your own to replace it)" : ""}.`;
      answer.predictions.forEach((p, k) => {
        const file = chunk[k];
        const url = URL.createObjectURL(file);
        urls.push(url);
        const pos = p.label === "IDC+";
        const prob = p.probability_idc;
        list.append(h("li", { class: "prediction", dataset: { label: p.label, filename: p.filename } },
          h("img", { src: url, alt: `Patch ${p.filename}`, width: 96, height: 96 }),
          h("div", {},
            h("div", { class: `label ${pos ? "pos" : "neg"}` }, p.label),
            h("div", {}, `P(IDC+) = ${prob.toFixed(3)}`),
            h("meter", { min: 0, max: 1, low: 0.5, high: 0.5001, optimum: 0, value: prob, "aria-label": `Probability of IDC for ${p.filename}` }),
            h("div", { class: "file" }, p.filename))));
      });
      done += chunk.length;
    }
    status.textContent = `${done} patch${done === 1 ? "" : "es"} classified.`;
  }

  input.addEventListener("change", () => run(input.files));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    run(e.dataTransfer.files);
  });
}
