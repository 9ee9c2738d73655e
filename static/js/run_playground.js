// The playground: the session's status and load progress, and a chat with both sides over
// /ws/playground/<session>/: each message goes to both with the same decoding settings, the system prompt and each
// side's own history (the user's messages and that side's replies, kept here), and each side's tokens are appended
// as they arrive. One message at a time: the next is sent once both replies are in; Stop ends the replies being
// written (their text so far stays, and stays in the chat). A message sent while the model is not there (still
// loading, or released) stays in the box and goes once it is ready: Send after a release loads the same sides again
// and the chat goes on in the new session, on this page. New chat clears both histories.
import { openLive, CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED } from "./live_socket.js";

let data = JSON.parse(document.getElementById("playground-data").textContent);
const $ = (selector, root = document) => root.querySelector(selector);
const form = $("#prompt-form");
let socket = null;
let connection = 0;  // which session's socket is current: the ended one's stops reconnecting
let counter = 0;
let state = data.state;
const SIDES = ["left", "right"];
let history = { left: [], right: [] };
// The message both sides are answering: {id, prompt, waiting: the sides whose reply has not come}, or null.
let pending = null;
// The box's message waits for the model (loading, or being loaded again): sent as soon as it is ready.
let kept = false;
let loadingAgain = false;

const ready = () => state.is_live && state.status === "ready" && socket && socket.readyState === WebSocket.OPEN;

function showChat() {
  const send = $("#send");
  send.disabled = pending !== null || kept || loadingAgain;
  send.textContent = !state.is_live ? "Load again and send" : state.status === "ready" ? "Send to both"
    : "Send when loaded";
  const stop = $("#stop-reply");
  stop.hidden = pending === null;
  if (pending === null) { stop.disabled = false; stop.textContent = "Stop"; }
  const exchanges = Math.max(...SIDES.map((side) => history[side].length / 2));
  $("#chat-turns").textContent = pending ? "waiting for both replies…"
    : exchanges ? `${exchanges} turn${exchanges === 1 ? "" : "s"} in this chat` : "new chat";
  const outbox = $("#outbox");
  outbox.hidden = !kept && !loadingAgain;
  outbox.textContent = loadingAgain ? "Loading the model again; your message stays here and is sent once it is ready."
    : kept ? "Your message stays here and is sent once the model is ready." : "";
}

// The turns still being answered when the model went away: marked as not part of the chat, and the message put
// back in the box (unless something else was typed there since) to be sent again.
function dropPending(why) {
  if (!pending) return;
  for (const side of SIDES) {
    const li = turn(side, pending.id);
    if (li) { li.dataset.done = "lost"; $(".stats", li).textContent = `${why}: not part of the chat`; }
    // a side that did answer takes its reply out of its history too: both are asked again
    if (!pending.waiting.includes(side)) history[side].splice(-2, 2);
  }
  if (!$("#prompt").value.trim()) $("#prompt").value = pending.prompt;
  pending = null;
  showChat();
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function showState(next) {
  state = next;
  const status = $("#session-status");
  status.textContent = state.status_display;
  status.className = `status status-${state.status}`;
  const progress = state.progress || {};
  const share = progress.total ? progress.done / progress.total : 0;
  $("#load-bar").style.width = `${Math.round((state.status === "ready" ? 1 : share) * 100)}%`;
  $("#load-stage").textContent = state.status === "loading" ? `loading ${progress.stage || ""}…`
    : state.status === "ready" ? `loaded in ${progress.load_s} s on ${progress.device}, context ${progress.context}`
    : state.status === "queued" ? "waiting for a worker of the run's queue (it may be training a run)" : "";
  $("#session-worker").textContent = state.worker ? `served by ${state.worker}` : "";
  const hold = $("#session-hold");
  hold.hidden = !(state.is_live && progress.runs_waiting && progress.held_until);
  if (!hold.hidden) {
    hold.textContent = `A run is queued for this worker: it keeps this chat until ${clock(progress.held_until)} `
      + "(its idle time after your last message, or the longest a chat keeps a worker while runs wait), then goes "
      + "to the run.";
  }
  const end = $("#session-end");
  end.hidden = state.is_live;
  if (!state.is_live) {
    end.textContent = state.error ? `Failed: ${state.error}`
      : `Released: ${state.end_reason}. Your chat stays here: send the next message to load the model again.`;
    dropPending("the model was released before it answered");
    kept = false;
  }
  showChat();
  const release = $("#release-form");
  if (release) release.hidden = !state.is_live;
  if (kept && ready()) sendNow();
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
    if (message.session === data.session) showState(message);
  } else if (message.type === "token") {
    const li = turn(message.side, message.request);
    if (li && li.dataset.done === "0") $(".answer", li).textContent += message.text;
  } else if (message.type === "reply") {
    const li = turn(message.side, message.request);
    if (!li || li.dataset.done !== "0") return;
    $(".answer", li).textContent = message.text;
    li.dataset.done = "1";
    const ttft = message.ttft_s === null ? "" : `, first token ${Math.round(message.ttft_s * 1000)} ms`;
    $(".stats", li).textContent = message.finish_reason === "cancelled"
      ? `stopped by you after ${message.tokens} tokens`
      : `${message.tokens} tokens in ${message.seconds.toFixed(2)} s${ttft}`;
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

function sendNow() {
  kept = false;
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
    type: "generate", id, prompt, system: $("#system").value, history, temperature: number("temperature"),
    top_p: number("top_p"), max_new_tokens: number("max_new_tokens"),
  }));
}

function csrfToken() {
  const input = document.querySelector("input[name=csrfmiddlewaretoken]");
  return input ? input.value : "";
}

// The same sides loaded again after a release: the page follows the new session and keeps its chat.
async function loadAgain() {
  loadingAgain = true;
  showChat();
  try {
    const response = await fetch(data.again, { method: "POST", headers: { "X-CSRFToken": csrfToken() } });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const errors = body.errors || { session: `the model could not be loaded again (HTTP ${response.status})` };
      showErrors(Object.fromEntries(Object.entries(errors).map(([k, v]) => [k, [].concat(v).join(" ")])));
      return;
    }
    data = body;
    kept = true;
    window.history.replaceState(null, "", data.page);
    const release = $("#release-form");
    if (release) release.action = data.release;
    $("#session-end").hidden = true;
    showState(data.state);
    connect();
  } catch (error) {
    showErrors({ session: `the model could not be loaded again: ${error}` });
  } finally {
    loadingAgain = false;
    showChat();
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  clearErrors();
  if (pending) {
    showErrors({ session: "wait for both replies (or Stop them) before the next message" });
    return;
  }
  if (!state.is_live) {
    loadAgain();
  } else if (ready()) {
    sendNow();
  } else {
    kept = true;  // sent by showState (or the socket's open) once the model is ready
    showChat();
  }
});

$("#stop-reply").addEventListener("click", () => {
  if (!pending || !socket || socket.readyState !== WebSocket.OPEN) return;
  socket.send(JSON.stringify({ type: "cancel", request: pending.id }));
  $("#stop-reply").disabled = true;
  $("#stop-reply").textContent = "Stopping…";
});

$("#new-chat").addEventListener("click", () => {
  history = { left: [], right: [] };
  pending = null;  // a reply still coming finds no turn and is dropped
  document.querySelectorAll(".turns .turn").forEach((li) => li.remove());
  clearErrors();
  showChat();
  $("#prompt").focus();
});

function connect() {
  const mine = ++connection;
  if (socket) socket.close();
  socket = null;
  openLive(data.socket, {
    onOpen(s) {
      if (mine !== connection) { s.close(); return; }
      socket = s;
      $("#live-state").textContent = "live";
      showChat();
    },
    onMessage(message) { if (mine === connection) onMessage(message); },
    onClose(code) {
      if (mine !== connection) return false;
      socket = null;
      dropPending("the connection closed");
      $("#live-state").textContent = code === CLOSE_NOT_FOUND ? "not found"
        : code === CLOSE_UNAUTHENTICATED ? "logged out" : "reconnecting…";
      return code !== CLOSE_NOT_FOUND && code !== CLOSE_UNAUTHENTICATED;
    },
  });
}

showState(data.state);
connect();
