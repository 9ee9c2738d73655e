// The playground: the session's status and load progress, and a chat with both sides over
// /ws/playground/<session>/: each message goes to both with the same decoding settings and with each side's own
// history (the user's messages and that side's replies, kept here), and each side's tokens are appended as they
// arrive. One message at a time: the next is sent once both replies are in. New chat clears both histories.
import { openLive, CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED } from "./live_socket.js";

const data = JSON.parse(document.getElementById("playground-data").textContent);
const $ = (selector, root = document) => root.querySelector(selector);
const form = $("#prompt-form");
let socket = null;
let counter = 0;
let live = data.state.is_live;
const SIDES = ["left", "right"];
let history = { left: [], right: [] };
// The message both sides are answering: {id, prompt, waiting: the sides whose reply has not come}, or null.
let pending = null;

function showChat() {
  $("#send").disabled = !live || pending !== null;
  const exchanges = Math.max(...SIDES.map((side) => history[side].length / 2));
  $("#chat-turns").textContent = pending ? "waiting for both replies…"
    : exchanges ? `${exchanges} turn${exchanges === 1 ? "" : "s"} in this chat` : "new chat";
}

// The turns still being answered, marked as not part of the chat (the socket closed, the model was released).
function dropPending(why) {
  if (!pending) return;
  for (const side of pending.waiting) {
    const li = turn(side, pending.id);
    if (li) { li.dataset.done = "lost"; $(".stats", li).textContent = `${why}: not part of the chat`; }
  }
  pending = null;
  showChat();
}

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
  if (!live) dropPending("the model was released");
  showChat();
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
  for (const side of SIDES) {
    const li = document.createElement("li");
    li.className = "turn";
    li.dataset.request = id;
    li.dataset.done = "0";
    li.innerHTML = '<p class="asked"></p><p class="answer"></p><p class="stats"></p>';
    $(".asked", li).textContent = prompt;
    $(`.side[data-side="${side}"] .turns`).append(li);
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
    if (!li || li.dataset.done !== "0") return;
    $(".answer", li).textContent = message.text;
    li.dataset.done = "1";
    const ttft = message.ttft_s === null ? "" : `, first token ${Math.round(message.ttft_s * 1000)} ms`;
    $(".stats", li).textContent = `${message.tokens} tokens in ${message.seconds.toFixed(2)} s${ttft}`;
    history[message.side].push({ role: "user", content: $(".asked", li).textContent },
                               { role: "assistant", content: message.text });
    if (pending && pending.id === message.request) {
      pending.waiting = pending.waiting.filter((side) => side !== message.side);
      if (!pending.waiting.length) pending = null;
    }
    showChat();
  } else if (message.type === "refused") {
    document.querySelectorAll(`.turn[data-request="${message.request}"]`).forEach((li) => li.remove());
    if (pending && pending.id === message.request) {
      if (!$("#prompt").value) $("#prompt").value = pending.prompt;  // to correct and send again
      pending = null;
    }
    showChat();
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
  if (pending) {
    showErrors({ session: "wait for both replies before the next message" });
    return;
  }
  const prompt = $("#prompt").value;
  const id = `p${Date.now()}-${++counter}`;
  const number = (name) => {
    const raw = form.elements[name].value.trim();
    return raw === "" || Number.isNaN(Number(raw)) ? raw : Number(raw);
  };
  addTurns(id, prompt);
  pending = { id, prompt, waiting: [...SIDES] };
  $("#prompt").value = "";
  showChat();
  socket.send(JSON.stringify({
    type: "generate", id, prompt, history, temperature: number("temperature"), top_p: number("top_p"),
    max_new_tokens: number("max_new_tokens"),
  }));
});

$("#new-chat").addEventListener("click", () => {
  history = { left: [], right: [] };
  pending = null;  // a reply still coming finds no turn and is dropped
  document.querySelectorAll(".turns .turn").forEach((li) => li.remove());
  clearErrors();
  showChat();
  $("#prompt").focus();
});

showState(data.state);
openLive(data.socket, {
  onOpen(s) { socket = s; $("#live-state").textContent = "live"; },
  onMessage,
  onClose(code) {
    socket = null;
    dropPending("the connection closed");
    $("#live-state").textContent = code === CLOSE_NOT_FOUND ? "not found"
      : code === CLOSE_UNAUTHENTICATED ? "logged out" : "reconnecting…";
    return code !== CLOSE_NOT_FOUND && code !== CLOSE_UNAUTHENTICATED;
  },
});
