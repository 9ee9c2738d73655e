// The run page's evaluation section: while an evaluation is queued or running, or still to be queued at the run's
// end, poll /runs/<id>/evaluations.json and put its list in place, keeping the examples the user opened open.
const POLL_MS = 2000;
const section = document.getElementById("evaluation");
const list = document.getElementById("evaluation-list");

async function poll() {
  let active = true;
  try {
    const response = await fetch(section.dataset.stateUrl, { headers: { Accept: "application/json" } });
    if (response.ok) {
      const state = await response.json();
      const open = new Set([...list.querySelectorAll("details[open]")].map((d) => d.dataset.evaluation));
      list.innerHTML = state.html;
      list.querySelectorAll("details[data-evaluation]").forEach((d) => {
        if (open.has(d.dataset.evaluation)) d.open = true;
      });
      active = state.active;
      section.dataset.active = active ? "1" : "0";
    }
  } catch (error) {
    // A dropped request (the server restarting, say): the next poll asks again.
  }
  if (active) setTimeout(poll, POLL_MS);
}

if (section && list && section.dataset.active === "1") setTimeout(poll, POLL_MS);
