// A sweep's page: its phases, members and verdicts redrawn from each state the sweep's websocket sends, each member's
// status and progress from its run's messages, and the members' train and eval loss, one line each, from their stored
// points (asked for whenever the socket (re)connects or a new member appears) and then their live ones, keyed by step.
import { CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED, openLive } from "./live_socket.js";
import { esc, fieldsText } from "./text.js";

const data = JSON.parse(document.getElementById("sweep-data").textContent);
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
  "#ea580c", "#4f46e5", "#0d9488", "#b91c1c", "#a16207", "#9333ea", "#0284c7", "#15803d", "#be185d", "#525252"];
const METRICS = { loss: "metrics", eval_loss: "eval" }; // the chart's field -> the point kind that carries it

let state = data.state;
// run id -> {name, color, loss: Map(step -> value), eval_loss: Map(step -> value)}
const lines = new Map();

function figure(value) {
  if (typeof value !== "number") return value === null || value === undefined ? "—" : String(value);
  return Number.isInteger(value) ? value.toLocaleString("en-US") : Number(value.toPrecision(4)).toString();
}
function runUrl(id) {
  return data.run_url.replace(/0\/$/, `${id}/`);
}

// Phases -------------------------------------------------------------------------------------------------------

function ruleText(phase) {
  const params = phase.rule === "confirm" ? "" : fieldsText(phase.rule_params);
  return (data.rules[phase.rule] || phase.rule) + (params ? ` (${params})` : "");
}

function memberRow(m) {
  const progress = typeof m.progress === "number" ? Math.round(m.progress * 100) : 0;
  const note = m.outcome_note ? `<span class="outcome-note">${esc(m.outcome_note)}</span>` : "";
  const findings = m.findings ? `<span class="badge warn">${m.findings}</span>` : '<span class="muted">0</span>';
  const run = m.run_id ? `<a href="${runUrl(m.run_id)}">#${m.run_id}</a>` : '<span class="muted">—</span>';
  return `<tr data-member="${m.id}" data-run="${m.run_id || ""}"${m.winner ? ' class="winner"' : ""}>` +
    `<td>${esc(m.name)}</td><td class="small"><code>${esc(fieldsText(m.values))}</code></td>` +
    `<td><span class="status status-${esc(m.status)}" data-status-for="${m.id}">${esc(m.status)}</span>${note}</td>` +
    `<td><div class="progress"><div class="bar" style="width: ${progress}%"></div></div> ` +
    `<span class="muted small">${m.last_step || 0}/${m.steps}</span></td>` +
    `<td>${figure(m.best_eval_loss)}</td><td>${findings}</td><td>${run}</td></tr>`;
}

// A winner at the edge of the values swept: said, and, for a member of the team, a sweep of the next values offered,
// built on the winner's run (the same link the page's first draw carries).
function beyondNote(phase) {
  const beyond = phase.beyond;
  if (!beyond) return "";
  let link = "";
  if (beyond.values.length && beyond.base_run && data.new_url) {
    const query = new URLSearchParams({ template: beyond.template });
    if (beyond.phase) query.set("phase", beyond.phase);
    query.set("base_run", String(beyond.base_run));
    query.set("values", beyond.values.join(", "));
    link = ` <a class="button" href="${data.new_url}?${esc(query.toString())}">Sweep these values</a>`;
  }
  return `<div class="beyond" data-beyond="${phase.index}"><span>${esc(beyond.text)}</span>${link}</div>`;
}

function phaseSection(phase) {
  const verdict = phase.verdict;
  const verdictClass = !verdict ? " undecided" : (!verdict.winner ? " failed" : "");
  const verdictText = verdict ? verdict.text : "No verdict yet: the rule decides once its members have ended.";
  return `<section class="card phase${verdict && verdict.winner ? " decided" : ""}" data-phase="${phase.index}">` +
    `<h2>Phase ${phase.index + 1}: ${esc(phase.title)} <span class="muted small">${esc(phase.key)}</span></h2>` +
    `<dl class="phase-facts"><dt>Rule</dt><dd class="phase-rule">${esc(ruleText(phase))}</dd>` +
    `<dt>Held fixed</dt><dd class="phase-held">${esc(fieldsText(phase.held))}</dd>` +
    `<dt>Budget</dt><dd class="phase-budget">${esc(fieldsText(phase.budget))}</dd></dl>` +
    `<div class="verdict${verdictClass}" data-verdict="${phase.index}">${esc(verdictText)}</div>` +
    beyondNote(phase) + `<table class="table compact members"><thead><tr><th>Member</th><th>Sets</th><th>Status</th><th>Progress</th>` +
    `<th>Best eval loss</th><th>Findings</th><th>Run</th></tr></thead><tbody>` +
    phase.members.map(memberRow).join("") + "</tbody></table></section>";
}

function currentMembers() {
  return state.phases.length ? state.phases[state.phases.length - 1].members : [];
}

function setHidden(id, hidden) {
  const el = document.getElementById(id);
  if (el) el.hidden = hidden;
}

function renderState() {
  document.getElementById("phases").innerHTML = state.phases.length
    ? state.phases.map(phaseSection).join("") : '<section class="card empty"><p>No phase yet.</p></section>';
  const badge = document.getElementById("sweep-status");
  badge.textContent = state.status_label;
  badge.className = `status status-${state.status}`;
  const verdict = document.getElementById("sweep-verdict");
  verdict.textContent = state.verdict || "No verdict yet.";
  verdict.className = `verdict${!state.verdict ? " undecided" : (state.status === "failed" ? " failed" : "")}`;
  setHidden("sweep-winner", !state.winner);
  if (state.winner) {
    document.getElementById("sweep-winner-name").textContent = state.winner.name;
    document.getElementById("sweep-winner-values").textContent = fieldsText(state.winner.values);
    const link = document.getElementById("sweep-winner-run");
    if (link && state.winner.run_id) {
      link.href = runUrl(state.winner.run_id);
      link.textContent = `run #${state.winner.run_id}`;
    }
  }
  const error = document.getElementById("sweep-error");
  error.textContent = state.error || "";
  error.hidden = !state.error;
  const findings = state.phases.reduce((n, p) => n + p.members.reduce((k, m) => k + (m.findings || 0), 0), 0);
  document.getElementById("sweep-findings").textContent = String(findings);
  renderCounts();
  // The buttons, as the server decides them on the first draw.
  const current = currentMembers();
  const lost = current.some((m) => ["lost", "stopped", "failed"].includes(m.status) && !m.outcome);
  setHidden("stop-form", state.is_terminal);
  setHidden("resume-form", state.status === "finished" || !(["stopped", "failed"].includes(state.status) || lost));
  setHidden("confirm-form", state.status !== "confirming");
  setHidden("apply", !state.winner);
}

function renderCounts() {
  const members = currentMembers();
  const byStatus = {};
  members.forEach((m) => { byStatus[m.status] = (byStatus[m.status] || 0) + 1; });
  const parts = Object.entries(byStatus).map(([s, n]) => `${n} ${s}`);
  document.getElementById("sweep-counts").textContent = members.length
    ? `phase ${state.phases.length}: ${members.length} member${members.length === 1 ? "" : "s"}, ${parts.join(", ")}` : "";
}

function memberOfRun(runId) {
  for (const phase of state.phases) {
    const m = phase.members.find((x) => x.run_id === runId);
    if (m) return m;
  }
  return null;
}

// A run's status message: its member's row moves on without waiting for the next state.
function onRunStatus(runId, status) {
  const m = memberOfRun(runId);
  if (!m) return;
  if (!m.outcome) m.status = status.status; // an early end (diverged, pruned) stays what the sweep said
  m.run_status = status.status;
  m.progress = status.progress;
  m.last_step = status.last_step;
  const row = document.querySelector(`tr[data-member="${m.id}"]`);
  if (!row) return;
  row.outerHTML = memberRow(m);
  renderCounts();
}

function onRunFinding(runId) {
  const m = memberOfRun(runId);
  if (!m) return;
  m.findings = (m.findings || 0) + 1;
  const row = document.querySelector(`tr[data-member="${m.id}"]`);
  if (row) row.outerHTML = memberRow(m);
  const total = document.getElementById("sweep-findings");
  total.textContent = String(Number(total.textContent) + 1);
}

// Charts -------------------------------------------------------------------------------------------------------

function lineFor(runId) {
  if (!lines.has(runId)) {
    lines.set(runId, { color: COLORS[lines.size % COLORS.length], loss: new Map(), eval_loss: new Map() });
  }
  return lines.get(runId);
}

// A member's legend: its name, and its phase's key once the sweep has several phases.
function lineName(runId) {
  const m = memberOfRun(runId);
  if (!m) return `#${runId}`;
  const phase = state.phases.find((p) => p.members.includes(m));
  return state.phases.length > 1 && phase ? `${phase.key} · ${m.name}` : m.name;
}

function numberOrNull(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function layout(metric) {
  const empty = [...lines.values()].every((l) => !l[metric].size);
  return {
    height: 260, margin: { l: 56, r: 12, t: 8, b: 36 },
    font: { family: "system-ui, -apple-system, Segoe UI, sans-serif", size: 11, color: "#374151" },
    xaxis: { title: { text: "step", standoff: 4 }, gridcolor: "#eef0f3", zeroline: false },
    yaxis: { gridcolor: "#eef0f3", zeroline: false },
    showlegend: true, legend: { orientation: "h", x: 0, y: -0.25, yanchor: "top", font: { size: 10 } },
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", uirevision: "sweep",
    annotations: empty ? [{ text: "no points yet", xref: "paper", yref: "paper", x: 0.5, y: 0.5, showarrow: false,
      font: { size: 12, color: "#9ca3af" } }] : [],
  };
}

function traces(metric) {
  return [...lines.entries()].map(([runId, line]) => {
    const steps = [...line[metric].keys()].sort((a, b) => a - b);
    const name = lineName(runId);
    return {
      x: steps, y: steps.map((s) => line[metric].get(s)), type: "scatter", mode: metric === "eval_loss" ? "lines+markers" : "lines",
      name, line: { color: line.color, width: 1.5 }, marker: { size: 5 }, meta: { run: runId },
      hovertemplate: `step %{x}<br>%{y:.4g}<extra>${esc(name)}</extra>`,
    };
  });
}

let drawScheduled = false;
function drawSoon() {
  if (drawScheduled) return;
  drawScheduled = true;
  requestAnimationFrame(() => {
    drawScheduled = false;
    for (const metric of Object.keys(METRICS)) {
      const el = document.getElementById(`chart-${metric}`);
      Plotly.react(el, traces(metric), layout(metric), { displaylogo: false, responsive: true,
        modeBarButtonsToRemove: ["select2d", "lasso2d"] });
      el.dataset.points = String([...lines.values()].reduce((n, l) => n + l[metric].size, 0));
    }
  });
}

function addPoints(runId, points) {
  const line = lineFor(runId);
  for (const point of points) {
    for (const [metric, kind] of Object.entries(METRICS)) {
      if (point.kind && point.kind !== kind) continue;
      if (point[metric] === null || point[metric] === undefined) continue;
      line[metric].set(point.step, numberOrNull(point[metric]));
    }
  }
  drawSoon();
}

async function loadPoints(runIds) {
  if (!runIds.length) return;
  runIds.forEach(lineFor); // a legend entry, and a colour kept, before the points come
  try {
    const response = await fetch(`${data.points_url}?runs=${runIds.join(",")}`, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const answer = await response.json();
    for (const [runId, series] of Object.entries(answer.runs)) {
      const line = lineFor(Number(runId));
      series.loss.forEach(([step, value]) => line.loss.set(step, numberOrNull(value)));
      series.eval_loss.forEach(([step, value]) => line.eval_loss.set(step, numberOrNull(value)));
    }
  } catch (error) {
    console.warn("sweep points:", error.message);
  }
  drawSoon();
}

// The socket ---------------------------------------------------------------------------------------------------

const live = document.getElementById("live-state");
let reload = true; // after each (re)connect the first state reloads every member's stored points

function onState(next) {
  const known = new Set(state.run_ids);
  state = next;
  renderState();
  const ids = reload ? state.run_ids : state.run_ids.filter((id) => !known.has(id) || !lines.has(id));
  reload = false;
  loadPoints(ids);
}

openLive(data.ws, {
  onOpen: () => {
    reload = true;
    live.textContent = "live";
    live.dataset.state = "live";
  },
  onMessage: (message) => {
    if (message.type === "state") onState(message.state);
    else if (message.type === "run") {
      const body = message.message;
      if (body.type === "points") addPoints(message.run_id, body.points);
      else if (body.type === "status") onRunStatus(message.run_id, body);
      else if (body.type === "finding") onRunFinding(message.run_id);
    }
  },
  onClose: (code) => {
    if (code === CLOSE_UNAUTHENTICATED || code === CLOSE_NOT_FOUND) {
      live.textContent = code === CLOSE_NOT_FOUND ? "sweep not found" : "logged out";
      live.dataset.state = "error";
      return false;
    }
    live.textContent = "reconnecting…";
    live.dataset.state = "reconnecting";
    return true;
  },
});

renderCounts();
state.run_ids.forEach(lineFor);
drawSoon();
