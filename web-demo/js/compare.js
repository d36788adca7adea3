// The compare panel's engine (docs/web-demo.md, "Compare"): the same ping, at the same moment, to one peer over
// its direct data channel and through the signaling server as a `relay` message; the RTT of each. It also
// answers the other pages' relay pings, whether or not a comparison runs here (the mesh answers channel pings).
// No DOM: compare-view.js draws what `snapshot()` returns.
//
// Events (CustomEvent): change – anything `snapshot()` shows changed.

import { PATHS, PingLedger, parseProbe, summarize } from './pings.js';

/** Four pings a second: dense enough for a live chart, light enough for short polling's POSTs. */
export const PING_INTERVAL_MS = 250;
/**
 * A ping unanswered this long is lost. Short polling (one poll a second) may hold a ping and its pong for up
 * to a second each, so anything shorter would count slow answers as lost.
 */
export const LOST_AFTER_MS = 3000;
/** What the chart and the summary cover. */
export const WINDOW_MS = 60_000;
/** Relay pings answered per second at most: a peer flooding us must not fill our unacknowledged buffer. */
const MAX_RELAY_ANSWERS_PER_S = 20;
/** Ids of the last pings answered, per path (for the test hooks). */
const RECENT_IDS = 100;

export class Comparison extends EventTarget {
  #signaling;
  #mesh;
  #now;
  #ledger = newLedger();
  #peer = null;
  #running = false;
  /** Where the chart and the summary end: now while running, the moment it stopped afterwards. */
  #stoppedAt = null;
  #stopReason = null;
  #timer = null;
  #nextId = 1;
  /** The transport the other page's last relay pong said it uses (its leg of the relay path). */
  #remoteTransport = null;
  #answered = { dc: 0, relay: 0 };
  #answeredIds = { dc: [], relay: [] };
  /** Relay messages and channel pongs that were not a ping or an answer to one of ours. */
  #ignored = 0;
  #answerBudget = { second: -1, used: 0 };

  /**
   * @param {import('./signaling.js').SignalingClient} signaling
   * @param {import('./mesh.js').Mesh} mesh
   * @param {{now?: () => number}} [options] the clock (performance.now, monotonic and sub-millisecond)
   */
  constructor(signaling, mesh, { now = () => performance.now() } = {}) {
    super();
    this.#signaling = signaling;
    this.#mesh = mesh;
    this.#now = now;
    signaling.addEventListener('relay', (e) => this.#onRelay(e.detail));
    mesh.addEventListener('ping', (e) => {
      // Integer ids are the mesh's own once-a-second probe; ours are strings.
      if (typeof e.detail.id === 'string') this.#noteAnswered('dc', e.detail.id);
    });
    mesh.addEventListener('pong', (e) => {
      if (typeof e.detail.id === 'string') this.#onAnswer('dc', e.detail.id, e.detail.peerId);
    });
    mesh.addEventListener('peer-removed', (e) => {
      if (this.#running && e.detail.peerId === this.#peer) this.stop(`the peer left (${e.detail.reason})`);
    });
  }

  get running() { return this.#running; }

  /** Starts a fresh run against `peerId` (the previous run's samples are dropped). */
  start(peerId) {
    this.#stopTimer();
    this.#ledger = newLedger();
    this.#peer = peerId;
    this.#running = true;
    this.#stoppedAt = null;
    this.#stopReason = null;
    this.#remoteTransport = null;
    this.#timer = setInterval(() => this.#tick(), PING_INTERVAL_MS);
    this.#tick();
  }

  /** Stops sending; pings on their way may still be answered (or turn lost) for LOST_AFTER_MS. */
  stop(reason = null) {
    if (!this.#running) return;
    this.#running = false;
    this.#stoppedAt = this.#now();
    this.#stopReason = reason;
    this.#stopTimer();
    this.#ledger.expire(this.#stoppedAt);
    if (this.#ledger.pending > 0) {
      // Keep expiring until every ping is answered or lost, so the final numbers settle by themselves.
      this.#timer = setInterval(() => {
        this.#ledger.expire(this.#now());
        if (this.#ledger.pending === 0) this.#stopTimer();
        this.#emit();
      }, PING_INTERVAL_MS);
    }
    this.#emit();
  }

  /** A JSON-serialisable view for the panel and the test hooks (docs/web-demo.md). */
  snapshot() {
    const end = this.#stoppedAt ?? this.#now();
    const series = Object.fromEntries(PATHS.map((path) => [path, this.#ledger.series(path, end)]));
    const peer = this.#peer && this.#mesh.snapshot()[this.#peer];
    return {
      running: this.#running,
      peer: this.#peer,
      stopReason: this.#stopReason,
      intervalMs: PING_INTERVAL_MS,
      lostAfterMs: LOST_AFTER_MS,
      windowMs: WINDOW_MS,
      end,
      sent: this.#ledger.sent,
      relayTransport: this.#signaling.transport,
      remoteTransport: this.#remoteTransport,
      dcPath: peer ? { local: peer.pairType, remote: peer.remoteType, ready: peer.ready, channel: peer.dc } : null,
      series,
      summary: Object.fromEntries(PATHS.map((path) => [path, summarize(series[path])])),
      answered: { ...this.#answered },
      answeredIds: { dc: [...this.#answeredIds.dc], relay: [...this.#answeredIds.relay] },
      ignored: this.#ignored,
    };
  }

  #tick() {
    const t = this.#now();
    const id = `c${this.#nextId++}`;
    const peer = this.#peer;
    this.#ledger.add(id, peer, t);
    const ping = { t: 'ping', id, ts: t };
    // A relay ping queued while signaling is down would go out after the resume and measure the outage;
    // that path is down now, so the ping is lost now. (The channel's send goes out a microtask later, as
    // framing.js chains sends: microseconds, below performance.now()'s resolution in a page.)
    if (this.#signaling.state !== 'open' || !this.#signaling.relay(ping, peer)) this.#ledger.fail('relay', id);
    if (!this.#mesh.ping(peer, ping)) this.#ledger.fail('dc', id);
    this.#ledger.expire(t);
    this.#emit();
  }

  #onRelay({ from, data }) {
    const probe = parseProbe(data);
    if (probe === null) {
      this.#ignored += 1;
      this.#emit();
      return;
    }
    if (probe.t === 'pong') {
      if (this.#onAnswer('relay', probe.id, from) && probe.via) this.#remoteTransport = probe.via;
      return;
    }
    if (!this.#mayAnswer()) {
      this.#ignored += 1;
      this.#emit();
      return;
    }
    const pong = { t: 'pong', id: probe.id, via: this.#signaling.transport };
    if (probe.ts !== undefined) pong.ts = probe.ts;
    this.#signaling.relay(pong, from);
    this.#noteAnswered('relay', probe.id);
  }

  /** Records an answer; returns whether it answered one of our pings. */
  #onAnswer(path, id, from) {
    const rtt = this.#ledger.answer(path, id, from, this.#now());
    if (rtt === null) this.#ignored += 1;
    this.#emit();
    return rtt !== null;
  }

  #mayAnswer() {
    const second = Math.floor(this.#now() / 1000);
    if (second !== this.#answerBudget.second) this.#answerBudget = { second, used: 0 };
    this.#answerBudget.used += 1;
    return this.#answerBudget.used <= MAX_RELAY_ANSWERS_PER_S;
  }

  #noteAnswered(path, id) {
    this.#answered[path] += 1;
    const ids = this.#answeredIds[path];
    ids.push(id);
    if (ids.length > RECENT_IDS) ids.shift();
    this.#emit();
  }

  #stopTimer() {
    clearInterval(this.#timer);
    this.#timer = null;
  }

  #emit() {
    this.dispatchEvent(new CustomEvent('change'));
  }
}

function newLedger() {
  return new PingLedger({ lostAfterMs: LOST_AFTER_MS, windowMs: WINDOW_MS });
}
