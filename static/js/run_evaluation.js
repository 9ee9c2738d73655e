// The run page's evaluation section: while an evaluation is queued or running, or still to be queued at the run's
// end (and, slower, while the run trains), poll /runs/<id>/evaluations.json and put its list in place, keeping the examples the user opened open; the
// Evaluate form too (the run may have saved a checkpoint or succeeded since), until the user starts filling it in.
const POLL_MS = 2000; // an evaluation under way
const RUN_POLL_MS = 10000; // only the run training: a checkpoint it saves can be evaluated
const section = document.getElementById("evaluation");
const list = document.getElementById("evaluation-list");
const formArea = document.getElementById("evaluate-area");
let formTouched = false;
let timer = null;

// The form again from the server; at the run's end even if touched (the final adapter is new, and first), keeping
// the suite chosen.
function replaceForm(html, force) {
  if (!formArea || (formTouched && !force)) return;
  const suite = formArea.querySelector("[name=suite]");
  const chosen = suite ? suite.value : null;
  formArea.innerHTML = html;
  const again = formArea.querySelector("[name=suite]");
  if (again && chosen && [...again.options].some((o) => o.value === chosen)) again.value = chosen;
}

async function poll(force = false) {
  clearTimeout(timer);
  let active = true;
  let runEnded = section.dataset.runEnded === "1";
  try {
    const response = await fetch(section.dataset.stateUrl, { headers: { Accept: "application/json" } });
    if (response.ok) {
      const state = await response.json();
      const open = new Set([...list.querySelectorAll("details[open]")].map((d) => d.dataset.evaluation));
      list.innerHTML = state.html;
      list.querySelectorAll("details[data-evaluation]").forEach((d) => {
        if (open.has(d.dataset.evaluation)) d.open = true;
      });
      replaceForm(state.form_html, force);
      active = state.active;
      runEnded = state.run_ended;
      section.dataset.active = active ? "1" : "0";
    }
  } catch (error) {
    // A dropped request (the server restarting, say): the next poll asks again.
  }
  if (active) timer = setTimeout(poll, POLL_MS);
  else if (!runEnded) timer = setTimeout(poll, RUN_POLL_MS);
}

if (formArea) {
  for (const type of ["input", "change", "focusin"]) formArea.addEventListener(type, () => { formTouched = true; });
}
// The run ended (run_detail.js): its final adapter can be evaluated now, first in the form's list; ask at once.
document.addEventListener("run:ended", () => {
  if (section && list) poll(true);
});
if (section && list) {
  if (section.dataset.active === "1") timer = setTimeout(poll, POLL_MS);
  else if (section.dataset.runEnded !== "1") timer = setTimeout(poll, RUN_POLL_MS);
}
