// Signaling client for protocol v1 (docs/protocol.md) over any of its transports (transports.js).
//
// Knows nothing about WebRTC or the DOM. It keeps one session alive across connections: transports tried in
// order with no delay (WebSocket, SSE + POST, long polling), resume after a drop with the session token and
// the last seq processed, every seq processed exactly once, client messages numbered (cseq) and kept until
// the server's `received` covers them, heartbeats both ways, backoff (backoff.js) and the close-code policy.
//
// Events (CustomEvent, payload in `detail`):
//   welcome, peer-joined, peer-left, signal, relay, error, resumed  – the server message itself. A `welcome`
//                means a new session (first join, or a resume that failed: `recovered: false`), so a new
//                peer id: peer connections of the old session are dead.
//   pong       – {id, rttMs, received}
//   gap        – {expected, got}: the server skipped sequence numbers; the client resumes from its last seq
//   state      – {state, transport}: state is "connecting" | "open" | "reconnecting" | "closed"
//   transport  – {transport}: the transport now carrying the session ("ws" | "sse" | "longpoll" | "shortpoll")
//   disconnect – {code, reason, reconnectInMs}: a connection (or a whole attempt) ended; null = stopped

import { backoffDelayMs } from './backoff.js';
import { DEFAULT_ORDER, TRANSPORTS } from './transports.js';

/** A transport that has produced nothing after this long is given up for the next one. */
const CONNECT_TIMEOUT_MS = 5000;
/** Until a welcome says otherwise (protocol defaults), for request deadlines. */
const DEFAULT_HEARTBEAT = { interval_ms: 10_000, timeout_ms: 5000 };
/** Client messages waiting for the server's acknowledgement (or for a connection) at most. */
const MAX_UNACKED = 1000;

/** 1000 (after `leave`) and 4500–4999 mean "do not come back without a change"; anything else reconnects. */
export function isStopCode(code) {
  return code === 1000 || (code >= 4500 && code <= 4999);
}

/** 4000–4499: the server asked the client to go away for a while (back off before coming back). */
function serverAskedToWait(code) {
  return code >= 4000 && code <= 4499;
}

export class SignalingClient extends EventTarget {
  #room;
  #origin;
  /** The join token (a secret): only ever handed to the transports, never logged or exposed. */
  #joinToken;
  #order;
  #factories;
  #state = 'closed';
  #stopped = true;

  /** The session: {token, url, resume_window_ms} of the last welcome, or null before the first. */
  #session = null;
  #peerId = null;
  #heartbeat = DEFAULT_HEARTBEAT;
  #lastSeq = 0;

  /** Client messages not yet covered by the server's `received`: [{cseq, msg}], oldest first. */
  #unacked = [];
  #cseq = 0;

  /** The connection being tried or in use: {transport, kind, established, ready, sentUpTo}. */
  #conn = null;
  #kind = null;
  /** Index into #order of the transport the current attempt is trying. */
  #tryIndex = 0;
  /** Failed attempts since the last connection that worked (the backoff exponent). */
  #attempt = 0;
  #connectTimer = null;
  #retryTimer = null;
  /** Connections tried so far (every transport of every attempt): how often the server was asked to join. */
  #connections = 0;

  #heartbeatTimer = null;
  #pongTimer = null;
  #nextPingId = 1;
  #pingSentAt = new Map();

  /**
   * @param {string} room
   * @param {{origin?: string, transports?: string[], joinToken?: string | null, factories?: object}} [options]
   *   origin defaults to this page's (http or https); transports to ws, sse, longpoll (shortpoll is allowed
   *   when asked for); joinToken is sent on every join and resume (servers that need none ignore it);
   *   factories (for tests) replaces transports.js's TRANSPORTS.
   */
  constructor(room, { origin, transports, joinToken = null, factories = TRANSPORTS } = {}) {
    super();
    this.#room = room;
    this.#joinToken = joinToken || null;
    this.#origin = origin ?? location.origin;
    this.#factories = factories;
    const order = (transports ?? DEFAULT_ORDER).filter((t) => Object.hasOwn(factories, t));
    if (order.length === 0) throw new Error(`no known transport in ${JSON.stringify(transports)}`);
    this.#order = order;
  }

  get room() { return this.#room; }
  get state() { return this.#state; }
  /** The peer id of the current session, or null before the first welcome. */
  get peerId() { return this.#peerId; }
  /** The transport carrying (or, while connecting, being tried for) the session. */
  get transport() { return this.#kind; }
  /** The transports tried on every attempt, in order. */
  get transports() { return [...this.#order]; }
  /** Client messages sent but not yet acknowledged by the server. */
  get unacked() { return this.#unacked.length; }
  /** The current session's secret token (authorises `GET /v1/ice`), or null before the first welcome. */
  get sessionToken() { return this.#session?.token ?? null; }
  /** Connections tried so far, over every transport and attempt (a refused join must leave this at 1). */
  get connections() { return this.#connections; }

  connect() {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#attemptNow();
  }

  /**
   * Drops the current connection as a network failure would (no `leave`, no normal close), so the client
   * resumes at once. For tests and for trying resume out by hand.
   */
  dropConnection() {
    this.#drop(4000, 'dropped by the page');
  }

  /** Leaves the room for good: sends `leave` (the server answers with close 1000) and stops reconnecting. */
  close() {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#connectTimer);
    this.#stopHeartbeat();
    const conn = this.#conn;
    this.#conn = null;
    if (conn?.ready) conn.transport.leave();
    else conn?.transport.close(1000);
    this.#setState('closed');
  }

  /**
   * Signalling for `to`. Kept (and sent again after a resume) until the server acknowledges it.
   * @returns {boolean} false when there is no session to send it in (before the first welcome, stopped).
   */
  signal(to, data) { return this.#enqueue({ type: 'signal', to, data }); }

  /** Pushes `data` through the server to `to`, or to every other peer of the room when `to` is undefined. */
  relay(data, to) { return this.#enqueue(to === undefined ? { type: 'relay', data } : { type: 'relay', to, data }); }

  /**
   * Sends an application ping now; the answer arrives as a `pong` event carrying the round-trip time.
   * Pings are not numbered (a stale ping is not worth sending again).
   */
  ping() {
    const conn = this.#conn;
    if (!conn?.ready) return null;
    const id = this.#nextPingId++;
    if (!conn.transport.send({ type: 'ping', id })) return null;
    this.#pingSentAt.set(id, performance.now());
    return id;
  }

  // --- connecting -------------------------------------------------------------------------------------

  /** One attempt: the transports in order, each as soon as the previous one failed. */
  #attemptNow() {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#tryIndex = 0;
    this.#tryTransport();
  }

  #tryTransport() {
    if (this.#stopped) return;
    const kind = this.#order[this.#tryIndex];
    if (kind === undefined) {
      this.#retryLater(1006, 'no transport connected');
      return;
    }
    this.#kind = kind;
    this.#setState(this.#session ? 'reconnecting' : 'connecting');
    const conn = { kind, established: false, ready: false, sentUpTo: 0, transport: null };
    this.#conn = conn;
    this.#connections += 1;
    const options = {
      origin: this.#origin,
      room: this.#room,
      resume: this.#session && { token: this.#session.token, after: this.#lastSeq },
      joinToken: this.#joinToken,
      session: () => this.#session,
      after: () => this.#lastSeq,
      deadlineMs: () => this.#heartbeat.interval_ms + this.#heartbeat.timeout_ms,
    };
    conn.transport = this.#factories[kind](options, {
      message: (msg) => this.#onMessage(conn, msg),
      end: (info) => this.#onEnd(conn, info),
      interrupted: () => { if (this.#conn === conn) this.#setState('reconnecting'); },
    });
    clearTimeout(this.#connectTimer);
    this.#connectTimer = setTimeout(() => {
      if (this.#conn !== conn || conn.established) return;
      console.warn(`signaling: ${kind} produced nothing within ${CONNECT_TIMEOUT_MS} ms, trying the next transport`);
      conn.transport.close(4000, 'connect-timeout');
      this.#onEnd(conn, { code: 1006, reason: 'connect timeout', server: false });
    }, CONNECT_TIMEOUT_MS);
  }

  /** The transport works: this attempt succeeded. */
  #established(conn) {
    conn.established = true;
    clearTimeout(this.#connectTimer);
    this.#attempt = 0;
    this.#setState('open');
    this.#emit('transport', { transport: conn.kind });
  }

  /** The connection can carry client messages: (re)start the heartbeat and send what is waiting. */
  #ready(conn, sentUpTo) {
    conn.ready = true;
    conn.sentUpTo = sentUpTo;
    this.#flush();
    this.#startHeartbeat();
  }

  #onEnd(conn, { code, reason, server }) {
    if (this.#conn !== conn) return; // a connection we already gave up on
    this.#conn = null;
    clearTimeout(this.#connectTimer);
    this.#stopHeartbeat();
    if (this.#stopped) return;
    if (server && isStopCode(code)) {
      this.#stop(code, reason);
      return;
    }
    if (!conn.established) {
      if (server && serverAskedToWait(code)) {
        this.#retryLater(code, reason);
      } else {
        // Refused, blocked or unreachable: the next transport, with no delay.
        this.#tryIndex += 1;
        this.#tryTransport();
      }
      return;
    }
    if (server && serverAskedToWait(code)) {
      this.#retryLater(code, reason);
      return;
    }
    // A drop: the first reconnect (a resume) is immediate.
    this.#setState('reconnecting');
    this.#emit('disconnect', { code, reason, reconnectInMs: 0 });
    this.#retryTimer = setTimeout(() => this.#attemptNow(), 0);
  }

  #retryLater(code, reason) {
    const delay = backoffDelayMs(this.#attempt);
    this.#attempt += 1;
    this.#setState(this.#session ? 'reconnecting' : 'connecting');
    this.#emit('disconnect', { code, reason, reconnectInMs: Math.round(delay) });
    this.#retryTimer = setTimeout(() => this.#attemptNow(), delay);
  }

  #stop(code, reason) {
    this.#stopped = true;
    this.#setState('closed');
    this.#emit('disconnect', { code, reason, reconnectInMs: null });
  }

  /** Gives up on the current connection (dead, or out of step) and resumes at once. */
  #drop(code, reason) {
    const conn = this.#conn;
    if (!conn) return;
    conn.transport.close(code, reason);
    this.#onEnd(conn, { code, reason, server: false });
  }

  // --- receiving --------------------------------------------------------------------------------------

  #onMessage(conn, msg) {
    if (this.#conn !== conn) return;
    if (typeof msg?.type !== 'string' || !Number.isInteger(msg.seq)) {
      console.warn('signaling: ignoring a message without type/seq', msg);
      return;
    }
    // A refused join (bad room, room full, shutting down) is an `error` with seq 1 outside any session (a
    // session starts with its welcome); the close that follows decides what happens next.
    if (msg.type === 'error' && msg.seq === 1 && !conn.established) {
      this.#emit('error', msg);
      return;
    }
    // A welcome starts a new session, whose seqs start again at 1.
    if (msg.type === 'welcome') this.#lastSeq = 0;
    if (msg.seq <= this.#lastSeq) return; // already processed (a replay overlapping what we had)
    const expected = this.#lastSeq + 1;
    if (msg.seq !== expected) {
      // The server never skips: something went wrong on the way. Resume from the last good seq.
      console.error(`signaling: seq gap, expected ${expected}, got ${msg.seq}`);
      this.#emit('gap', { expected, got: msg.seq });
      this.#drop(4003, 'seq-gap');
      return;
    }
    this.#lastSeq = msg.seq;
    if (!conn.established) this.#established(conn);
    else this.#setState('open'); // e.g. an SSE stream the browser reconnected by itself

    switch (msg.type) {
      case 'welcome':
        this.#newSession(conn, msg);
        break;
      case 'resumed':
        this.#acknowledged(msg.received);
        // Everything above `received` never arrived: send it again, in order.
        this.#ready(conn, Number.isInteger(msg.received) ? msg.received : 0);
        break;
      case 'pong': {
        this.#acknowledged(msg.received);
        clearTimeout(this.#pongTimer);
        this.#pongTimer = null;
        const sentAt = this.#pingSentAt.get(msg.id);
        this.#pingSentAt.delete(msg.id);
        this.#emit('pong', {
          id: msg.id, rttMs: sentAt === undefined ? null : performance.now() - sentAt, received: msg.received,
        });
        return;
      }
      case 'error':
        console.warn(`signaling: server refused a message: ${msg.code}: ${msg.message}`);
        break;
    }
    this.#emit(msg.type, msg);
  }

  #newSession(conn, welcome) {
    if (this.#session && welcome.recovered === false) {
      console.warn(`signaling: the session could not be resumed; new peer id ${welcome.peer_id}`);
    }
    this.#session = welcome.session ?? null;
    this.#peerId = welcome.peer_id;
    if (welcome.heartbeat?.interval_ms > 0 && welcome.heartbeat?.timeout_ms > 0) this.#heartbeat = welcome.heartbeat;
    // Messages of the old session were addressed to peers of the old session: drop them, start cseq again.
    this.#unacked = [];
    this.#cseq = 0;
    this.#ready(conn, 0);
  }

  #acknowledged(received) {
    if (!Number.isInteger(received)) return;
    while (this.#unacked.length > 0 && this.#unacked[0].cseq <= received) this.#unacked.shift();
  }

  // --- sending ----------------------------------------------------------------------------------------

  #enqueue(msg) {
    if (this.#stopped || !this.#session) return false;
    if (this.#unacked.length >= MAX_UNACKED) {
      console.warn('signaling: too many unacknowledged messages; dropping', msg);
      return false;
    }
    this.#cseq += 1;
    this.#unacked.push({ cseq: this.#cseq, msg: { ...msg, cseq: this.#cseq } });
    this.#flush();
    return true;
  }

  /** Hands the current connection every waiting message it has not carried yet, in cseq order. */
  #flush() {
    const conn = this.#conn;
    if (!conn?.ready) return;
    for (const { cseq, msg } of this.#unacked) {
      if (cseq <= conn.sentUpTo) continue;
      if (!conn.transport.send(msg)) break;
      conn.sentUpTo = cseq;
    }
  }

  // --- heartbeat --------------------------------------------------------------------------------------

  #startHeartbeat() {
    this.#stopHeartbeat();
    const { interval_ms: intervalMs, timeout_ms: timeoutMs } = this.#heartbeat;
    const beat = () => {
      if (this.#pongTimer !== null) return; // still waiting for the previous answer
      if (this.ping() === null) return;
      this.#pongTimer = setTimeout(() => {
        this.#pongTimer = null;
        console.warn(`signaling: no pong within ${timeoutMs} ms, treating the connection as dead`);
        this.#drop(4001, 'heartbeat-timeout');
      }, timeoutMs);
    };
    // The first beat right away proves the connection and gives the page a server round-trip time at once.
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

  #setState(state) {
    if (this.#state === state) return;
    this.#state = state;
    this.#emit('state', { state, transport: this.#kind });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
