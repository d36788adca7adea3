// WebSocket client for signaling protocol v1 (docs/protocol.md).
//
// Knows nothing about WebRTC or the DOM: it turns server messages into events and keeps one session alive
// (application heartbeat, reconnection with backoff, close-code policy). Every reconnect is a new session with
// a new peer id, announced by a new `welcome` event; v1 has no resume.
//
// Events (CustomEvent, payload in `detail`):
//   welcome, peer-joined, peer-left, signal, relay, error  – the server message itself
//   pong       – {id, rttMs}
//   gap        – {expected, got}: the server skipped sequence numbers (messages were lost)
//   state      – {state}: "connecting" | "open" | "reconnecting" | "closed"
//   disconnect – {code, reason, reconnectInMs}: the socket is gone; reconnectInMs is null when we stop

const BACKOFF_MIN_MS = 500;
const BACKOFF_CAP_MS = 20_000;
// A normal close (after `leave`) and 4500–4999 mean "do not come back without a change".
const STOP_CODES = new Set([1000]);

export class SignalingClient extends EventTarget {
  #room;
  #url;
  #ws = null;
  #state = 'closed';
  #stopped = false;
  #attempt = 0;
  #reconnectTimer = null;
  #lastSeq = 0;
  #heartbeatTimer = null;
  #pongTimer = null;
  #nextPingId = 1;
  #pingSentAt = new Map();
  #peerId = null;

  /**
   * @param {string} room
   * @param {{url?: string}} [options] url defaults to this page's origin.
   */
  constructor(room, { url } = {}) {
    super();
    this.#room = room;
    const origin = url ?? location.origin.replace(/^http/, 'ws');
    this.#url = `${origin}/v1/rooms/${encodeURIComponent(room)}/ws`;
  }

  get room() { return this.#room; }
  get state() { return this.#state; }
  /** The peer id of the current session, or null before the first welcome. */
  get peerId() { return this.#peerId; }

  connect() {
    this.#stopped = false;
    this.#open();
  }

  /** Leaves the room for good: sends `leave` (the server answers with close 1000) and stops reconnecting. */
  close() {
    this.#stopped = true;
    clearTimeout(this.#reconnectTimer);
    this.#stopHeartbeat();
    if (this.#ws?.readyState === WebSocket.OPEN) this.#send({ type: 'leave' });
    // Closing right away instead of waiting for the server's 1000: a page being unloaded cannot wait.
    this.#ws?.close(1000);
    this.#setState('closed');
  }

  /** @returns {boolean} false when there is no open session (signalling belongs to one session: never queued). */
  signal(to, data) { return this.#send({ type: 'signal', to, data }); }

  /** Pushes `data` through the server to `to`, or to every other peer of the room when `to` is undefined. */
  relay(data, to) { return this.#send(to === undefined ? { type: 'relay', data } : { type: 'relay', to, data }); }

  /** Sends an application ping; the answer arrives as a `pong` event carrying the round-trip time. */
  ping() {
    const id = this.#nextPingId++;
    if (!this.#send({ type: 'ping', id })) return null;
    this.#pingSentAt.set(id, performance.now());
    return id;
  }

  #open() {
    this.#setState(this.#attempt === 0 ? 'connecting' : 'reconnecting');
    const ws = new WebSocket(this.#url);
    this.#ws = ws;
    this.#lastSeq = 0;
    ws.onmessage = (ev) => this.#onMessage(ev.data);
    ws.onclose = (ev) => {
      if (this.#ws !== ws) return; // a socket we already gave up on (heartbeat timeout)
      this.#lost(ev.code, ev.reason);
    };
    // onerror is always followed by onclose, which carries the code that decides what to do.
  }

  #onMessage(raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      console.warn('signaling: ignoring a frame that is not JSON', raw);
      return;
    }
    if (typeof msg?.type !== 'string' || !Number.isInteger(msg.seq)) {
      console.warn('signaling: ignoring a message without type/seq', msg);
      return;
    }
    if (msg.seq <= this.#lastSeq) {
      console.warn(`signaling: dropping duplicate seq ${msg.seq} (last ${this.#lastSeq})`);
      return;
    }
    const expected = this.#lastSeq + 1;
    if (msg.seq !== expected) {
      // Something was lost; the protocol cannot replay it, so say so loudly and carry on.
      console.error(`signaling: seq gap, expected ${expected}, got ${msg.seq}`);
      this.#emit('gap', { expected, got: msg.seq });
    }
    this.#lastSeq = msg.seq;

    switch (msg.type) {
      case 'welcome':
        this.#attempt = 0;
        this.#peerId = msg.peer_id;
        this.#setState('open');
        this.#startHeartbeat(msg.heartbeat);
        break;
      case 'pong': {
        clearTimeout(this.#pongTimer);
        this.#pongTimer = null;
        const sentAt = this.#pingSentAt.get(msg.id);
        this.#pingSentAt.delete(msg.id);
        this.#emit('pong', { id: msg.id, rttMs: sentAt === undefined ? null : performance.now() - sentAt });
        return;
      }
      case 'error':
        console.warn(`signaling: server refused a message: ${msg.code}: ${msg.message}`);
        break;
    }
    this.#emit(msg.type, msg);
  }

  #startHeartbeat(heartbeat) {
    this.#stopHeartbeat();
    const intervalMs = heartbeat?.interval_ms;
    const timeoutMs = heartbeat?.timeout_ms;
    if (!(intervalMs > 0 && timeoutMs > 0)) return;
    const beat = () => {
      if (this.#pongTimer !== null) return; // still waiting for the previous answer
      if (this.ping() === null) return;
      this.#pongTimer = setTimeout(() => {
        console.warn(`signaling: no pong within ${timeoutMs} ms, treating the connection as dead`);
        const ws = this.#ws;
        this.#ws = null; // its late close event must not schedule a second reconnect
        ws?.close(4001, 'heartbeat-timeout');
        this.#lost(4001, 'heartbeat-timeout');
      }, timeoutMs);
    };
    // The first beat right away also gives the page a server round-trip time to show from the start.
    beat();
    this.#heartbeatTimer = setInterval(beat, intervalMs);
  }

  #stopHeartbeat() {
    clearInterval(this.#heartbeatTimer);
    clearTimeout(this.#pongTimer);
    this.#heartbeatTimer = null;
    this.#pongTimer = null;
    this.#pingSentAt.clear();
  }

  #lost(code, reason) {
    this.#stopHeartbeat();
    this.#ws = null;
    const stop = this.#stopped || STOP_CODES.has(code) || (code >= 4500 && code <= 4999);
    if (stop) {
      this.#stopped = true;
      this.#setState('closed');
      this.#emit('disconnect', { code, reason, reconnectInMs: null });
      return;
    }
    // Full jitter spreads a room's reconnects after a server restart; the floor keeps a flapping server from
    // being hammered and the cap bounds how long a user waits once it is back.
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_MIN_MS * 2 ** this.#attempt);
    const delay = BACKOFF_MIN_MS + Math.random() * (ceiling - BACKOFF_MIN_MS);
    this.#attempt += 1;
    this.#setState('reconnecting');
    this.#emit('disconnect', { code, reason, reconnectInMs: Math.round(delay) });
    this.#reconnectTimer = setTimeout(() => this.#open(), delay);
  }

  #send(msg) {
    if (this.#ws?.readyState !== WebSocket.OPEN || this.#state !== 'open') return false;
    this.#ws.send(JSON.stringify(msg));
    return true;
  }

  #setState(state) {
    if (this.#state === state) return;
    this.#state = state;
    this.#emit('state', { state });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
