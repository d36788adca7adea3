// Unit tests of the browser client's TURN credential refresh timing (run with `node --test tests/js/`).
// Same rule as peer/src/ice.rs's `refresh_comes_before_the_earliest_expiry`.
import test from 'node:test';
import assert from 'node:assert/strict';
import { refreshAfterMs, fetchIceServers, MIN_REFRESH_MS } from '../../web-demo/js/ice.js';

test('refresh comes before the earliest expiry', () => {
  const now = 1000 * 1000;
  assert.equal(refreshAfterMs([{ urls: ['stun:h'] }], now), null);
  assert.equal(refreshAfterMs([{ username: '2000:p' }, { username: '1100:p' }], now), 80_000);
  assert.equal(refreshAfterMs([{ username: '900:p' }], now), MIN_REFRESH_MS);
  assert.equal(refreshAfterMs([{ username: 'alice' }], now), null);
  assert.equal(refreshAfterMs(undefined, now), null);
});

test('fetchIceServers asks for the peer and refuses bad answers', async () => {
  let asked = null;
  const ok = async (url) => { asked = url; return { ok: true, json: async () => ({ ice_servers: [{ urls: ['stun:h'] }] }) }; };
  assert.deepEqual(await fetchIceServers('p 1', { origin: 'http://s', fetchFn: ok }), [{ urls: ['stun:h'] }]);
  assert.equal(asked, 'http://s/v1/ice?peer_id=p%201');
  const bad = async () => ({ ok: false, status: 400 });
  await assert.rejects(fetchIceServers('p', { origin: 'http://s', fetchFn: bad }), /400/);
});
