// Experiment: one form that starts the paper's whole pipeline (POST /v1/experiments); its steps
// then show on the job's page.

import { api } from "../api.js";
import { errorSlot, field, h, numberInput, onSubmit, parseJsonObject, select } from "../dom.js";
import { datasetOptions } from "./training.js";

const PRESETS = ["cpu-small", "cpu-small-he", "cpu-tissue", "cpu-medium", "paper", "gpu-large"];

export async function render(root, ctx) {
  const slot = errorSlot();
  const options = await datasetOptions("real", ctx.signal);
  const f = {
    dataset_id: select("dataset_id", options.length ? options : [["", "no real dataset yet: ingest one"]], options[0]?.[0]),
    fraction: numberInput("fraction", 0.1, { min: 0.0001, max: 1, step: "any" }),
    preset: select("preset", PRESETS.map((p) => [p, p]), "cpu-tissue"),
    steps: numberInput("steps", 2000, { min: 1, step: 1 }),
    weights: select("weights", [["none", "none (random init)"], ["imagenet", "imagenet (the paper)"]], "none"),
    mode: select("mode", [["finetune", "finetune"], ["frozen", "frozen (the paper)"]], "finetune"),
    epochs: numberInput("epochs", 3, { min: 1, step: 1 }),
    input_size: numberInput("input_size", 64, { min: 16, step: 1 }),
    holdout_share: numberInput("holdout_share", 0.1, { min: 0.01, max: 0.49, step: 0.01 }),
    augment_fraction: numberInput("augment_fraction", 0.1, { min: 0, max: 0.99, step: 0.01 }),
    sample_size: select("sample_size", [["64", "64 px"], ["50", "50 px"]], "64"),
    audit_max_samples: numberInput("audit_max_samples", 2000, { min: 10, step: 1 }),
    domain_epochs: numberInput("domain_epochs", 3, { min: 1, step: 1 }),
    seed: numberInput("seed", 0, { min: 0, step: 1 }),
    select_every: numberInput("select_every", 0, { min: 0, step: 1 }),
  };
  const maxPer = h("input", { type: "number", name: "max_per_class", min: 1, step: 1, inputmode: "numeric" });
  const overrides = h("textarea", { name: "overrides", rows: 2, spellcheck: "false", placeholder: '{"batch_size": 16}' });
  const form = h("form", { class: "panel", id: "experiment-form" },
    h("fieldset", {}, h("legend", {}, "Data"), h("div", { class: "fields" },
      field("Dataset", f.dataset_id), field("Fraction of the paper's sizes", f.fraction, "40,000 (GAN) and 38,000 (classification) per class, times this"),
      field("Holdout share", f.holdout_share, "of each label, for the audit"), field("Seed", f.seed))),
    h("fieldset", {}, h("legend", {}, "Generators"), h("div", { class: "fields" },
      field("Preset", f.preset), field("Steps per generator", f.steps), field("Sample size", f.sample_size),
      field("Keep the best snapshot, scored every", f.select_every, "steps; 0 keeps the last (the paper)"),
      field("GAN overrides (JSON, optional)", overrides, "", { wide: true }))),
    h("fieldset", {}, h("legend", {}, "Classifier and protocol"), h("div", { class: "fields" },
      field("Weights", f.weights), field("Mode", f.mode), field("Epochs", f.epochs), field("Input size", f.input_size, "px; the paper: 224"),
      field("Max per class (optional)", maxPer), field("Augmentation share", f.augment_fraction))),
    h("fieldset", {}, h("legend", {}, "Audit"), h("div", { class: "fields" },
      field("Audit samples", f.audit_max_samples), field("Domain classifier epochs", f.domain_epochs))),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Start the experiment")), slot);
  root.append(h("h1", {}, "Experiment"),
    h("p", {}, "The paper's whole pipeline as one job: a three-way patient split, both generators, the synthetic sets, "
      + "the four-way protocol with the augmentation rows, an audit per label and one report beside Table 3. "
      + "The defaults here are a CPU-scale run; the paper used 224 px ImageNet weights, frozen, and the paper preset."),
    form);
  onSubmit(form, slot, async () => {
    const body = {};
    for (const [k, el] of Object.entries(f)) body[k] = el.tagName === "SELECT" && !["sample_size"].includes(k) ? el.value : Number(el.value);
    if (maxPer.value) body.max_per_class = Number(maxPer.value);
    const o = parseJsonObject(overrides.value, "GAN overrides");
    if (Object.keys(o).length) body.overrides = o;
    const job = await api("/v1/experiments", { method: "POST", json: body });
    ctx.go(`#/jobs/${job.id}`);
  });
}
