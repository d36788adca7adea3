// Reconnection delays, exactly as docs/protocol.md ("Close codes", Backoff): attempt n (0, 1, 2, …) waits
// 0.5 s + uniform[0, min(19.5 s, 0.5 s × 2^n)). The floor keeps a flapping server from being hammered, the cap
// bounds how long a user waits once it is back, and the jitter stays 19.5 s wide at the cap, so clients that a
// restart disconnected together do not come back together. Pure: no timers, no globals (node-testable).

/** Every delay is at least this. */
export const BACKOFF_FLOOR_MS = 500;
/** The jitter range is at most this wide (so no delay reaches 20 s). */
export const BACKOFF_SPREAD_CAP_MS = 19_500;

/** The width of attempt `attempt`'s jitter range: min(19.5 s, 0.5 s × 2^attempt). */
export function backoffSpreadMs(attempt) {
  const n = Number.isFinite(attempt) && attempt > 0 ? Math.floor(attempt) : 0;
  // 2 ** n is Infinity for huge n, which min() turns into the cap.
  return Math.min(BACKOFF_SPREAD_CAP_MS, BACKOFF_FLOOR_MS * 2 ** n);
}

/** The exclusive upper bound of attempt `attempt`'s delay. */
export function backoffCeilingMs(attempt) {
  return BACKOFF_FLOOR_MS + backoffSpreadMs(attempt);
}

/**
 * The delay before reconnect attempt `attempt` (0 for the first one that waits at all).
 * @param {number} attempt
 * @param {() => number} [random] uniform in [0, 1), Math.random by default
 */
export function backoffDelayMs(attempt, random = Math.random) {
  return BACKOFF_FLOOR_MS + random() * backoffSpreadMs(attempt);
}
