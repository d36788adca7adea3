// Bookkeeping for the compare panel (docs/web-demo.md, "Compare"): which ping went out on which path, its
// round-trip time or its loss, the window the panel shows, and the summary numbers. Pure: no DOM, no timers,
// no clock (every time is an argument), so `node --test tests/js/` covers it.

/** The two paths a ping takes: the direct data channel, and a `relay` message through the signaling server. */
export const PATHS = ['dc', 'relay'];

/** Ids are echoed back by the other side; a bound keeps a hostile peer from making us store or echo blobs. */
const MAX_ID_LENGTH = 64;
const TRANSPORT_KINDS = new Set(['ws', 'sse', 'longpoll', 'shortpoll']);

/**
 * Nearest-rank percentile (the smallest sample with at least `p` % of the samples at or below it, as the
 * benchmarks compute it), or null for no samples.
 * @param {number[]} sorted ascending
 */
export function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

/**
 * What the panel's table shows for one path: answered pings (`samples`), their p50, p90 and max RTT (null
 * without samples), pings counted lost, and pings still waiting for an answer.
 * @param {{rttMs: number|null, lost: boolean}[]} entries
 */
export function summarize(entries) {
  const rtts = entries.filter((e) => e.rttMs !== null).map((e) => e.rttMs).sort((a, b) => a - b);
  const lost = entries.filter((e) => e.lost).length;
  return {
    samples: rtts.length,
    p50: percentile(rtts, 50),
    p90: percentile(rtts, 90),
    max: rtts.length > 0 ? rtts[rtts.length - 1] : null,
    lost,
    pending: entries.length - rtts.length - lost,
  };
}

/**
 * The entries sent in the window `(end - windowMs, end]`.
 * @param {{t: number}[]} entries in send order
 */
export function windowed(entries, end, windowMs) {
  return entries.filter((e) => e.t > end - windowMs && e.t <= end);
}

/**
 * A compare probe (`{t:"ping"|"pong", id, ts?, via?}`) out of data that anyone in the room may have sent, or
 * null when it is not one. Only the fields we use survive: a valid id, a finite `ts`, a known `via`.
 */
export function parseProbe(data) {
  if (typeof data !== 'object' || data === null || Array.isArray(data)) return null;
  if (data.t !== 'ping' && data.t !== 'pong') return null;
  const { id } = data;
  const validId = (typeof id === 'string' && id.length > 0 && id.length <= MAX_ID_LENGTH)
    || (Number.isSafeInteger(id) && id >= 0);
  if (!validId) return null;
  const probe = { t: data.t, id };
  if (typeof data.ts === 'number' && Number.isFinite(data.ts)) probe.ts = data.ts;
  if (data.t === 'pong' && TRANSPORT_KINDS.has(data.via)) probe.via = data.via;
  return probe;
}

/**
 * Every ping of one run, per path, in send order: `{id, peer, t, rttMs, lost}` (t = send time, rttMs = null
 * until answered). A ping is answered at most once, only by the peer it was sent to, and only within
 * `lostAfterMs`; after that it is lost and a late answer is ignored. Entries older than the window are
 * dropped, so a run of any length uses bounded memory.
 */
export class PingLedger {
  #lostAfterMs;
  #windowMs;
  #entries = Object.fromEntries(PATHS.map((p) => [p, []]));
  /** Entries still waiting for an answer, by id. */
  #waiting = Object.fromEntries(PATHS.map((p) => [p, new Map()]));
  /** Pings sent in this run (on both paths at once, so one count). */
  sent = 0;

  constructor({ lostAfterMs, windowMs }) {
    // Pruning at the window's edge must never drop a ping that could still be answered.
    if (!(lostAfterMs > 0 && lostAfterMs < windowMs)) throw new RangeError('need 0 < lostAfterMs < windowMs');
    this.#lostAfterMs = lostAfterMs;
    this.#windowMs = windowMs;
  }

  /** Ping `id` to `peer`, sent at `t` on every path. An id already waiting is refused (returns false). */
  add(id, peer, t) {
    if (PATHS.some((p) => this.#waiting[p].has(id))) return false;
    for (const path of PATHS) {
      const entry = { id, peer, t, rttMs: null, lost: false };
      this.#entries[path].push(entry);
      this.#waiting[path].set(id, entry);
    }
    this.sent += 1;
    return true;
  }

  /** `path` could not carry ping `id` (its channel or connection was down): lost at once. */
  fail(path, id) {
    const entry = this.#waiting[path].get(id);
    if (!entry) return;
    this.#waiting[path].delete(id);
    entry.lost = true;
  }

  /**
   * An answer to ping `id` on `path` from `peer`, received at `now`: its RTT, or null when no ping of ours is
   * waiting for it (an unknown id, one already answered or lost, or an answer from another peer).
   */
  answer(path, id, peer, now) {
    const entry = this.#waiting[path]?.get(id);
    if (!entry || entry.peer !== peer) return null;
    this.#waiting[path].delete(id);
    entry.rttMs = now - entry.t;
    return entry.rttMs;
  }

  /** Counts pings unanswered for `lostAfterMs` as lost and forgets entries older than the window. */
  expire(now) {
    for (const path of PATHS) {
      for (const [id, entry] of this.#waiting[path]) {
        if (now - entry.t < this.#lostAfterMs) break; // a Map iterates in insertion (= send) order
        entry.lost = true;
        this.#waiting[path].delete(id);
      }
      const entries = this.#entries[path];
      let old = 0;
      while (old < entries.length && entries[old].t <= now - this.#windowMs) old += 1;
      if (old > 0) entries.splice(0, old);
    }
  }

  /** Pings still waiting for an answer on any path. */
  get pending() {
    return PATHS.reduce((n, p) => n + this.#waiting[p].size, 0);
  }

  /** Copies of `path`'s entries sent in the window ending at `end`, oldest first, without the peer. */
  series(path, end) {
    return windowed(this.#entries[path], end, this.#windowMs)
      .map(({ id, t, rttMs, lost }) => ({ id, t, rttMs, lost }));
  }
}
