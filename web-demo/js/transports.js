// The transports of protocol v1 (docs/protocol.md, "Transports"): WebSocket, SSE + POST, long and short
// polling + POST. Each one only moves messages: it knows nothing of sequence numbers, sessions or backoff,
// which live in signaling.js. Every transport has the same shape:
//
//   new XTransport(options, handlers)
//   transport.kind                 'ws' | 'sse' | 'longpoll' | 'shortpoll'
//   transport.send(message)        one client message (an object); false when it cannot be handed over now
//   transport.leave()              sends `leave` as well as a page being unloaded allows, then closes
//   transport.close(code, reason)  ends the connection; no handler is called after it
//
//   handlers.message(object)             one server message, parsed
//   handlers.end({code, reason, server}) the connection is over (at most once). server: the server chose
//                                        the code (a close frame, an SSE `close` event, a poll's `close`);
//                                        false for network failures, refusals by status (404) and timeouts
//   handlers.interrupted()               (SSE) the browser lost the stream and reconnects it by itself
//
// Options shared by all: `origin` (http(s)://host:port), `room`, `resume` ({token, after} or null),
// `joinToken` (the join token the server may require, or null; sent as `?token=` on every join and resume URL),
// `session()` (the current {token, url}, for POST and polls), `after()` (the last seq processed),
// `deadlineMs()` (how long a request may take: heartbeat interval + timeout).

/** How long the browser's own EventSource reconnect may take before the client takes over (retry is 1 s). */
const SSE_NATIVE_RECONNECT_GRACE_MS = 3000;
/** Short polling asks once a second (docs/protocol.md: short polling is a poll with wait_ms=0). */
const SHORT_POLL_PAUSE_MS = 1000;

const ROOMS = '/v1/rooms/';
/** Poll answers whose body is a poll response (`messages`, maybe `close`): 200 and the refused joins. */
const POLL_BODY_STATUSES = new Set([200, 400, 401, 409, 429, 503]);

function roomPath(room, endpoint) {
  return `${ROOMS}${encodeURIComponent(room)}/${endpoint}`;
}

/**
 * The URL that joins (or resumes) `room` over `endpoint` ('ws' | 'sse' | 'poll'). The scheme follows the
 * origin's, so a page served over https uses wss:// and https:// (a browser refuses ws:// from an https page).
 * The join token goes in the query because browsers cannot set headers on a WebSocket or an EventSource; it
 * is on resumes too, since a resume that fails turns into a fresh join, which needs it.
 * @param {string} origin http(s)://host:port
 * @param {string} room
 * @param {'ws'|'sse'|'poll'} endpoint
 * @param {{resume?: {token: string, after: number} | null, joinToken?: string | null}} [extra]
 * @returns {string}
 */
export function joinUrl(origin, room, endpoint, { resume = null, joinToken = null } = {}) {
  const url = new URL(roomPath(room, endpoint), origin);
  if (endpoint === 'ws') url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  if (resume) {
    url.searchParams.set('resume', resume.token);
    url.searchParams.set('after', String(resume.after));
  }
  if (joinToken) url.searchParams.set('token', joinToken);
  return url.href;
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    console.warn('signaling: ignoring a server message that is not JSON', text);
    return undefined;
  }
}

/** Passes events to the handlers until the connection is over: `end` at most once, nothing after `close()`. */
class Ending {
  done = false;
  #handlers;
  #shutdown;
  /** @param {() => void} shutdown releases the connection (socket, stream, requests) */
  constructor(handlers, shutdown) {
    this.#handlers = handlers;
    this.#shutdown = shutdown;
  }
  message(msg) { if (!this.done && msg !== undefined) this.#handlers.message(msg); }
  call(name) { if (!this.done) this.#handlers[name]?.(); }
  /** The connection ended by itself: release it and report why. */
  end(info) {
    if (this.done) return;
    this.done = true;
    this.#shutdown();
    this.#handlers.end(info);
  }
  /** The client ends it: release it, report nothing. */
  close() {
    this.done = true;
    this.#shutdown();
  }
}

/** A failure that no server code explains (network, status, timeout): the next transport may work. */
const failure = (reason) => ({ code: 1006, reason, server: false });

export class WsTransport {
  kind = 'ws';
  #ws;
  #ending;

  constructor({ origin, room, resume, joinToken }, handlers) {
    this.#ending = new Ending(handlers, () => {});
    const url = joinUrl(origin, room, 'ws', { resume, joinToken });
    try {
      this.#ws = new WebSocket(url);
    } catch (err) {
      setTimeout(() => this.#ending.end(failure(String(err))));
      return;
    }
    this.#ws.onmessage = (ev) => this.#ending.message(parse(ev.data));
    // onerror is always followed by onclose, which carries the code. 1005/1006: no close frame came.
    this.#ws.onclose = (ev) => this.#ending.end({
      code: ev.code, reason: ev.reason, server: ev.code !== 1005 && ev.code !== 1006,
    });
  }

  send(msg) {
    if (this.#ws?.readyState !== WebSocket.OPEN) return false;
    this.#ws.send(JSON.stringify(msg));
    return true;
  }

  leave() {
    this.send({ type: 'leave' });
    // Closing right away instead of waiting for the server's 1000: a page being unloaded cannot wait.
    this.close(1000);
  }

  close(code = 1000, reason = '') {
    this.#ending.close();
    try {
      this.#ws?.close(code, reason);
    } catch {
      this.#ws?.close();
    }
  }
}

/**
 * Client messages of the HTTP transports: `POST <session.url>` with the bearer token, one request at a time
 * and in order, because the server drops a `cseq` that is not above the highest it has (two racing POSTs
 * could lose a message).
 */
class Poster {
  #origin;
  #session;
  #deadlineMs;
  #onDead;
  #queue = [];
  #busy = false;
  closed = false;

  constructor({ origin, session, deadlineMs }, onDead) {
    this.#origin = origin;
    this.#session = session;
    this.#deadlineMs = deadlineMs;
    this.#onDead = onDead;
  }

  send(msg) {
    if (this.closed || !this.#session()) return false;
    this.#queue.push(msg);
    this.#pump();
    return true;
  }

  /** Fire and forget, surviving the page's unload (`keepalive`): for `leave`. */
  sendLast(msg) {
    const request = this.#request(msg, { keepalive: true });
    if (request) fetch(...request).catch(() => {});
  }

  #request(msg, extra = {}) {
    const session = this.#session();
    if (!session) return null;
    return [new URL(session.url, this.#origin), {
      method: 'POST',
      headers: { Authorization: `Bearer ${session.token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(msg),
      cache: 'no-store',
      ...extra,
    }];
  }

  async #pump() {
    if (this.#busy) return;
    this.#busy = true;
    while (this.#queue.length > 0 && !this.closed) {
      const request = this.#request(this.#queue[0], { signal: AbortSignal.timeout(this.#deadlineMs()) });
      let status;
      try {
        status = (await fetch(...request)).status;
      } catch (err) {
        status = `failed (${err.name})`;
      }
      if (this.closed) break;
      // 400/413: refused, and the same `error` arrives on the stream; the session goes on.
      if (status === 204 || status === 400 || status === 413) {
        this.#queue.shift();
        continue;
      }
      // 401/404 (session gone), 5xx, a network failure, a timeout: this connection cannot carry messages.
      this.closed = true;
      this.#onDead(`POST ${status}`);
    }
    this.#busy = false;
  }
}

export class SseTransport {
  kind = 'sse';
  #es;
  #ending;
  #poster;
  #received = false;
  #grace = null;

  constructor(options, handlers) {
    const { origin, room, resume, joinToken } = options;
    const ending = new Ending(handlers, () => {
      this.#poster.closed = true;
      clearTimeout(this.#grace);
      this.#es.close();
    });
    this.#ending = ending;
    this.#poster = new Poster(options, (why) => ending.end(failure(why)));
    const es = new EventSource(joinUrl(origin, room, 'sse', { resume, joinToken }));
    this.#es = es;
    es.onmessage = (ev) => {
      this.#received = true;
      clearTimeout(this.#grace);
      this.#grace = null;
      ending.message(parse(ev.data));
    };
    // The server ends a session with `event: close`; the browser would reconnect by itself otherwise.
    es.addEventListener('close', (ev) => {
      const notice = parse(ev.data) ?? {};
      ending.end({ code: notice.code ?? 1006, reason: notice.reason ?? '', server: Number.isInteger(notice.code) });
    });
    es.onerror = () => {
      // Before the first event (a 404, a refused connection) or given up for good: this transport failed.
      if (!this.#received || es.readyState === EventSource.CLOSED) {
        ending.end(failure('event stream failed'));
        return;
      }
      // The browser reconnects by itself with Last-Event-ID, which resumes the session; give it a moment.
      ending.call('interrupted');
      this.#grace ??= setTimeout(() => ending.end(failure('event stream did not come back')), SSE_NATIVE_RECONNECT_GRACE_MS);
    };
  }

  send(msg) { return this.#poster.send(msg); }

  leave() {
    this.#poster.sendLast({ type: 'leave' });
    this.close();
  }

  close() { this.#ending.close(); }
}

export class PollTransport {
  kind;
  #ending;
  #poster;
  #abort = new AbortController();

  /** @param {object} options plus `short`: short polling (wait_ms=0, one poll a second) */
  constructor(options, handlers) {
    this.kind = options.short ? 'shortpoll' : 'longpoll';
    this.#ending = new Ending(handlers, () => {
      this.#poster.closed = true;
      this.#abort.abort();
    });
    this.#poster = new Poster(options, (why) => this.#ending.end(failure(why)));
    this.#loop(options);
  }

  send(msg) { return this.#poster.send(msg); }

  leave() {
    this.#poster.sendLast({ type: 'leave' });
    this.close();
  }

  close() { this.#ending.close(); }

  async #loop({ origin, room, resume, joinToken, session, after, deadlineMs, short }) {
    const ending = this.#ending;
    // The first poll joins (no token, answered with the welcome) or resumes (`?resume=&after=`, answered at
    // once with the missed messages and `resumed`); the next ones poll the session with its bearer token.
    let url = new URL(joinUrl(origin, room, 'poll', { resume, joinToken }));
    let headers = {};
    while (!ending.done) {
      let res;
      let body;
      try {
        const signal = AbortSignal.any([this.#abort.signal, AbortSignal.timeout(deadlineMs())]);
        res = await fetch(url, { headers, cache: 'no-store', signal });
        // A refused join carries the `error` and the `close`: 400 bad room, 401 no valid join token, 409 room
        // full, 429 too many joins, 503 shutting down or full. Without reading it a 401 would look like a
        // network failure and be retried forever.
        if (POLL_BODY_STATUSES.has(res.status)) body = await res.json();
      } catch (err) {
        ending.end(failure(`poll failed (${err.name})`));
        return;
      }
      if (ending.done) return;
      if (!Array.isArray(body?.messages)) {
        ending.end(failure(`poll answered ${res.status}`));
        return;
      }
      for (const msg of body.messages) ending.message(msg);
      if (body.close) {
        ending.end({ code: body.close.code, reason: body.close.reason ?? '', server: true });
        return;
      }
      if (short) await new Promise((resolve) => setTimeout(resolve, SHORT_POLL_PAUSE_MS));
      const current = session();
      if (!current) {
        ending.end(failure('poll answered without a session'));
        return;
      }
      url = new URL(roomPath(room, 'poll'), origin);
      url.searchParams.set('after', String(after()));
      if (short) url.searchParams.set('wait_ms', '0');
      headers = { Authorization: `Bearer ${current.token}` };
    }
  }
}

/** The transports by name; `shortpoll` is only used when asked for. */
export const TRANSPORTS = {
  ws: (options, handlers) => new WsTransport(options, handlers),
  sse: (options, handlers) => new SseTransport(options, handlers),
  longpoll: (options, handlers) => new PollTransport(options, handlers),
  shortpoll: (options, handlers) => new PollTransport({ ...options, short: true }, handlers),
};

/** The order of the first connect and of every reconnect attempt (docs/protocol.md). */
export const DEFAULT_ORDER = ['ws', 'sse', 'longpoll'];
