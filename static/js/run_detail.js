// The run page: live Plotly charts and status over the run's websocket (replay from the database, then live points).
import { CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED, openLive } from "./live_socket.js";

const data = JSON.parse(document.getElementById("run-data").textContent);

const STATUS_LABELS = {
  queued: "Queued", starting: "Starting", running: "Running", stopping: "Stopping",
  succeeded: "Succeeded", failed: "Failed", stopped: "Stopped", lost: "Lost",
};
const GIB = 1024 ** 3;
// Each chart and its traces; `key` is the metric point's field.
const CHARTS = [
  { id: "chart-loss", traces: [
    { key: "loss", name: "train loss", color: "#2563eb" },
    { key: "eval_loss", name: "eval loss", color: "#dc2626", markers: true },
  ] },
  { id: "chart-grad_norm", traces: [{ key: "grad_norm", name: "grad norm", color: "#7c3aed" }] },
  { id: "chart-learning_rate", traces: [{ key: "learning_rate", name: "learning rate", color: "#059669" }] },
  { id: "chart-tokens_per_s", yaxis: { tickformat: "~s" },
    traces: [{ key: "tokens_per_s", name: "tokens/s", color: "#d97706" }] },
  { id: "chart-peak_vram", yaxis: { rangemode: "tozero" }, empty: "no points yet (a CPU run reports no VRAM)",
    traces: [{ key: "peak_vram_bytes", name: "peak VRAM", color: "#0891b2", scale: 1 / GIB }] },
];

// A resumed run's curve starts with the points of the runs it continues (data.earlier, oldest first, each up to the
// step the next one resumed from): each is drawn as that run's, muted and dashed, after the run's own traces (which
// keep their places: data[0] is the run's own train loss) and before them in the legend.
const EARLIER_COLORS = { eval_loss: "#f2a7a7" };
const EARLIER_COLOR = "#9ca3af";
const EARLIER_DASHES = ["dash", "dot", "dashdot"];
const earlierRuns = new Set(data.earlier.map((part) => part.run));
for (const chart of CHARTS) {
  const own = chart.traces.map((trace) => ({ ...trace, part: "own" }));
  const earlier = data.earlier.flatMap((part, rank) => chart.traces.map((trace, index) => ({
    ...trace, part: part.run, name: part.label, hover: `run #${part.run} ${trace.name}`,
    color: EARLIER_COLORS[trace.key] || EARLIER_COLOR, dash: EARLIER_DASHES[rank % EARLIER_DASHES.length],
    legendgroup: `run-${part.run}`, legendrank: rank + 1, inLegend: index === 0,
  })));
  chart.traces = [...own, ...earlier];
}

// One series per run of the curve and metric: the steps already drawn (a point is drawn once) and the points
// waiting for the next frame.
const series = new Map();
const seriesKey = (part, key) => `${part}:${key}`;
for (const chart of CHARTS) {
  chart.traces.forEach((trace, index) => {
    series.set(seriesKey(trace.part, trace.key),
      { key: trace.key, chart, index, scale: trace.scale || 1, seen: new Set(), lastStep: -1, pending: [] });
  });
}
const ownSeries = [...series.values()].filter((s) => s.chart.traces[s.index].part === "own");
let lastStep = 0; // the highest step received: a reconnect asks for it again and what came after it
let lastSeq = 0; // the highest event seq received
let lastLossStep = 0; // the highest training step drawn: a status sent a moment ago may be a step behind it
let firstReplay = true;
let flushScheduled = false;

function number(value) {
  // Non-finite values travel as "nan"/"inf"/"-inf": drawn as a gap.
  if (typeof value === "number") return value;
  return null;
}

function addRow(row) {
  // A stored point names the run that logged it; a live one is the run's own.
  const part = earlierRuns.has(row.run) ? row.run : "own";
  for (const { key } of ownSeries) {
    if (!(key in row) || row[key] === null || row[key] === undefined) continue;
    const s = series.get(seriesKey(part, key));
    if (s.seen.has(row.step)) continue;
    s.seen.add(row.step);
    const value = number(row[key]);
    s.pending.push([row.step, value === null ? null : value * s.scale]);
  }
  lastStep = Math.max(lastStep, row.step);
  if (row.loss !== undefined && row.loss !== null) {
    lastLossStep = Math.max(lastLossStep, row.step);
    showProgress(row.step);
  }
  scheduleFlush();
}

// Status messages come on transitions only; between them each training step moves the progress on.
function showProgress(step) {
  const status = data.status;
  if (status.is_terminal || step <= status.last_step) return;
  status.last_step = step;
  if (status.total_steps) status.progress = Math.min(step / status.total_steps, 1);
  renderProgress(status);
}

function renderProgress(status) {
  setText("run-steps", `step ${status.last_step}` + (status.total_steps ? ` of ${status.total_steps}` : ""));
  const progress = status.progress === null || status.progress === undefined ? 0 : status.progress;
  document.getElementById("run-progress-bar").style.width = `${Math.round(progress * 100)}%`;
}

function scheduleFlush() {
  if (flushScheduled) return;
  flushScheduled = true;
  requestAnimationFrame(flush);
}

// Appends each chart's new points in one extendTraces call; a point older than the drawn ones re-sorts the trace.
function flush() {
  flushScheduled = false;
  for (const chart of CHARTS) {
    const el = document.getElementById(chart.id);
    const batch = chart.traces.map((trace) => series.get(seriesKey(trace.part, trace.key)));
    if (!batch.some((s) => s.pending.length)) continue;
    const inOrder = batch.every((s) => !s.pending.length || s.pending[0][0] > s.lastStep);
    if (inOrder) {
      Plotly.extendTraces(el, {
        x: batch.map((s) => s.pending.map((p) => p[0])),
        y: batch.map((s) => s.pending.map((p) => p[1])),
      }, batch.map((s) => s.index));
    } else {
      batch.forEach((s) => {
        const trace = el.data[s.index];
        const merged = trace.x.map((x, i) => [x, trace.y[i]]).concat(s.pending).sort((a, b) => a[0] - b[0]);
        trace.x = merged.map((p) => p[0]);
        trace.y = merged.map((p) => p[1]);
      });
      Plotly.react(el, el.data, el.layout);
    }
    for (const s of batch) {
      s.lastStep = s.pending.reduce((max, p) => Math.max(max, p[0]), s.lastStep);
      s.pending = [];
    }
    if (chart.showsEmpty) {
      chart.showsEmpty = false;
      Plotly.relayout(el, { annotations: chart.annotations });
    }
    el.dataset.points = String(el.data[0].x.length);
    el.dataset.earlierPoints = String(chart.traces.reduce((sum, trace, index) =>
      sum + (trace.part !== "own" && trace.key === chart.traces[0].key ? el.data[index].x.length : 0), 0));
  }
}

function initCharts() {
  const shapes = [];
  const annotations = [];
  // Where each run of the curve took over from the one before it.
  for (const part of data.earlier) {
    shapes.push({ type: "line", xref: "x", yref: "paper", x0: part.upto, x1: part.upto,
      y0: 0, y1: 1, line: { color: "#9ca3af", dash: "dot", width: 1 } });
    annotations.push({ x: part.upto, y: 1, xref: "x", yref: "paper", text: "resumed", showarrow: false,
      xanchor: "left", yanchor: "top", font: { size: 10, color: "#6b7280" } });
  }
  for (const chart of CHARTS) {
    const traces = chart.traces.map((trace) => ({
      x: [], y: [], name: trace.name, type: "scatter",
      mode: trace.markers ? "lines+markers" : "lines",
      line: { color: trace.color, width: trace.part === "own" ? 1.6 : 1.4, dash: trace.dash || "solid" },
      marker: { size: trace.part === "own" ? 5 : 4 },
      hovertemplate: "step %{x}<br>%{y:.4g}<extra>" + (trace.hover || trace.name) + "</extra>",
      ...(trace.part === "own" ? {} : { legendgroup: trace.legendgroup, legendrank: trace.legendrank,
        showlegend: trace.inLegend }),
    }));
    // Until its first point a chart says so, rather than showing bare axes.
    chart.annotations = annotations;
    chart.showsEmpty = true;
    const empty = { text: chart.empty || "no points yet", xref: "paper", yref: "paper", x: 0.5, y: 0.5,
      showarrow: false, font: { size: 12, color: "#9ca3af" } };
    Plotly.newPlot(chart.id, traces, {
      height: 230, margin: { l: 56, r: 12, t: 8, b: 36 },
      font: { family: "system-ui, -apple-system, Segoe UI, sans-serif", size: 11, color: "#374151" },
      xaxis: { title: { text: "step", standoff: 4 }, gridcolor: "#eef0f3", zeroline: false, rangemode: "tozero" },
      yaxis: { gridcolor: "#eef0f3", zeroline: false, ...chart.yaxis },
      showlegend: chart.traces.length > 1, legend: { orientation: "h", x: 1, xanchor: "right", y: 1.02, yanchor: "bottom" },
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      shapes, annotations: [...annotations, empty],
    }, { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] });
  }
}

// Status, progress and controls -----------------------------------------------------------------------------

function formatValue(value) {
  if (typeof value === "number") {
    return Number.isInteger(value) ? value.toLocaleString("en-US") : String(Number(value.toPrecision(4)));
  }
  return String(value);
}

function setText(id, text) {
  document.getElementById(id).textContent = text;
}

function applyStatus(status) {
  const badge = document.getElementById("run-status");
  badge.textContent = STATUS_LABELS[status.status] || status.status;
  badge.className = `status status-${status.status}`;
  setText("run-queue", status.queue_position ? `#${status.queue_position} in queue` : "");
  setText("run-worker", status.worker ? `on ${status.worker}` : "");
  const held = document.getElementById("run-held");
  held.hidden = !status.held_reason;
  held.textContent = status.held_reason || "";
  if (!status.is_terminal && lastLossStep > status.last_step) {
    status.last_step = lastLossStep;
    if (status.total_steps) status.progress = Math.min(lastLossStep / status.total_steps, 1);
  }
  renderProgress(status);
  const error = document.getElementById("run-error");
  error.hidden = !status.error;
  setText("run-error-class", status.error_class || "");
  setText("run-error-text", status.error || "");
  const stop = document.getElementById("stop-form");
  if (stop) stop.hidden = status.is_terminal;
  const resume = document.getElementById("resume-form");
  if (resume) {
    resume.hidden = !(data.resumable.includes(status.status) && status.last_checkpoint_step !== null);
  }
  if (status.last_checkpoint_step !== null && status.last_checkpoint_step !== undefined) {
    showCheckpoint(status.last_checkpoint_step);
  }
  renderFacts(status);
  const ended = status.is_terminal && !data.status.is_terminal;
  if (status.status === "succeeded" && data.status.status !== "succeeded") loadAdapterFiles();
  data.status = status;
  renderActions(status);
  renderElapsed();
  // The evaluation section (run_evaluation.js) asks for its form again now: the final adapter is offered first.
  if (ended) document.dispatchEvent(new CustomEvent("run:ended", { detail: status }));
}

// The header's actions follow the run's end without a reload: the playground once it has an adapter or a
// checkpoint, a sweep from it once it succeeded.
function renderActions(status) {
  const controls = document.querySelector(".run-controls");
  if (status.has_adapter && !document.getElementById("playground-link")) {
    controls.prepend(Object.assign(document.createElement("a"),
      { className: "button", id: "playground-link", href: data.playground_url, textContent: "Playground" }));
  }
  if (data.can_control && status.status === "succeeded" && !document.getElementById("sweep-from-run")) {
    const sweep = Object.assign(document.createElement("a"), { className: "button", id: "sweep-from-run",
      href: data.sweep_url, textContent: "Sweep from this run" });
    const after = document.getElementById("new-from-run") || document.getElementById("playground-link");
    if (after) after.after(sweep); else controls.prepend(sweep);
  }
}

// Elapsed time, and while it trains an ETA from its steps per second so far (the run's start to its last step).
function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${String(m).padStart(2, "0")} min` : m ? `${m} min ${String(s % 60).padStart(2, "0")} s` : `${s} s`;
}

function renderElapsed() {
  const status = data.status;
  const el = document.getElementById("run-elapsed");
  if (!el) return;
  if (!status.started_at) {
    el.textContent = "";
    return;
  }
  const end = status.finished_at || Date.now() / 1000;
  const elapsed = end - status.started_at;
  let text = `${status.is_terminal ? "took" : "elapsed"} ${duration(elapsed)}`;
  const done = status.last_step - (data.resumed_from_step || 0);
  const left = status.total_steps ? status.total_steps - status.last_step : null;
  if (!status.is_terminal && done > 0 && left !== null && left >= 0) {
    const rate = done / elapsed;
    text += ` · ${rate >= 1 ? rate.toFixed(1) : rate.toPrecision(2)} steps/s · about ${duration(left / rate)} left`;
  }
  el.textContent = text;
}
setInterval(() => { if (!data.status.is_terminal) renderElapsed(); }, 1000);

function showCheckpoint(step) {
  let note = document.getElementById("checkpoint-note");
  if (!note) {
    note = Object.assign(document.createElement("p"), { id: "checkpoint-note", className: "muted small" });
    document.getElementById("adapter-files").after(note);
  }
  note.textContent = `Last checkpoint: step ${step}`;
}

function renderFacts(status) {
  const sources = { started: status.started || {}, derived: status.derived || {} };
  const items = data.facts.filter((f) => sources[f.where][f.key] !== null && sources[f.where][f.key] !== undefined);
  if (!items.length) return;
  const list = document.getElementById("facts");
  list.replaceChildren(...items.flatMap((f) => [
    Object.assign(document.createElement("dt"), { textContent: f.label }),
    Object.assign(document.createElement("dd"), { textContent: formatValue(sources[f.where][f.key]) }),
  ]));
}

function renderVersions(versions) {
  if (!versions || !Object.keys(versions).length) return;
  document.getElementById("versions").hidden = false;
  document.getElementById("versions-list").replaceChildren(...Object.keys(versions).sort().flatMap((name) => [
    Object.assign(document.createElement("dt"), { textContent: name }),
    Object.assign(document.createElement("dd"), { textContent: String(versions[name]) }),
  ]));
}

async function loadAdapterFiles() {
  const response = await fetch(`/runs/${data.id}/adapter/`, { headers: { Accept: "application/json" } });
  if (!response.ok) return;
  const files = await response.json();
  if (!files.length) return;
  document.getElementById("adapter-files").replaceChildren(...files.map((file) => {
    const item = document.createElement("li");
    const link = Object.assign(document.createElement("a"), { href: file.url, textContent: file.name });
    link.setAttribute("download", "");
    item.append(link, " ", Object.assign(document.createElement("span"),
      { className: "muted small", textContent: `${(file.size / 1024).toFixed(1)} KB` }));
    return item;
  }));
}

// Findings: the detectors' symptoms, live from the worker (a finding is keyed by code and step, shown once) ------

function addFinding(finding) {
  const list = document.getElementById("findings");
  const key = `${finding.code}@${finding.step}`;
  if (list.querySelector(`[data-finding="${CSS.escape(key)}"]`)) return;
  clearPlaceholder(list);
  const item = Object.assign(document.createElement("li"), { className: `finding severity-${finding.severity}` });
  item.dataset.finding = key;
  item.append(Object.assign(document.createElement("strong"), { textContent: finding.title }), " ",
    Object.assign(document.createElement("span"), { className: "muted", textContent: `step ${finding.step}` }),
    Object.assign(document.createElement("p"), { textContent: finding.message }));

  if (finding.guidance.length) {
    const look = Object.assign(document.createElement("p"), { className: "muted small", textContent: "Look at: " });
    finding.guidance.forEach((g, i) => {
      const link = Object.assign(document.createElement("a"), { href: g.url });
      link.append(Object.assign(document.createElement("code"), { textContent: g.param }));
      look.append(...(i ? [", ", link] : [link]));
    });
    item.append(look);
  }
  if (finding.apply && data.can_control) {
    // Apply: the New run form from this run with the finding's change made (and said at its top).
    const link = Object.assign(document.createElement("a"), { className: "button small", href: finding.apply.url,
      textContent: `Apply: a new run with ${finding.apply.text}` });
    link.dataset.apply = "finding";
    const line = Object.assign(document.createElement("p"), { className: "apply" });
    line.append(link);
    item.append(line);
  }
  list.append(item);
  const count = list.querySelectorAll("[data-finding]").length;
  const badge = document.getElementById("findings-count");
  badge.textContent = String(count);
  badge.classList.toggle("warn", count > 0);
}

// Events, warnings, samples, log ---------------------------------------------------------------------------

function clearPlaceholder(list) {
  list.querySelectorAll(":scope > li.muted").forEach((li) => li.remove());
}

function showIfEmpty(id, text) {
  const list = document.getElementById(id);
  if (!list.children.length) list.append(Object.assign(document.createElement("li"), { className: "muted", textContent: text }));
}

function addEvent(event) {
  if (event.seq <= lastSeq) return;
  lastSeq = event.seq;
  if (event.event === "warning") {
    const list = document.getElementById("warnings");
    clearPlaceholder(list);
    const item = document.createElement("li");
    item.append(Object.assign(document.createElement("code"), { textContent: event.data.field || "" }),
      ` ${event.data.message || ""}`);
    list.append(item);
    return;
  }
  if (event.event === "started") renderVersions(event.data.versions);
  const list = document.getElementById("events");
  clearPlaceholder(list);
  const item = document.createElement("li");
  const step = event.data.step !== undefined && event.data.step !== null ? ` at step ${event.data.step}` : "";
  item.append(Object.assign(document.createElement("span"), { className: "muted small", textContent: `#${event.seq}` }),
    " ", Object.assign(document.createElement("strong"), { textContent: event.event }),
    step + (event.data.message ? ` — ${event.data.message}` : ""));
  list.append(item);
}

function addSample(sample) {
  const list = document.getElementById("samples");
  if (list.querySelector(`[data-sample="${sample.id}"]`)) return;
  clearPlaceholder(list);
  const item = document.createElement("li");
  item.dataset.sample = sample.id;
  item.append(
    Object.assign(document.createElement("span"), { className: "muted small", textContent: `step ${sample.step}` }),
    Object.assign(document.createElement("div"), { className: "prompt", textContent: sample.prompt }),
    Object.assign(document.createElement("div"), { className: "completion", textContent: sample.completion }),
  );
  list.prepend(item); // newest first
}

let logFollows = true; // the log view shows its newest lines until the user scrolls up in it

function setLog(lines) {
  const log = document.getElementById("log");
  log.textContent = lines.join("\n");
  if (logFollows) log.scrollTop = log.scrollHeight;
}

document.getElementById("log").addEventListener("scroll", (event) => {
  const log = event.target;
  logFollows = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
});

// The websocket --------------------------------------------------------------------------------------------

function setLiveState(text, state) {
  const el = document.getElementById("live-state");
  el.textContent = text;
  el.dataset.state = state;
}

function handle(message) {
  switch (message.type) {
    case "replay":
      message.points.forEach(addRow);
      if (message.done) {
        if (firstReplay) {
          // The page's server-rendered lists are replaced by the replay, which has everything up to now.
          for (const id of ["events", "warnings"]) document.getElementById(id).replaceChildren();
          firstReplay = false;
        }
        message.events.forEach(addEvent);
        showIfEmpty("events", "None yet.");
        showIfEmpty("warnings", "None.");
        message.samples.forEach(addSample);
        message.findings.forEach(addFinding);
        applyStatus(message.status);
        setLog(message.log);
        setLiveState(message.status.is_terminal ? "ended" : "live", message.status.is_terminal ? "ended" : "live");
      }
      break;
    case "points":
      message.points.forEach(addRow);
      break;
    case "event":
      addEvent(message);
      break;
    case "sample":
      addSample(message);
      break;
    case "finding":
      addFinding(message);
      break;
    case "status":
      applyStatus(message);
      if (message.is_terminal) setLiveState("ended", "ended");
      break;
    case "log":
      setLog(message.tail);
      break;
    case "error":
      console.warn("run websocket:", message.error);
      break;
    default:
      break;
  }
}

initCharts();
openLive(data.ws, {
  // From the last step again: its eval point follows its metrics point, and the connection may have dropped between
  // them (each series draws a step once, so what the page has is not drawn twice).
  onOpen: (socket) => socket.send(JSON.stringify({
    type: "replay", after_step: Math.max(lastStep - 1, 0), after_seq: lastSeq })),
  onMessage: handle,
  onClose: (code) => {
    if (code === CLOSE_UNAUTHENTICATED) {
      setLiveState("logged out: reload to log in", "error");
      return false;
    }
    if (code === CLOSE_NOT_FOUND) {
      setLiveState("run not found", "error");
      return false;
    }
    setLiveState("reconnecting…", "reconnecting");
    return true;
  },
});
