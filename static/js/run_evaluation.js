// The run page's evaluation section: while an evaluation is queued or running, or still to be queued at the run's
// end (and, slower, while the run trains), poll /runs/<id>/evaluations.json and put its list in place, keeping the examples the user opened open; the
// Evaluate form too (the run may have saved a checkpoint or succeeded since), until the user starts filling it in.
const POLL_MS = 2000; // an evaluation under way
const RUN_POLL_MS = 10000; // only the run training: a checkpoint it saves can be evaluated
const section = document.getElementById("evaluation");
const list = document.getElementById("evaluation-list");
const formArea = document.getElementById("evaluate-area");
let formTouched = false;

async function poll() {
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
      if (formArea && !formTouched) formArea.innerHTML = state.form_html;
      active = state.active;
      runEnded = state.run_ended;
      section.dataset.active = active ? "1" : "0";
    }
  } catch (error) {
    // A dropped request (the server restarting, say): the next poll asks again.
  }
  if (active) setTimeout(poll, POLL_MS);
  else if (!runEnded) setTimeout(poll, RUN_POLL_MS);
}

if (formArea) {
  for (const type of ["input", "change", "focusin"]) formArea.addEventListener(type, () => { formTouched = true; });
}
if (section && list) {
  if (section.dataset.active === "1") setTimeout(poll, POLL_MS);
  else if (section.dataset.runEnded !== "1") setTimeout(poll, RUN_POLL_MS);
}
