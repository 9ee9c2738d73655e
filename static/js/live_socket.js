// One live websocket that reconnects (1 s, doubling to 10 s): the run page, the run list and Compare use it.
// onOpen(socket) asks for what the page lacks; onMessage gets each parsed message; onClose(code) returns false to
// stay closed (logged out, not found, nothing left to follow).

export const CLOSE_UNAUTHENTICATED = 4401;
export const CLOSE_NOT_FOUND = 4404;

export function openLive(path, { onOpen, onMessage, onClose }) {
  let retryMs = 1000;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${path}`);
    socket.addEventListener("open", () => {
      retryMs = 1000;
      onOpen(socket);
    });
    socket.addEventListener("message", (event) => onMessage(JSON.parse(event.data)));
    socket.addEventListener("close", (event) => {
      if (!onClose(event.code)) return;
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 10000);
    });
  }
  connect();
}
