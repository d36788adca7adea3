// ICE servers in the browser client: when to refresh TURN credentials, and fetching fresh ones from
// `GET /v1/ice` (docs/protocol.md, "ICE servers"). No DOM access.
//
// TURN REST usernames are `<expiry unix time>:<peer id>`, so the expiry is read from the username itself.

/** Refresh when this fraction of the earliest credential's remaining lifetime has passed. */
export const REFRESH_AT = 0.8;
/** Never refresh more often than this. */
export const MIN_REFRESH_MS = 5000;

/**
 * Milliseconds until the ICE servers should be refreshed, or null when no credential expires.
 * @param {Array<{username?: string}>} iceServers
 * @param {number} nowMs
 */
export function refreshAfterMs(iceServers, nowMs) {
  let earliest = null;
  for (const s of iceServers ?? []) {
    const m = /^(\d+):/.exec(s?.username ?? '');
    if (!m) continue;
    const expiryMs = Number(m[1]) * 1000;
    if (earliest === null || expiryMs < earliest) earliest = expiryMs;
  }
  if (earliest === null) return null;
  return Math.max(MIN_REFRESH_MS, (earliest - nowMs) * REFRESH_AT);
}

/**
 * Fresh ICE servers from the signaling server, TURN credentials minted for `peerId`. `sessionToken` (the
 * welcome's `session.token`) authorises the request: a server that requires join tokens mints TURN
 * credentials only for live sessions.
 * @param {string} peerId
 * @param {{origin?: string, sessionToken?: string | null, fetchFn?: typeof fetch}} [options]
 */
export async function fetchIceServers(peerId, { origin = globalThis.location?.origin, sessionToken = null, fetchFn = fetch } = {}) {
  const headers = sessionToken ? { Authorization: `Bearer ${sessionToken}` } : {};
  const res = await fetchFn(`${origin}/v1/ice?peer_id=${encodeURIComponent(peerId)}`, { cache: 'no-store', headers });
  if (!res.ok) throw new Error(`GET /v1/ice answered ${res.status}`);
  const body = await res.json();
  if (!Array.isArray(body?.ice_servers)) throw new Error('GET /v1/ice: no ice_servers');
  return body.ice_servers;
}
