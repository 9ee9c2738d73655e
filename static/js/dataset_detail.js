// The dataset page: polls the statistics task's progress, then reloads to show them; draws the length histogram.
const profile = JSON.parse(document.getElementById("profile-data").textContent);
const statusUrl = JSON.parse(document.getElementById("profile-url").textContent);
const POLL_MS = 700;

function drawHistogram(result) {
  const el = document.getElementById("length-histogram");
  if (!el || !result) return;
  const h = result.histogram;
  const x = h.starts.map((start) => start + h.width / 2);
  const shapes = [{type: "line", x0: result.max_length, x1: result.max_length, yref: "paper", y0: 0, y1: 1,
                   line: {color: "#dc2626", dash: "dash"}}];
  Plotly.newPlot(el, [{type: "bar", x, y: h.counts, width: h.width * 0.95, marker: {color: "#2563eb"},
                       hovertemplate: "%{x} tokens: %{y} rows<extra></extra>"}],
                 {margin: {t: 10, r: 10, b: 40, l: 50}, height: 260, shapes,
                  xaxis: {title: {text: "tokens per row (dashed: max_length)"}}, yaxis: {title: {text: "rows"}}},
                 {displayModeBar: false, responsive: true});
  el.dataset.drawn = "1";
}

function showProgress(state) {
  const bar = document.getElementById("profile-bar");
  const text = document.getElementById("profile-progress");
  if (!bar || !text) return;
  const share = state.total ? state.done / state.total : 0;
  bar.style.width = `${(100 * share).toFixed(1)}%`;
  text.textContent = `${state.state}: ${state.done} of ${state.total} rows`;
}

async function poll() {
  const response = await fetch(statusUrl, {headers: {Accept: "application/json"}});
  if (!response.ok) return setTimeout(poll, POLL_MS * 3);
  const state = await response.json();
  if (state.state === "done" || state.state === "failed") {
    window.location.reload();
    return;
  }
  showProgress(state);
  setTimeout(poll, POLL_MS);
}

if (profile.state === "queued" || profile.state === "running") {
  showProgress(profile);
  setTimeout(poll, POLL_MS);
} else if (profile.state === "done") {
  drawHistogram(profile.result);
}
