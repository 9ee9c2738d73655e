// The New run page: shows each field's effective value (override, preset or default), the derived values, the
// pre-flight notes and the fit planner's prediction as the user types.
import { effectiveBatch, loraScale, stepsPerEpoch, totalSteps, trainRows, warmupStepsResolved } from "./derived.js";

const data = JSON.parse(document.getElementById("run-form-data").textContent);
const form = document.getElementById("run-form");
const INT_TEXT = /^[+-]?\d+$/;

function valueText(value) {
  if (value === null || value === undefined) return "none";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function input(name) {
  return form.elements.namedItem(name);
}

function presetConfig() {
  const presetId = input("preset").value;
  return (presetId && data.presets[presetId]) || {};
}

// What the run chosen under "Start from" fixes: its model, and with its adapter the adapter's shape.
function startFromConfig() {
  const chosen = input("start_from");
  return (chosen && chosen.value && data.start_from[chosen.value]) || {};
}

// The value the run would get for a field without an override, and where it comes from.
function inherited(name) {
  const base = startFromConfig();
  if (Object.prototype.hasOwnProperty.call(base, name)) return { value: base[name], source: "from the run built on" };
  const config = presetConfig();
  if (Object.prototype.hasOwnProperty.call(config, name)) return { value: config[name], source: "preset" };
  if (data.required.includes(name)) return { value: undefined, source: "required" };
  return { value: data.defaults[name], source: "default" };
}

// The typed text as a value: {value} when it parses, {error} when it does not, null when blank.
function typed(name) {
  const field = input(name);
  const text = field ? field.value.trim() : "";
  if (!text) return null;
  const kind = field.closest("[data-kind]").dataset.kind;
  if (text.toLowerCase() === "none" || text.toLowerCase() === "null") return { value: null, text };
  if (kind === "bool") return { value: text === "true", text };
  if (kind === "int" || kind === "float" || kind === "number") {
    const value = Number(text);
    if (text === "" || Number.isNaN(value) || (kind === "int" && !INT_TEXT.test(text))) return { error: true, text };
    return { value, text };
  }
  return { value: text, text };
}

// The effective number for a derived value, with whether it is a ratio (a float in the engine's terms).
function effective(name) {
  const override = typed(name);
  if (override && override.error) return { error: `${name} is not a number` };
  if (override) return { value: override.value, isRatio: !INT_TEXT.test(override.text) };
  const { value } = inherited(name);
  return { value, isRatio: typeof value === "number" && !Number.isInteger(value) };
}

function show(id, text, note = "") {
  document.getElementById(`derived-${id}`).textContent = text;
  const noteEl = document.getElementById(`derived-${id}-note`) || document.getElementById(`derived-${id}-formula`);
  if (noteEl) noteEl.textContent = note;
}

function round(value, digits = 4) {
  return Number.isFinite(value) ? String(Number(value.toPrecision(digits))) : "—";
}

function positiveInt(v) {
  return !v.error && Number.isInteger(v.value) && v.value >= 1;
}

function updateDerived() {
  const micro = effective("per_device_train_batch_size");
  const accum = effective("gradient_accumulation_steps");
  const epochs = effective("num_train_epochs");
  const maxSteps = effective("max_steps");
  const warmup = effective("warmup_steps");
  const evalSplit = effective("eval_split");
  const packing = effective("packing");
  const r = effective("r");
  const alpha = effective("lora_alpha");
  const rslora = effective("use_rslora");
  const devicesField = effective("devices");  // data-parallel ranks: each takes a micro-batch of every step
  const devices = positiveInt(devicesField) ? devicesField.value : 1;

  const batchOk = positiveInt(micro) && positiveInt(accum);
  show("effective_batch", batchOk ? String(effectiveBatch(micro.value, accum.value, devices)) : "—",
    !batchOk ? "fix the batch fields" : devices > 1
      ? `= ${micro.value} × ${accum.value} × ${devices} (micro-batch × accumulation × GPUs)`
      : `= ${micro.value} × ${accum.value} (micro-batch × accumulation)`);

  const rows = data.datasets[input("dataset").value];
  // The seed's advice for the chosen dataset: rank by size; packing and max_length once its statistics exist.
  document.getElementById("dataset-advice").replaceChildren(
    ...(data.dataset_advice[input("dataset").value] || []).map((line) => {
      const item = document.createElement("li");
      item.textContent = line;
      return item;
    }));
  const splitOk = !evalSplit.error && (evalSplit.value === null || (evalSplit.value > 0 && evalSplit.value < 1));
  const train = rows !== undefined && splitOk ? trainRows(rows, evalSplit.value) : null;
  show("train_rows", train === null ? "—" : String(train),
    train === null ? "" : (evalSplit.value ? `${rows} rows, ${rows - train} held out for eval` : `all ${rows} rows`));

  const packed = packing.value === true;
  const maxStepsValue = !maxSteps.error && maxSteps.value ? maxSteps.value : null;
  let total = null;
  if (batchOk && maxStepsValue) {
    total = totalSteps(0, micro.value, accum.value, 1, maxStepsValue, devices);
    show("total_steps", String(total), "set by max_steps");
  } else if (batchOk && train !== null && !packed && !epochs.error && epochs.value > 0) {
    total = totalSteps(train, micro.value, accum.value, epochs.value, null, devices);
    show("total_steps", String(total), `${round(epochs.value)} epoch(s)`);
  } else {
    show("total_steps", "—", packed ? "packing on: known once the run has packed its data" : "");
  }
  document.getElementById("derived-steps_per_epoch").textContent =
    batchOk && train !== null && !packed ? String(stepsPerEpoch(train, micro.value, accum.value, devices)) : "—";

  if (total !== null && !warmup.error && warmup.value !== null && warmup.value >= 0 && !(warmup.isRatio && warmup.value >= 1)) {
    show("warmup_steps", String(warmupStepsResolved(warmup, total)),
      warmup.isRatio ? `${round(warmup.value * 100, 3)}% of ${total}` : "a whole number of steps");
  } else {
    show("warmup_steps", "—", warmup.error || (warmup.isRatio && warmup.value >= 1) ? "fix warmup_steps" : "");
  }

  const loraOk = positiveInt(r) && !alpha.error && alpha.value > 0;
  show("lora_scale", loraOk ? round(loraScale(alpha.value, r.value, rslora.value === true)) : "—",
    loraOk ? (rslora.value === true ? `= ${alpha.value} / √${r.value} (rsLoRA)` : `= ${alpha.value} / ${r.value}`)
      : "fix r and lora_alpha");
}

const SOURCE_WORDS = { default: "default", preset: "the preset's", "from the run built on": "from the run built on" };

// Each field's hint says what it will be: the override typed, else the preset's value, else the default.
function updateEffective() {
  for (const hint of form.querySelectorAll("[data-effective-for]")) {
    const name = hint.dataset.effectiveFor;
    const { value, source } = inherited(name);
    const field = input(name);
    const override = typed(name);
    if (source === "required") {
      hint.textContent = override ? "required" : "required: the preset does not set it";
      field.placeholder = "required";
      continue;
    }
    const words = SOURCE_WORDS[source] || source;
    hint.replaceChildren(
      document.createTextNode(override ? `replaces ${words} ` : "left blank: "),
      Object.assign(document.createElement("code"), { textContent: valueText(value) }),
      document.createTextNode(override ? "" : ` (${words})`),
    );
    if (field.tagName === "SELECT") {
      field.options[0].textContent = `keep ${source} (${valueText(value)})`;
    } else if (field.tagName === "INPUT") {
      field.placeholder = valueText(value);
    }
  }
}

// The pre-flight review: the server holds what the form says so far against the seed's guidance (notes, never
// refusals); each note links its guidance section and offers the seed's value in one click.
const preflightList = document.getElementById("preflight-notes");
const preflightStatus = document.getElementById("preflight-status");
let preflightTimer = null;
let preflightAsked = 0;

// The values the config refuses, as the user types: each beside its field (the server's answer, in our words),
// and first in the review, which never calls a config it refuses clean.
function renderErrors(errors) {
  const refused = Object.entries(errors || {});
  for (const p of form.querySelectorAll(".field-error:not(.live-error)")) {
    if (p.closest("[data-kind]")) p.hidden = true;  // the submit's answer, replaced by the live one
  }
  for (const p of form.querySelectorAll("[data-live-error-for]")) {
    const messages = (errors || {})[p.dataset.liveErrorFor];
    p.hidden = !messages;
    p.textContent = messages ? messages.join(" ") : "";
    p.closest(".field").classList.toggle("has-error", Boolean(messages));
    if (messages) unfold(p);
  }
  return refused.map(([field, messages]) => {
    const where = field === "__all__" ? [] : [el("a", { href: `#field-${field}` }, field), ": "];
    const item = el("li", { className: "finding severity-error" }, el("strong", {}, "Refused: "), ...where,
      messages.join(" "));
    item.dataset.error = field;
    return item;
  });
}

// Each field shows one recommended value: the guidance's, or, where the review has a fix for this config (r for this
// dataset's size, say), that fix, so the field and the review never recommend two values.
function renderRecommended(notes) {
  const fixes = Object.assign({}, ...notes.map((note) => note.fix_text || {}));
  for (const line of form.querySelectorAll("[data-recommended-for]")) {
    const name = line.dataset.recommendedFor;
    const button = line.querySelector("button[data-use-recommended]");
    const value = Object.prototype.hasOwnProperty.call(fixes, name) ? fixes[name] : line.dataset.guidanceValue;
    line.querySelector("code").textContent = value;
    button.dataset.value = value;
    line.querySelector(".recommended-why").hidden = value === line.dataset.guidanceValue;
  }
}

function renderNotes(notes, errors) {
  const refused = renderErrors(errors);
  renderRecommended(notes);
  preflightList.replaceChildren(...refused, ...notes.map((note) => {
    const item = el("li", { className: `finding severity-${note.severity}` }, el("strong", {}, note.title),
      el("p", {}, note.message));
    item.dataset.note = note.code;
    const links = el("p", { className: "muted small" }, "Look at: ",
      ...note.parameters.flatMap((p, i) => [i ? ", " : "", el("code", {}, p)]));
    if (note.combines_with.length) {
      links.append(" (with ", ...note.combines_with.flatMap((p, i) => [i ? ", " : "", el("code", {}, p)]), ")");
    }
    const guide = el("a", { href: note.guidance_url, className: "guide-link-inline", target: "_blank", rel: "noopener" },
      "guidance");
    guide.dataset.guide = note.section.param;
    links.append(" · ", guide);
    item.append(links);
    if (note.fix_text) {
      const text = Object.entries(note.fix_text).map(([field, value]) => `${field} = ${value}`).join(", ");
      const fix = el("button", { type: "button", className: "fix" }, `Use recommended ${text}`);
      fix.addEventListener("click", () => applyFix(note.fix_text));
      item.append(el("p", {}, fix));
    }
    return item;
  }));
  if (refused.length) {
    preflightStatus.textContent = `${refused.length} value${refused.length === 1 ? "" : "s"} the config refuses: `
      + "fix them first (the run cannot start with them).";
    return;
  }
  preflightStatus.textContent = notes.length
    ? `${notes.length} note${notes.length === 1 ? "" : "s"}: the guidance would question ${notes.length === 1 ? "this value" : "these values"}.`
    : "Nothing to question: every reviewed value is within the recommended ranges.";
}

// A folded group opens to show a field that was set for the user or refused: nothing set is hidden.
function unfold(node) {
  const group = node && node.closest("details.config-group");
  if (group) group.open = true;
}

function applyFix(fixText) {
  for (const [name, text] of Object.entries(fixText)) {
    const field = input(name);
    if (field) {
      field.value = text;
      unfold(field);
      if (name === "model") syncPicker();
    }
  }
  update();
}

// The model picker: a listed model is typed into the model field (the value the run gets); typing there picks
// the matching entry, or "other".
const picker = input("model_pick");
const modelField = input("model");

function syncPicker() {
  const text = modelField.value.trim();
  const listed = [...picker.options].some((option) => option.value === text && text !== "other");
  picker.value = listed ? text : (text ? "other" : "");
}

picker.addEventListener("change", () => {
  if (picker.value === "other") {
    modelField.focus();
    return;
  }
  modelField.value = picker.value;
});
modelField.addEventListener("input", syncPicker);
if (modelField.value.trim()) syncPicker();
else if (picker.value && picker.value !== "other") modelField.value = picker.value;

// "Use recommended": the guidance's value for that field, typed in (or chosen) for the user.
form.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-use-recommended]");
  if (!button) return;
  applyFix({ [button.dataset.useRecommended]: button.dataset.value });
});

// A link to a field (the summary after a refused submit, a refusal in the review) opens its group first.
function unfoldTarget(hash) {
  const target = hash && hash.startsWith("#field-") && document.getElementById(hash.slice(1));
  if (target) unfold(target);
}
document.addEventListener("click", (event) => {
  const link = event.target.closest('a[href^="#field-"]');
  if (link) unfoldTarget(link.getAttribute("href"));
});
window.addEventListener("hashchange", () => unfoldTarget(window.location.hash));
unfoldTarget(window.location.hash);

// The fit planner's prediction for the same config: the line, the parts on hover and in the details, and, when it
// fits no live GPU worker of the queue (launching is then refused), each lever with its predicted peak and an
// Apply for those that fit; the fastest config that fits, with one Apply.
const planStatus = document.getElementById("plan-status");
const planBody = document.getElementById("plan-body");

function setText(id, text) {
  document.getElementById(id).textContent = text;
}

function pairs(id, items) {
  document.getElementById(id).replaceChildren(...items.flatMap((item) => [el("dt", {}, item.label),
    el("dd", {}, item.text)]));
}

function applyButton(apply, label) {
  const button = el("button", { type: "button", className: "fix" }, label);
  button.addEventListener("click", () => applyFix(apply));
  return button;
}

function renderPlan(plan, errors) {
  const uncalibrated = document.getElementById("plan-uncalibrated");
  if (!plan || plan.error) {
    planBody.hidden = true;
    uncalibrated.hidden = true;
    planStatus.textContent = plan ? plan.text
      : Object.keys(errors || {}).length ? "The prediction waits for a valid config (see the fields marked)."
        : "Choose a dataset and a model to see the prediction.";
    return;
  }
  planStatus.textContent = plan.calibrated ? `Calibrated on this team's runs measured on ${plan.gpu}.` :
    `No run of this team measured on ${plan.gpu} yet: the defaults fitted on docs/benchmarks.md's figures.`;
  uncalibrated.hidden = plan.calibrated;
  uncalibrated.title = plan.source;
  const text = document.getElementById("plan-text");
  text.textContent = plan.text;
  text.title = plan.parts.map((p) => `${p.label}: ${p.text}`).join("\n");
  const refusal = document.getElementById("plan-refusal");
  refusal.hidden = !plan.refusal;
  // A launch refused for its fit (at the top of the page): gone once the fields changed make it fit.
  const top = document.getElementById("form-errors");
  if (top) {
    top.querySelectorAll("[data-fit-refusal]").forEach((p) => { p.hidden = plan.fits_any !== false; });
    top.hidden = !top.querySelector("p:not([hidden])");
  }
  setText("plan-refusal-text", plan.refusal || "");
  document.getElementById("plan-levers").replaceChildren(...plan.levers.map((lever) => {
    const item = el("li", { className: lever.fits ? "fits" : "too-large" }, lever.text,
      el("span", { className: "muted small" }, lever.fits ? " · fits" : " · still too large"));
    if (lever.fits) item.append(" ", applyButton(lever.apply, "Apply"));
    return item;
  }));
  const fastest = document.getElementById("plan-fastest");
  fastest.hidden = !plan.fastest;
  setText("plan-fastest-text", plan.fastest ? plan.fastest.text : "");
  if (plan.fastest) {
    document.getElementById("plan-fastest-apply").replaceWith(
      Object.assign(applyButton(plan.fastest.apply, "Apply"), { id: "plan-fastest-apply" }));
  }
  pairs("plan-parts", plan.parts);
  pairs("plan-time-parts", plan.time_parts);
  setText("plan-rate", plan.rate);
  setText("plan-time", plan.time);
  setText("plan-mfu", plan.mfu);
  document.getElementById("plan-workers").replaceChildren(...plan.workers.map((w) => el("li", {}, w)));
  setText("plan-source", plan.source);
  planBody.hidden = false;
}

async function reviewNow() {
  const asked = ++preflightAsked;
  try {
    const response = await fetch(data.preflight_url, { method: "POST", body: new FormData(form),
      headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const answer = await response.json();
    if (asked !== preflightAsked) return;  // an older answer must not replace a newer one
    renderNotes(answer.notes, answer.errors);
    renderPlan(answer.plan, answer.errors);
  } catch (error) {
    if (asked === preflightAsked) {
      preflightStatus.textContent = `The review could not run (${error.message}).`;
      planStatus.textContent = `The prediction could not run (${error.message}).`;
    }
  }
}

function reviewSoon() {
  clearTimeout(preflightTimer);
  preflightTimer = setTimeout(reviewNow, 250);
}

function update() {
  updateEffective();
  updateDerived();
  reviewSoon();
}

// A field's "guidance" link opens that parameter's guidance page in a panel beside the form; the form keeps its typing.
const panel = document.getElementById("guidance-panel");
const panelBody = document.getElementById("guidance-panel-body");

function closeGuidance() {
  panel.hidden = true;
  document.body.classList.remove("guidance-open");
}

async function openGuidance(link) {
  panel.hidden = false;
  document.body.classList.add("guidance-open");
  panel.dataset.param = "";
  panelBody.textContent = "Loading…";
  document.getElementById("guidance-panel-open").href = link.href;
  try {
    const response = await fetch(link.href, { headers: { Accept: "text/html" } });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const article = page.getElementById("guidance-article");
    if (!article) throw new Error("no guidance in the page");
    panelBody.replaceChildren(document.importNode(article, true));
    panel.dataset.param = link.dataset.guide;
    panel.scrollTop = 0;
    const section = link.hash && panelBody.querySelector(`[id="${CSS.escape(link.hash.slice(1))}"]`);
    if (section) section.scrollIntoView({ block: "start" });
  } catch (error) {
    panelBody.textContent = `Guidance could not be loaded (${error.message}).`;
  }
}

form.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-guide]");
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
  event.preventDefault();
  openGuidance(link);
});
document.getElementById("guidance-panel-close").addEventListener("click", closeGuidance);
document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeGuidance(); });

form.addEventListener("input", update);
form.addEventListener("change", update);
update();
// A refused submit: the page opens on the summary of what to fix, each line a link to its field.
const summary = document.getElementById("error-summary");
if (summary) {
  summary.scrollIntoView({ block: "start" });
  summary.focus({ preventScroll: true });
}
