// The run list: each row's status, progress, queue position and findings follow the runs live over /ws/runs/.
// On (re)connecting the page asks for its rows as they are now, then gets each change the workers make.

import { CLOSE_UNAUTHENTICATED, openLive } from "./live_socket.js";

const table = document.querySelector("table.runs");
const shown = new Map(); // run id -> its <tr>
const newRuns = new Set();

function el(tag, props = {}, text = "") {
  const node = Object.assign(document.createElement(tag), props);
  if (text) node.textContent = text;
  return node;
}

function renderStatus(cell, row) {
  const children = [el("span", { className: `status status-${row.status}` }, row.status_display)];
  if (row.queue_position) {
    children.push(document.createTextNode(" "));
    children.push(el("span", { className: "muted queue-position", title: `queue ${row.queue}` },
      `#${row.queue_position} in queue`));
  }
  if (row.held_reason) {  // why a queued run has not started (no worker can take it now, or ever)
    children.push(document.createTextNode(" "));
    children.push(el("span", { className: "muted small held-reason" }, row.held_reason));
  }
  cell.replaceChildren(...children);
}

function renderProgress(cell, row) {
  if (row.progress === null || row.progress === undefined) {
    cell.replaceChildren(el("span", { className: "muted" }, "—"));
    return;
  }
  const bar = el("div", { className: "progress", title: `step ${row.last_step} of ${row.total_steps}` });
  const fill = el("div", { className: "bar" });
  fill.style.width = `${Math.round(row.progress * 100)}%`;
  bar.append(fill);
  cell.replaceChildren(bar, el("span", { className: "muted small" }, ` ${row.last_step}/${row.total_steps}`));
}

function renderFindings(cell, row) {
  const link = cell.closest("tr").querySelector("td a[href]").getAttribute("href");
  cell.replaceChildren(row.finding_count
    ? el("a", { className: "badge warn", href: `${link}#findings`, title: "symptoms the detectors saw" },
      String(row.finding_count))
    : el("span", { className: "muted" }, "0"));
}

function apply(row) {
  const tr = shown.get(row.id);
  if (!tr) {
    noteNew(row);
    return;
  }
  renderStatus(tr.querySelector(".col-status"), row);
  renderProgress(tr.querySelector(".col-progress"), row);
  renderFindings(tr.querySelector(".col-findings"), row);
  tr.dataset.status = row.status;
}

// A run started since the page was drawn (newer than every row): on the first page, say so and offer a reload.
function noteNew(row) {
  if (!table.dataset.firstPage || row.id <= Math.max(...shown.keys())) return;
  newRuns.add(row.id);
  const note = document.getElementById("new-runs");
  note.replaceChildren(
    document.createTextNode(`${newRuns.size} new run${newRuns.size > 1 ? "s" : ""} since this page was loaded. `),
    el("a", { href: location.pathname + location.search }, "Show"));
  note.hidden = false;
}

function setLiveState(text, state) {
  const node = document.getElementById("live-state");
  node.textContent = text;
  node.dataset.state = state;
}

if (table) {
  for (const tr of table.querySelectorAll("tbody tr[data-run]")) shown.set(Number(tr.dataset.run), tr);
  openLive(table.dataset.ws, {
    onOpen: (socket) => socket.send(JSON.stringify({ type: "watch", runs: [...shown.keys()] })),
    onMessage: (message) => {
      if (message.type === "rows") {
        message.rows.forEach(apply);
        setLiveState("live", "live");
      } else if (message.type === "row") {
        apply(message.row);
      } else if (message.type === "error") {
        console.warn("run list websocket:", message.error);
      }
    },
    onClose: (code) => {
      if (code === CLOSE_UNAUTHENTICATED) {
        setLiveState("logged out: reload to log in", "error");
        return false;
      }
      setLiveState("reconnecting…", "reconnecting");
      return true;
    },
  });
}

// The filter bar: a choice applies at once (the form is a GET, so the view lands in the URL); the search on Enter.
const filters = document.getElementById("run-filters");
if (filters) {
  for (const input of filters.querySelectorAll("select, input[type=checkbox]")) {
    input.addEventListener("change", () => filters.requestSubmit());
  }
}
