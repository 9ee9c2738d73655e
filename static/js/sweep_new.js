// The sweep form: shows only the chosen procedure's parameters, and asks the server what the form would create as
// the user types (250 ms after the last keystroke; an older answer never replaces a newer one): the members, what is
// held fixed, the budget, the totals, the expected GPU time and the fit planner's prediction for the member with the
// largest peak, or the errors next to the fields they name.
import { esc, fieldsText } from "./text.js";

const data = JSON.parse(document.getElementById("sweep-form-data").textContent);
const form = document.getElementById("sweep-form");
const template = document.getElementById("id_template");
const values = document.getElementById("id_values");
const status = document.getElementById("preview-status");
const body = document.getElementById("preview-body");

// While the user has not typed values, the field shows the procedure's own for this base, and they are not sent.
values.dataset.auto = values.value.trim() ? "0" : "1";

function count(n) {
  return Number(n).toLocaleString("en-US");
}

function showParams() {
  const wanted = new Set(data.template_params[template.value] || []);
  document.querySelectorAll(".param-field").forEach((el) => { el.hidden = !wanted.has(el.dataset.param); });
  values.closest(".field").hidden = template.value === data.search; // a search's members come from its space
}

function clearErrors() {
  form.querySelectorAll(".field-error").forEach((el) => el.remove());
  form.querySelectorAll(".has-error").forEach((el) => el.classList.remove("has-error"));
  const top = document.getElementById("form-errors");
  top.replaceChildren();
  top.hidden = true;
}

function showErrors(errors) {
  const top = document.getElementById("form-errors");
  for (const [name, messages] of Object.entries(errors)) {
    const field = form.querySelector(`.field[data-field="${CSS.escape(name)}"]`);
    for (const message of messages) {
      const p = Object.assign(document.createElement("p"), { className: "field-error", textContent: message });
      if (field) {
        field.classList.add("has-error");
        field.append(p);
      } else {
        top.append(p);
        top.hidden = false;
      }
    }
  }
}

function render(answer) {
  document.getElementById("preview-phase").textContent = answer.phase.title;
  document.getElementById("preview-rule").textContent = `judged by ${answer.phase.rule}`;
  const search = answer.search;
  document.getElementById("preview-members").innerHTML = search
    ? `<li><strong>${search.trials} trials</strong>, ${search.parallel} at a time: each asked of the study (TPE, seed ` +
      `${search.seed}) as another ends; the worse ones pruned at the eval steps</li>`
    : answer.members.map((m) => {
    const budget = Object.keys(m.changes || {}).filter((k) => !(k in m.values)).length
      ? ` <span class="muted">(${esc(fieldsText(m.changes))})</span>` : "";
    return `<li data-member="${esc(m.name)}"><strong>${esc(m.name)}</strong> <code>${esc(fieldsText(m.values))}</code>${budget}` +
      ` <span class="muted">· ${count(m.steps)} steps · ${count(m.tokens)} tokens</span></li>`;
  }).join("");
  document.getElementById("preview-held").innerHTML = `<code>${esc(fieldsText(answer.held))}</code>`;
  document.getElementById("preview-budget").textContent = fieldsText(answer.budget);
  const n = search ? search.trials : answer.members.length;
  document.getElementById("preview-steps").textContent = `${count(answer.total_steps)} over ${n} members`;
  document.getElementById("preview-tokens").textContent = `${count(answer.total_tokens)} at most`;
  document.getElementById("preview-later").textContent = answer.later_phases.length
    ? `the verdict, then what the procedure chains to from the winner: ${answer.later_phases.join("; ")}`
    : "the verdict";
  document.getElementById("preview-gpu").textContent = answer.gpu_time_text;
  // The fit planner's prediction for the member with the largest peak (a member that fits no GPU is an error).
  const plan = answer.plan;
  document.getElementById("preview-plan").hidden = !plan;
  if (plan) {
    document.getElementById("preview-plan-member").textContent = plan.member;
    const text = document.getElementById("preview-plan-text");
    text.textContent = plan.text;
    text.title = (plan.parts || []).map((p) => `${p.label}: ${p.text}`).join("\n");
    const badge = document.getElementById("preview-plan-uncalibrated");
    badge.hidden = Boolean(plan.error) || plan.calibrated;
    badge.title = plan.source || "";
  }
  if (values.dataset.auto === "1") values.value = answer.values_text;
  body.hidden = false;
}

let timer = null;
let asked = 0;
async function previewNow() {
  const mine = ++asked;
  const fields = new FormData(form);
  if (values.dataset.auto === "1") fields.set("values", "");
  try {
    const response = await fetch(data.preview_url, { method: "POST", body: fields, headers: { Accept: "application/json" } });
    const answer = await response.json();
    if (mine !== asked) return;
    clearErrors();
    if (Object.keys(answer.errors).length) {
      showErrors(answer.errors);
      body.hidden = true;
      status.textContent = "Nothing would be created: fix the fields marked.";
      return;
    }
    render(answer);
    status.textContent = answer.search ? "The search's space, checked against the engine."
      : `${answer.members.length} member${answer.members.length === 1 ? "" : "s"} in its first phase, each checked as a run.`;
  } catch (error) {
    if (mine === asked) status.textContent = `The preview could not run (${error.message}).`;
  }
}

function previewSoon() {
  clearTimeout(timer);
  timer = setTimeout(previewNow, 250);
}

values.addEventListener("input", () => { values.dataset.auto = values.value.trim() ? "0" : "1"; });
function showPhases() {
  const select = document.getElementById("id_phase");
  select.replaceChildren(...(data.phases[template.value] || []).map(([key, title]) => new Option(title, key)));
  select.closest(".field").hidden = select.options.length < 2;
}

template.addEventListener("change", () => {
  showParams();
  showPhases();
  values.value = ""; // another procedure's values would rarely fit this one: its own are shown instead
  values.dataset.auto = "1";
});
form.addEventListener("input", previewSoon);
form.addEventListener("change", previewSoon);
showParams();
document.getElementById("id_phase").closest(".field").hidden = document.getElementById("id_phase").options.length < 2;
previewNow();
