// The Compare page: overlaid charts asked from the server per metric (again on every zoom), live runs appended.
import { CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED, openLive } from "./live_socket.js";

const data = JSON.parse(document.getElementById("compare-data").textContent);

const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
  "#ea580c", "#4f46e5", "#0d9488", "#b91c1c", "#a16207", "#9333ea", "#0284c7", "#15803d", "#be185d", "#525252",
  "#c2410c", "#1e3a8a"];
const GIB = 1024 ** 3;
const METRICS = Object.keys(data.metrics);
const SHOWN = new URLSearchParams(location.search).get("metric");
const SCALE = { peak_vram_bytes: 1 / GIB };
// The point message's field for each x axis.
const X_FIELD = { step: "step", tokens: "tokens_seen", epoch: "epoch" };

const state = {
  x: data.query.x,
  smooth: data.query.smooth,
  group: data.query.group,
  logY: new URLSearchParams(location.search).get("log") === "1",
  ranges: {}, // metric -> [x0, x1] while zoomed
};
const runs = data.runs.map((run, index) => ({ ...run, color: COLORS[index % COLORS.length] }));
// Each eval suite's figure per run (training/evaluation/compare.py) is an outcome the scatter offers too.
for (const suite of JSON.parse(document.getElementById("compare-evaluation").textContent).suites) {
  data.outcome_rows.push([suite.key, `${suite.name}: ${suite.label}`]);
  for (const run of runs) run.outcomes[suite.key] = suite.values[String(run.id)];
}
const byId = new Map(runs.map((run) => [run.id, run]));
// metric -> run id -> {lastStep, ema: {last, count}}: where each drawn line ends, so live points continue it.
const tails = new Map(METRICS.map((m) => [m, new Map()]));
const requests = new Map(); // metric -> AbortController of the request in flight

function params(extra) {
  const query = new URLSearchParams({ runs: data.ids, x: state.x, smooth: String(state.smooth) });
  if (SHOWN) query.set("metric", SHOWN); // a link with metric=… keeps showing only those charts
  if (state.group) query.set("group", state.group);
  for (const [key, value] of Object.entries(extra || {})) {
    if (value !== null && value !== undefined) query.set(key, String(value));
  }
  return query;
}

function updateUrl() {
  const query = params();
  if (state.logY) query.set("log", "1");
  const url = `${location.pathname}?${query}`;
  history.replaceState(null, "", url);
  document.getElementById("share-link").href = url;
}

function scaled(metric, values) {
  const factor = SCALE[metric] || 1;
  return factor === 1 ? values : values.map((v) => (v === null ? null : v * factor));
}

function layoutFor(metric) {
  const range = state.ranges[metric];
  const xTitle = { step: "step", tokens: "tokens seen", epoch: "epoch", time: "wall time (s)" }[state.x];
  return {
    height: 260, margin: { l: 56, r: 12, t: 8, b: 36 },
    font: { family: "system-ui, -apple-system, Segoe UI, sans-serif", size: 11, color: "#374151" },
    xaxis: { title: { text: xTitle, standoff: 4 }, gridcolor: "#eef0f3", zeroline: false,
      ...(range ? { range, autorange: false } : { autorange: true }) },
    yaxis: { gridcolor: "#eef0f3", zeroline: false, type: state.logY ? "log" : "linear",
      ...(metric === "tokens_per_s" ? { tickformat: "~s" } : {}) },
    showlegend: metric === METRICS[0],
    legend: { orientation: "h", x: 0, y: -0.25, yanchor: "top", font: { size: 10 } },
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
    uirevision: `${state.x}`,
  };
}

function runTraces(metric, payload) {
  const traces = [];
  for (const line of payload.runs) {
    const run = byId.get(line.id);
    const smoothed = line.smooth !== null;
    traces.push({
      x: line.raw.x, y: scaled(metric, line.raw.y), type: "scatter", mode: "lines", name: run.legend,
      legendgroup: String(run.id), showlegend: !smoothed, opacity: smoothed ? 0.25 : 1,
      line: { color: run.color, width: 1.2 }, meta: { run: run.id, kind: "raw" }, hoverinfo: smoothed ? "skip" : "all",
      hovertemplate: `%{x}<br>%{y:.4g}<extra>${run.legend}</extra>`,
    });
    if (smoothed) {
      traces.push({
        x: line.smooth.x, y: scaled(metric, line.smooth.y), type: "scatter", mode: "lines", name: run.legend,
        legendgroup: String(run.id), line: { color: run.color, width: 1.8 }, meta: { run: run.id, kind: "smooth" },
        hovertemplate: `%{x}<br>%{y:.4g}<extra>${run.legend}</extra>`,
      });
    }
  }
  return traces;
}

function groupTraces(metric, payload) {
  const traces = [];
  payload.groups.forEach((group, index) => {
    const color = COLORS[index % COLORS.length];
    const name = `${state.group}=${group.value} (${group.runs.length} run${group.runs.length === 1 ? "" : "s"})`;
    traces.push({ x: group.x, y: scaled(metric, group.min), type: "scatter", mode: "lines", line: { width: 0 },
      showlegend: false, hoverinfo: "skip", legendgroup: name, meta: { group: group.value, kind: "min" } });
    traces.push({ x: group.x, y: scaled(metric, group.max), type: "scatter", mode: "lines", line: { width: 0 },
      fill: "tonexty", fillcolor: `${color}33`, showlegend: false, hoverinfo: "skip", legendgroup: name,
      meta: { group: group.value, kind: "max" } });
    traces.push({ x: group.x, y: scaled(metric, group.mean), type: "scatter", mode: "lines", name, legendgroup: name,
      line: { color, width: 2 }, meta: { group: group.value, kind: "mean" },
      hovertemplate: `%{x}<br>mean %{y:.4g}<extra>${name}</extra>` });
  });
  return traces;
}

async function loadMetric(metric) {
  requests.get(metric)?.abort();
  const controller = new AbortController();
  requests.set(metric, controller);
  const range = state.ranges[metric];
  const query = params({ metric, x0: range ? range[0] : null, x1: range ? range[1] : null });
  let payload;
  try {
    const response = await fetch(`${data.data_url}?${query}`, { signal: controller.signal });
    payload = await response.json();
    if (!response.ok) throw new Error(`${payload.field}: ${payload.error} (allowed: ${payload.allowed})`);
  } catch (error) {
    if (error.name !== "AbortError") console.warn("compare data:", error.message);
    return;
  }
  const metricPayload = payload.metrics[metric];
  const tail = tails.get(metric);
  for (const line of metricPayload.runs) {
    tail.set(line.id, { lastStep: line.last_step, ema: line.ema && { ...line.ema } });
  }
  const el = document.getElementById(`chart-${metric}`);
  const traces = state.group ? groupTraces(metric, metricPayload) : runTraces(metric, metricPayload);
  const empty = traces.every((t) => !t.x.length);
  const layout = layoutFor(metric);
  if (empty) {
    layout.annotations = [{ text: "no points", xref: "paper", yref: "paper", x: 0.5, y: 0.5, showarrow: false,
      font: { size: 12, color: "#9ca3af" } }];
  }
  await Plotly.react(el, traces, layout, { displaylogo: false, responsive: true,
    modeBarButtonsToRemove: ["select2d", "lasso2d"] });
  for (const [runId, points] of recent) points.forEach((point) => addPoint(runId, point, metric));
  el.dataset.loaded = String(Number(el.dataset.loaded) + 1);
  if (!el.dataset.listening) {
    el.dataset.listening = "1";
    el.on("plotly_relayout", (event) => onRelayout(metric, event));
  }
}

let relayoutTimers = {};
function onRelayout(metric, event) {
  let range = null;
  if ("xaxis.range[0]" in event) range = [event["xaxis.range[0]"], event["xaxis.range[1]"]];
  else if (Array.isArray(event["xaxis.range"])) range = event["xaxis.range"];
  else if (!event["xaxis.autorange"]) return;
  if (range && state.x === "time" && typeof range[0] === "string") return;
  state.ranges[metric] = range ? range.map(Number) : null;
  clearTimeout(relayoutTimers[metric]);
  relayoutTimers[metric] = setTimeout(() => loadMetric(metric), 150);
}

function loadAll() {
  updateUrl();
  return Promise.all(METRICS.map(loadMetric));
}

// Live runs: the run page's websocket per live run; each new point extends the raw and smoothed lines. ------

const pending = new Map(); // metric -> trace index -> {x: [], y: []}

function smoothNext(ema, value) {
  const w = state.smooth;
  if (!Number.isFinite(value)) return value;
  ema.last = ema.last * w + (1 - w) * value;
  ema.count += 1;
  return ema.last / (1 - w ** ema.count);
}

function queue(metric, traceIndex, x, y) {
  if (!pending.has(metric)) pending.set(metric, new Map());
  const traces = pending.get(metric);
  if (!traces.has(traceIndex)) traces.set(traceIndex, { x: [], y: [] });
  traces.get(traceIndex).x.push(x);
  traces.get(traceIndex).y.push(y);
}

function xOf(run, point) {
  if (state.x === "time") {
    if (run.t0 === null || run.t0 === undefined) run.t0 = Date.now() / 1000; // started after the page loaded
    return Date.now() / 1000 - run.t0;
  }
  const value = point[X_FIELD[state.x]];
  return typeof value === "number" ? value : null;
}

// The latest live points of each run: a chart whose request was answered before they reached the database
// draws them again on top of the answer.
const recent = new Map();
const RECENT = 500;

function remember(runId, point) {
  if (!recent.has(runId)) recent.set(runId, []);
  const points = recent.get(runId);
  points.push(point);
  if (points.length > RECENT) points.splice(0, points.length - RECENT);
}

function addPoint(runId, point, only = null) {
  if (!only) remember(runId, point);
  if (state.group) return; // a band is recomputed on the next request, not point by point
  const run = byId.get(runId);
  for (const metric of only ? [only] : METRICS) {
    if (!(metric in point) || point[metric] === null || point[metric] === undefined) continue;
    const tail = tails.get(metric).get(runId) || { lastStep: 0, ema: { last: 0, count: 0 } };
    tails.get(metric).set(runId, tail);
    if (point.step <= tail.lastStep) continue;
    tail.lastStep = point.step;
    const x = xOf(run, point);
    if (x === null) continue;
    const raw = typeof point[metric] === "number" ? point[metric] : NaN; // "nan"/"inf" travel as strings
    const factor = SCALE[metric] || 1;
    const el = document.getElementById(`chart-${metric}`);
    if (!el.data) continue;
    el.data.forEach((trace, index) => {
      if (!trace.meta || trace.meta.run !== runId) return;
      if (trace.meta.kind === "raw") queue(metric, index, x, Number.isFinite(raw) ? raw * factor : null);
      if (trace.meta.kind === "smooth") {
        if (!tail.ema) tail.ema = { last: 0, count: 0 };
        const s = smoothNext(tail.ema, raw);
        queue(metric, index, x, Number.isFinite(s) ? s * factor : null);
      }
    });
  }
  scheduleFlush();
}

let flushScheduled = false;
function scheduleFlush() {
  if (flushScheduled) return;
  flushScheduled = true;
  requestAnimationFrame(() => {
    flushScheduled = false;
    for (const [metric, traces] of pending) {
      if (!traces.size) continue;
      const indices = [...traces.keys()];
      Plotly.extendTraces(`chart-${metric}`, {
        x: indices.map((i) => traces.get(i).x), y: indices.map((i) => traces.get(i).y),
      }, indices);
      traces.clear();
    }
  });
}

const sockets = new Map();
function setLiveState() {
  const el = document.getElementById("live-state");
  const live = [...sockets.values()].filter((s) => s.live).length;
  el.textContent = live ? `${live} run${live === 1 ? "" : "s"} live` : (sockets.size ? "all runs ended" : "");
  el.dataset.state = live ? "live" : "ended";
}

// A live run's findings join its list (keyed by code and step, shown once) and its count in the outcomes table.
function addFinding(runId, finding) {
  const list = document.getElementById(`findings-${runId}`);
  const key = `${finding.code}@${finding.step}`;
  if (!list || list.querySelector(`[data-finding="${CSS.escape(key)}"]`)) return;
  list.querySelectorAll(":scope > li.muted").forEach((li) => li.remove());
  const item = Object.assign(document.createElement("li"), { className: `finding severity-${finding.severity}` });
  item.dataset.finding = key;
  item.append(Object.assign(document.createElement("strong"), { textContent: finding.title }), " ",
    Object.assign(document.createElement("span"), { className: "muted small", textContent: `step ${finding.step}` }), " ");
  const links = Object.assign(document.createElement("span"), { className: "small" });
  finding.guidance.forEach((g, i) => {
    const link = Object.assign(document.createElement("a"), { href: g.url });
    link.append(Object.assign(document.createElement("code"), { textContent: g.param }));
    links.append(...(i ? [", ", link] : [link]));
  });
  item.append(links);
  list.append(item);
  const cell = document.querySelector(`tr[data-outcome="findings"] td[data-run="${runId}"]`);
  if (cell) cell.textContent = String(list.querySelectorAll("[data-finding]").length);
}

function follow(run) {
  const entry = { live: true };
  sockets.set(run.id, entry);
  openLive(run.ws, {
    onOpen: (socket) => {
      // the last step drawn for this run on any chart (eval points are sparser than training ones), asked for
      // again: its eval point follows its metrics point and may be what a dropped connection lost
      const drawn = Math.max(0, ...METRICS.map((m) => (tails.get(m).get(run.id) || { lastStep: 0 }).lastStep));
      socket.send(JSON.stringify({ type: "replay", after_step: Math.max(drawn - 1, 0) }));
    },
    onMessage: (message) => {
      if (message.type === "replay" || message.type === "points") {
        message.points.forEach((point) => addPoint(run.id, point));
      }
      if (message.type === "finding") {
        addFinding(run.id, message);
      } else if (message.type === "replay" && message.done) {
        message.findings.forEach((finding) => addFinding(run.id, finding));
      }
      const status = message.type === "status" ? message : (message.type === "replay" && message.done && message.status);
      if (status) {
        const badge = document.getElementById(`status-${run.id}`);
        badge.textContent = status.status.charAt(0).toUpperCase() + status.status.slice(1);
        badge.className = `status status-${status.status}`;
        if (status.is_terminal) entry.live = false;
      }
      setLiveState();
    },
    onClose: (code) => {
      if (!entry.live || code === CLOSE_UNAUTHENTICATED || code === CLOSE_NOT_FOUND) {
        entry.live = false;
        setLiveState();
        return false;
      }
      return true;
    },
  });
}

// Scatter of an outcome against a parameter -----------------------------------------------------------------

function drawScatter() {
  const param = document.getElementById("scatter-param").value;
  const outcome = document.getElementById("scatter-outcome").value;
  const points = runs.filter((run) => param && typeof run.outcomes[outcome] === "number");
  const label = data.outcome_rows.find(([key]) => key === outcome)[1];
  const values = points.map((run) => run.config[param]);
  const numeric = values.every((v) => typeof v === "number");
  Plotly.react("chart-scatter", [{
    x: values.map((v) => (numeric ? v : JSON.stringify(v))), y: points.map((run) => run.outcomes[outcome]),
    text: points.map((run) => `#${run.id}`), type: "scatter", mode: "markers+text", textposition: "top center",
    marker: { size: 10, color: points.map((run) => run.color) },
    hovertemplate: `${param} %{x}<br>${label} %{y:.4g}<extra>%{text}</extra>`,
  }], {
    height: 280, margin: { l: 56, r: 12, t: 8, b: 40 },
    xaxis: { title: { text: param || "(no parameter differs)" }, type: numeric && param === "learning_rate" ? "log" : "-" },
    yaxis: { title: { text: label } },
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
    annotations: points.length ? [] : [{ text: "no run has this outcome yet", xref: "paper", yref: "paper", x: 0.5,
      y: 0.5, showarrow: false, font: { color: "#9ca3af" } }],
  }, { displaylogo: false, responsive: true });
}

// Controls --------------------------------------------------------------------------------------------------

document.getElementById("x-axis").addEventListener("change", (event) => {
  state.x = event.target.value;
  state.ranges = {};
  loadAll();
});
const smoothInput = document.getElementById("smooth");
const showSmooth = () => { document.getElementById("smooth-value").textContent = smoothInput.value; };
smoothInput.addEventListener("input", showSmooth);
smoothInput.addEventListener("change", () => {
  showSmooth();
  state.smooth = Number(smoothInput.value);
  loadAll();
});
const logInput = document.getElementById("log-y");
logInput.checked = state.logY;
logInput.addEventListener("change", () => {
  state.logY = logInput.checked;
  updateUrl();
  for (const metric of METRICS) Plotly.relayout(`chart-${metric}`, { "yaxis.type": state.logY ? "log" : "linear" });
});
document.getElementById("group-by").addEventListener("change", (event) => {
  state.group = event.target.value;
  loadAll();
});
document.getElementById("show-all").addEventListener("change", (event) => {
  document.querySelectorAll("#params tr.param-row:not(.differs)").forEach((row) => { row.hidden = !event.target.checked; });
});
document.getElementById("scatter-param").addEventListener("change", drawScatter);
document.getElementById("scatter-outcome").addEventListener("change", drawScatter);

drawScatter();
loadAll().then(() => runs.filter((run) => run.live).forEach(follow));
