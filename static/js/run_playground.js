// The playground: the session's status and load progress, a prompt sent to both sides with the same decoding
// settings, and each side's tokens appended as they arrive over /ws/playground/<session>/.
import { openLive, CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED } from "./live_socket.js";

const data = JSON.parse(document.getElementById("playground-data").textContent);
const $ = (selector, root = document) => root.querySelector(selector);
const form = $("#prompt-form");
let socket = null;
let counter = 0;
let live = data.state.is_live;

function showState(state) {
  const status = $("#session-status");
  status.textContent = state.status_display;
  status.className = `status status-${state.status}`;
  const progress = state.progress || {};
  const share = progress.total ? progress.done / progress.total : 0;
  $("#load-bar").style.width = `${Math.round((state.status === "ready" ? 1 : share) * 100)}%`;
  $("#load-stage").textContent = state.status === "loading" ? `loading ${progress.stage || ""}…`
    : state.status === "ready" ? `loaded in ${progress.load_s} s on ${progress.device}, context ${progress.context}`
    : state.status === "queued" ? "waiting for a worker of the run's queue" : "";
  $("#session-worker").textContent = state.worker ? `served by ${state.worker}` : "";
  live = state.is_live;
  const end = $("#session-end");
  end.hidden = live;
  if (!live) end.textContent = state.error ? `Failed: ${state.error}` : `Released: ${state.end_reason}. Load it again to go on.`;
  $("#send").disabled = !live;
  const release = $("#release-form");
  if (release) release.hidden = !live;
}

function clearErrors() {
  form.querySelectorAll("[data-error]").forEach((p) => { p.hidden = true; p.textContent = ""; });
}

function showErrors(errors) {
  for (const [field, message] of Object.entries(errors)) {
    const target = form.querySelector(`[data-error="${field}"]`) || form.querySelector('[data-error="session"]');
    target.hidden = false;
    target.textContent = target.dataset.error === field ? message : `${field}: ${message}`;
  }
}

function turn(side, id) {
  return $(`.side[data-side="${side}"] .turn[data-request="${id}"]`);
}

function addTurns(id, prompt) {
  for (const side of ["left", "right"]) {
    const li = document.createElement("li");
    li.className = "turn";
    li.dataset.request = id;
    li.dataset.done = "0";
    li.innerHTML = '<p class="asked"></p><p class="answer"></p><p class="stats"></p>';
    $(".asked", li).textContent = prompt;
    $(`.side[data-side="${side}"] .turns`).prepend(li);
  }
}

function onMessage(message) {
  if (message.type === "status") {
    showState(message);
  } else if (message.type === "token") {
    const li = turn(message.side, message.request);
    if (li) $(".answer", li).textContent += message.text;
  } else if (message.type === "reply") {
    const li = turn(message.side, message.request);
    if (!li) return;
    $(".answer", li).textContent = message.text;
    li.dataset.done = "1";
    const ttft = message.ttft_s === null ? "" : `, first token ${Math.round(message.ttft_s * 1000)} ms`;
    $(".stats", li).textContent = `${message.tokens} tokens in ${message.seconds.toFixed(2)} s${ttft}`;
  } else if (message.type === "refused") {
    document.querySelectorAll(`.turn[data-request="${message.request}"]`).forEach((li) => li.remove());
    showErrors(message.errors);
  } else if (message.type === "error") {
    showErrors({ session: message.error });
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  clearErrors();
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    showErrors({ session: "not connected; wait a moment" });
    return;
  }
  const prompt = $("#prompt").value;
  const id = `p${Date.now()}-${++counter}`;
  const number = (name) => {
    const raw = form.elements[name].value.trim();
    return raw === "" || Number.isNaN(Number(raw)) ? raw : Number(raw);
  };
  addTurns(id, prompt);
  socket.send(JSON.stringify({
    type: "generate", id, prompt, temperature: number("temperature"), top_p: number("top_p"),
    max_new_tokens: number("max_new_tokens"),
  }));
});

showState(data.state);
openLive(data.socket, {
  onOpen(s) { socket = s; $("#live-state").textContent = "live"; },
  onMessage,
  onClose(code) {
    socket = null;
    $("#live-state").textContent = code === CLOSE_NOT_FOUND ? "not found"
      : code === CLOSE_UNAUTHENTICATED ? "logged out" : "reconnecting…";
    return code !== CLOSE_NOT_FOUND && code !== CLOSE_UNAUTHENTICATED;
  },
});
