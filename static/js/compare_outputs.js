// The Compare page's outputs side by side: a page of one eval suite's prompts with the base model's output and
// every compared run's, an output that differs from the base model's (or, with none, the first run's) marked.
const evaluation = JSON.parse(document.getElementById("compare-evaluation").textContent);
const compared = new Map(JSON.parse(document.getElementById("compare-data").textContent).runs
  .map((run) => [run.id, run]));
const select = document.getElementById("outputs-suite");
const table = document.getElementById("outputs-table");
const note = document.getElementById("outputs-note");
const prev = document.getElementById("outputs-prev");
const next = document.getElementById("outputs-next");
let offset = 0;
let controller = null;

const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
};
const figureText = (value) => (typeof value !== "number" ? "—"
  : Number.isInteger(value) ? value.toLocaleString("en") : String(Number(value.toPrecision(4))));

function outputCell(shown, { metric, differs, base = false }) {
  const cell = el("td", { className: `output${base ? " base-output" : ""}${differs ? " differs" : ""}` });
  if (!shown) {
    cell.append(el("span", { className: "muted", textContent: "— not evaluated" }));
    return cell;
  }
  cell.append(el("div", { className: "text", textContent: shown.output || "(empty)" }));
  const facts = [metric === "classification" ? `predicted: ${shown.label}` : `score ${figureText(shown.score)}`];
  if (differs) facts.push("differs");
  cell.append(el("span", { className: "score", textContent: facts.join(" · ") }));
  if (differs) cell.title = "differs from the output it is compared with";
  return cell;
}

function headCell(text, figure, href) {
  const th = el("th", {}, href ? el("a", { href, textContent: text }) : text);
  if (figure) {
    th.append(el("span", { className: "figure", textContent: `${figure.label} ${figureText(figure.value)}` }));
  }
  return th;
}

function render(payload) {
  const metric = payload.suite.metric;
  const head = el("tr", {}, el("th", { textContent: "#" }), el("th", { textContent: "Prompt" }),
    el("th", { textContent: "Reference" }));
  if (payload.base) head.append(headCell("Base model", payload.base.figure));
  for (const run of payload.runs) {
    const known = compared.get(run.id);
    head.append(headCell(known ? known.legend : `#${run.id}`, run.figure, known && known.url));
  }
  const body = el("tbody");
  for (const row of payload.rows) {
    const tr = el("tr", {}, el("td", { className: "muted", textContent: String(row.index + 1) }),
      el("td", { className: "prompt", textContent: row.prompt }),
      el("td", { className: "reference", textContent: row.reference }));
    tr.dataset.index = String(row.index);
    if (payload.base) tr.append(outputCell(row.base, { metric, base: true }));
    row.outputs.forEach((shown, i) => {
      const cell = outputCell(shown, { metric, differs: Boolean(shown && shown.differs) });
      cell.dataset.run = String(payload.runs[i].id);
      tr.append(cell);
    });
    if (row.outputs.some((shown) => shown && shown.differs)) tr.classList.add("has-differences");
    body.append(tr);
  }
  table.replaceChildren(el("thead", {}, head), body);

  const last = payload.offset + payload.rows.length;
  const range = `${payload.offset + 1}–${last} of ${payload.total.toLocaleString("en")}`;
  const against = payload.base ? `Highlighted: an output that differs from the base model's (${payload.base.model}).`
    : `No base-model evaluation of this suite with the same model and decoding: highlighted, an output that differs `
      + `from #${payload.compared_to}'s.`;
  note.textContent = payload.total ? `Prompts ${range}, ${payload.limit} a page. ${against}`
    : "No outputs stored for this suite.";
  document.getElementById("outputs-range").textContent = payload.total ? range : "";
  prev.disabled = payload.offset === 0;
  next.disabled = payload.next_offset === null;
  table.dataset.suite = String(payload.suite.id);
  table.dataset.offset = String(payload.offset);
  table.dataset.loaded = String(Number(table.dataset.loaded) + 1);
}

async function load() {
  controller?.abort();
  controller = new AbortController();
  const query = new URLSearchParams({ runs: evaluation.runs, suite: select.value, offset: String(offset),
    limit: String(evaluation.page) });
  try {
    const response = await fetch(`${evaluation.outputs_url}?${query}`, { signal: controller.signal });
    const payload = await response.json();
    if (!response.ok) throw new Error(payload.field ? `${payload.field}: ${payload.error}` : response.statusText);
    render(payload);
  } catch (error) {
    if (error.name !== "AbortError") note.textContent = `The outputs could not be loaded: ${error.message}`;
  }
}

select.addEventListener("change", () => { offset = 0; load(); });
prev.addEventListener("click", () => { offset = Math.max(0, offset - evaluation.page); load(); });
next.addEventListener("click", () => { offset += evaluation.page; load(); });
load();
