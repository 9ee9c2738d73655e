// The run page's export section: while an export is queued or running, poll /runs/<id>/exports.json and put its
// list (progress, then the files with their sizes and checksums) in place; at the run's end, the form appears.
const POLL_MS = 1500;
const section = document.getElementById("export");
const list = document.getElementById("export-list");
const formArea = document.getElementById("export-area");
let timer = null;

async function poll(withForm = false) {
  clearTimeout(timer);
  let active = true;
  try {
    const response = await fetch(section.dataset.stateUrl, { headers: { Accept: "application/json" } });
    if (response.ok) {
      const state = await response.json();
      list.innerHTML = state.html;
      if (withForm && formArea) formArea.innerHTML = state.form_html;
      active = state.active;
      section.dataset.active = active ? "1" : "0";
    }
  } catch (error) {
    // A dropped request (the server restarting, say): the next poll asks again.
  }
  if (active) timer = setTimeout(poll, POLL_MS);
}

document.addEventListener("run:ended", () => {
  if (section && list) poll(true);
});
if (section && list && section.dataset.active === "1") timer = setTimeout(poll, POLL_MS);
