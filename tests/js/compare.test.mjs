// Unit tests of the compare panel's pure parts (run with `node --test tests/js/`): percentiles and summaries,
// the ping ledger (matching, loss, windowing), probe validation, the chart's geometry; and the Comparison engine
// against a fake signaling client and mesh (same ping on both paths, answers on the path they came by, hostile
// input ignored). The real paths are covered by tests/tests/browser_compare.rs.
import test from 'node:test';
import assert from 'node:assert/strict';
import { PingLedger, parseProbe, percentile, summarize, windowed } from '../../web-demo/js/pings.js';
import { chartGeometry, niceScale, tickLabel } from '../../web-demo/js/chart.js';
import { Comparison, LOST_AFTER_MS, WINDOW_MS } from '../../web-demo/js/compare.js';

test('percentiles are nearest-rank, like the benchmarks', () => {
  assert.equal(percentile([], 50), null);
  assert.equal(percentile([7], 50), 7);
  assert.equal(percentile([7], 90), 7);
  assert.equal(percentile([1, 2, 3, 4], 50), 2);
  assert.equal(percentile([1, 2, 3, 4], 90), 4);
  const hundred = Array.from({ length: 100 }, (_, i) => i + 1);
  assert.equal(percentile(hundred, 50), 50);
  assert.equal(percentile(hundred, 90), 90);
  assert.equal(percentile(hundred, 100), 100);
  assert.equal(percentile(hundred, 0), 1, 'p0 is the minimum, never index -1');
});

test('a summary counts answered, lost and pending pings separately', () => {
  const entries = [
    { rttMs: 5, lost: false }, { rttMs: null, lost: true }, { rttMs: 1, lost: false },
    { rttMs: null, lost: false }, { rttMs: 3, lost: false },
  ];
  assert.deepEqual(summarize(entries), { samples: 3, p50: 3, p90: 5, max: 5, lost: 1, pending: 1 });
  assert.deepEqual(summarize([]), { samples: 0, p50: null, p90: null, max: null, lost: 0, pending: 0 });
});

test('windowed keeps what was sent in (end - window, end]', () => {
  const entries = [{ t: 0 }, { t: 10 }, { t: 20 }, { t: 30 }];
  assert.deepEqual(windowed(entries, 30, 20).map((e) => e.t), [20, 30]);
  assert.deepEqual(windowed(entries, 25, 100).map((e) => e.t), [0, 10, 20], 'nothing after end');
});

test('the ledger answers each ping once, per path, only from its peer, only in time', () => {
  const ledger = new PingLedger({ lostAfterMs: 1000, windowMs: 10_000 });
  assert.ok(ledger.add('c1', 'B', 100));
  assert.equal(ledger.add('c1', 'B', 150), false, 'an id still waiting is not reused');
  assert.equal(ledger.answer('dc', 'c1', 'C', 110), null, 'another peer cannot answer');
  assert.equal(ledger.answer('dc', 'c1', 'B', 102.5), 2.5);
  assert.equal(ledger.answer('dc', 'c1', 'B', 103), null, 'a duplicate answer is ignored');
  assert.equal(ledger.answer('relay', 'nope', 'B', 103), null, 'an unknown id is ignored');
  assert.equal(ledger.answer('bogus-path', 'c1', 'B', 103), null);
  assert.equal(ledger.pending, 1, 'relay still waits');
  ledger.expire(1099);
  assert.equal(ledger.pending, 1, 'not lost before lostAfterMs');
  ledger.expire(1100);
  assert.equal(ledger.pending, 0);
  assert.equal(ledger.answer('relay', 'c1', 'B', 1200), null, 'a late answer stays lost');
  assert.deepEqual(ledger.series('dc', 2000), [{ id: 'c1', t: 100, rttMs: 2.5, lost: false }]);
  assert.deepEqual(ledger.series('relay', 2000), [{ id: 'c1', t: 100, rttMs: null, lost: true }]);

  ledger.add('c2', 'B', 200);
  ledger.fail('relay', 'c2');
  assert.equal(ledger.answer('relay', 'c2', 'B', 201), null, 'a failed send is lost at once');
  assert.equal(ledger.sent, 2);

  // Old entries leave with the window; the memory of a long run is bounded.
  ledger.expire(10_150);
  assert.deepEqual(ledger.series('dc', 10_150).map((e) => e.id), ['c2']);
  ledger.expire(10_200);
  assert.deepEqual(ledger.series('dc', 10_200), []);
  assert.throws(() => new PingLedger({ lostAfterMs: 5000, windowMs: 5000 }), RangeError);
});

test('parseProbe keeps only well-formed pings and pongs', () => {
  assert.deepEqual(parseProbe({ t: 'ping', id: 'c1', ts: 12.5 }), { t: 'ping', id: 'c1', ts: 12.5 });
  assert.deepEqual(parseProbe({ t: 'pong', id: 7, via: 'sse', extra: 1 }), { t: 'pong', id: 7, via: 'sse' });
  assert.deepEqual(parseProbe({ t: 'pong', id: 'c1', via: 'carrier-pigeon', ts: 'x' }), { t: 'pong', id: 'c1' });
  assert.deepEqual(parseProbe({ t: 'ping', id: 'c1', ts: Infinity }), { t: 'ping', id: 'c1' });
  for (const bad of [
    'garbage', null, undefined, 42, [], [{ t: 'ping', id: 'c1' }], {}, { t: 'chat', id: 'c1' },
    { t: 'ping' }, { t: 'ping', id: '' }, { t: 'ping', id: 'x'.repeat(65) }, { t: 'ping', id: -1 },
    { t: 'ping', id: 1.5 }, { t: 'ping', id: { nested: true } }, { t: 'pong', id: null },
  ]) {
    assert.equal(parseProbe(bad), null, JSON.stringify(bad));
  }
});

test('axis scales are nice and cover the data', () => {
  assert.deepEqual(niceScale(0.37), { step: 0.1, top: 0.4 });
  assert.deepEqual(niceScale(1), { step: 0.25, top: 1 });
  assert.deepEqual(niceScale(7.3), { step: 2, top: 8 });
  assert.deepEqual(niceScale(950), { step: 250, top: 1000 });
  assert.deepEqual(niceScale(0), { step: 0.25, top: 1 }, 'no data still gives an axis');
  assert.deepEqual(niceScale(NaN), { step: 0.25, top: 1 });
  for (let max = 0.013; max < 5000; max *= 1.37) {
    const { step, top } = niceScale(max);
    assert.ok(top >= max && top / step <= 5 + 1e-9, `max ${max}: step ${step}, top ${top}`);
  }
  assert.equal(tickLabel(0.1 + 0.2), '0.3');
});

/** Entries every 250 ms over `seconds`, RTT from `rtt(i)` (null = lost). */
function entries(seconds, end, rtt) {
  const out = [];
  for (let i = 0; i < seconds * 4; i++) {
    const value = rtt(i);
    out.push({ id: `c${i}`, t: end - seconds * 1000 + (i + 1) * 250, rttMs: value, lost: value === null });
  }
  return out;
}

test('chart geometry: one point per answer inside the plot, lost pings break the line and get marks', () => {
  const end = 100_000;
  const dc = entries(70, end, (i) => (i === 100 ? null : 0.5 + (i % 3) * 0.1));
  const relay = entries(70, end, (i) => 1 + (i % 5) * 0.2);
  const g = chartGeometry({ series: { dc, relay }, end, windowMs: 60_000 });
  assert.equal(g.empty, false);
  const inWindow = (e) => e.t > end - 60_000;
  assert.equal(g.lines.relay.points, relay.filter(inWindow).length, 'only the last 60 s');
  assert.equal(g.lines.dc.points, dc.filter(inWindow).length - 1);
  assert.equal(g.lostMarks.dc.count, 1);
  assert.equal(g.lostMarks.relay.count, 0);
  assert.equal((g.lines.dc.d.match(/M/g) ?? []).length, 2, 'the lost ping splits the data channel line');
  assert.equal((g.lines.relay.d.match(/M/g) ?? []).length, 1);
  for (const name of ['dc', 'relay']) {
    const numbers = g.lines[name].d.split(/[ML ]/).filter(Boolean).map(Number);
    assert.equal(numbers.length, g.lines[name].points * 2);
    for (let i = 0; i < numbers.length; i += 2) {
      assert.ok(numbers[i] >= g.plot.left && numbers[i] <= g.plot.right, `x ${numbers[i]}`);
      assert.ok(numbers[i + 1] >= g.plot.top && numbers[i + 1] <= g.plot.bottom, `y ${numbers[i + 1]}`);
    }
    assert.ok(!g.lines[name].d.includes('NaN'));
  }
  // The axis tops at a nice value at or above the largest RTT (1.8 ms), and the labels say so.
  assert.deepEqual(g.yTicks.map((t) => t.label), ['0', '0.5', '1', '1.5', '2']);
  assert.deepEqual(g.xTicks.map((t) => t.label), ['now', '−15 s', '−30 s', '−45 s', '−60 s']);
  assert.equal(g.xTicks[0].x, g.plot.right);
  assert.equal(g.xTicks[4].x, g.plot.left);
  // Both lines reach "now": both labels beside the plot, apart.
  assert.ok(Math.abs(g.labels.dc.y - g.labels.relay.y) >= 13);
  assert.ok(g.labels.dc.x > g.plot.right && g.labels.relay.x > g.plot.right);

  // A line that stopped 20 s ago is named where it stops, not beside "now".
  const stopped = chartGeometry({ series: { dc: dc.filter((e) => e.t <= end - 20_000), relay }, end, windowMs: 60_000 });
  assert.equal(stopped.labels.dc.anchor, 'end');
  assert.ok(stopped.labels.dc.x < stopped.plot.right - 100);
  assert.equal(stopped.labels.relay.anchor, 'start');
});

test('chart geometry: log scale spans powers of ten; no data is an empty chart, not NaN', () => {
  const end = 5000;
  const g = chartGeometry({
    series: { dc: entries(2, end, () => 0.4), relay: entries(2, end, () => 800) }, end, windowMs: 60_000, log: true,
  });
  assert.deepEqual(g.yTicks.map((t) => t.label), ['0.1', '1', '10', '100', '1000']);
  const ys = (d) => d.split(/[ML ]/).filter(Boolean).map(Number).filter((_, i) => i % 2 === 1);
  assert.ok(Math.max(...ys(g.lines.relay.d)) < Math.min(...ys(g.lines.dc.d)), 'relay drawn above the data channel');

  const empty = chartGeometry({ series: { dc: [], relay: [] }, end, windowMs: 60_000 });
  assert.equal(empty.empty, true);
  assert.equal(empty.lines.dc.d, '');
  assert.equal(empty.labels.dc, null);
  assert.ok(empty.yTicks.every((t) => Number.isFinite(t.y)));
  const emptyLog = chartGeometry({ series: { dc: [], relay: [] }, end, windowMs: 60_000, log: true });
  assert.ok(emptyLog.yTicks.every((t) => Number.isFinite(t.y)));
});

// --- Comparison against fakes ---

class FakeSignaling extends EventTarget {
  state = 'open';
  transport = 'ws';
  relayed = [];
  relay(data, to) { this.relayed.push({ data, to }); return true; }
  deliver(from, data) { this.dispatchEvent(new CustomEvent('relay', { detail: { type: 'relay', from, data } })); }
}

class FakeMesh extends EventTarget {
  ready = true;
  pinged = [];
  ping(peerId, msg) {
    if (!this.ready) return false;
    this.pinged.push({ peerId, ...msg });
    return true;
  }
  snapshot() { return { B: { ready: this.ready, dc: 'open', pairType: 'host', remoteType: 'host' } }; }
  emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }
}

function comparison(t) {
  const clock = { now: 1000 };
  const signaling = new FakeSignaling();
  const mesh = new FakeMesh();
  const cmp = new Comparison(signaling, mesh, { now: () => clock.now });
  // Past the loss deadline nothing is pending, so stopping leaves no timer behind to keep the test alive.
  t.after(() => {
    clock.now += LOST_AFTER_MS;
    cmp.stop();
  });
  return { clock, signaling, mesh, cmp };
}

test('a ping goes out once on both paths, and each answer counts on its own path', (t) => {
  const { clock, signaling, mesh, cmp } = comparison(t);
  cmp.start('B');
  assert.equal(mesh.pinged.length, 1);
  assert.equal(signaling.relayed.length, 1);
  const ping = signaling.relayed[0];
  assert.equal(ping.to, 'B');
  assert.deepEqual(ping.data, { t: 'ping', id: mesh.pinged[0].id, ts: 1000 }, 'same id, same timestamp');
  assert.equal(mesh.pinged[0].ts, 1000);

  clock.now = 1000.8;
  mesh.emit('pong', { peerId: 'B', id: ping.data.id });
  clock.now = 1003;
  signaling.deliver('B', { t: 'pong', id: ping.data.id, ts: 1000, via: 'longpoll' });
  const s = cmp.snapshot();
  assert.equal(s.summary.dc.samples, 1);
  assert.ok(Math.abs(s.summary.dc.p50 - 0.8) < 1e-9);
  assert.equal(s.summary.relay.p50, 3);
  assert.equal(s.remoteTransport, 'longpoll');
  assert.equal(s.relayTransport, 'ws');
  assert.deepEqual(s.dcPath, { local: 'host', remote: 'host', ready: true, channel: 'open' });
  assert.equal(s.ignored, 0);

  // The mesh's own once-a-second probe (integer ids) is not ours and not garbage either.
  mesh.emit('pong', { peerId: 'B', id: 17 });
  assert.equal(cmp.snapshot().ignored, 0);
});

test('the other side answers relay pings on the relay, and channel pings are counted', (t) => {
  const { signaling, mesh, cmp } = comparison(t);
  signaling.transport = 'sse';
  signaling.deliver('A', { t: 'ping', id: 'c9', ts: 55.5, junk: 'x'.repeat(100) });
  assert.deepEqual(signaling.relayed, [{ to: 'A', data: { t: 'pong', id: 'c9', via: 'sse', ts: 55.5 } }]);
  mesh.emit('ping', { peerId: 'A', id: 'c9' });
  mesh.emit('ping', { peerId: 'A', id: 3 }); // the mesh's own probe
  const s = cmp.snapshot();
  assert.deepEqual(s.answered, { dc: 1, relay: 1 });
  assert.deepEqual(s.answeredIds, { dc: ['c9'], relay: ['c9'] });
  assert.equal(s.running, false, 'answering needs no run of our own');
});

test('malformed relay data, unknown and duplicate pongs are ignored and counted', (t) => {
  const { signaling, cmp } = comparison(t);
  cmp.start('B');
  const id = signaling.relayed[0].data.id;
  signaling.deliver('B', { t: 'pong', id });
  const before = signaling.relayed.length;
  for (const data of ['garbage', null, [1, 2], { t: 'pong', id: 'nope' }, { t: 'pong', id }, { t: 'ping' }]) {
    signaling.deliver('B', data);
  }
  signaling.deliver('C', { t: 'pong', id: 'c1' });
  const s = cmp.snapshot();
  assert.equal(s.ignored, 7);
  assert.equal(s.summary.relay.samples, 1);
  assert.equal(signaling.relayed.length, before, 'nothing answered');
});

test('a relay ping flood gets at most 20 answers a second', (t) => {
  const { clock, signaling, cmp } = comparison(t);
  for (let i = 0; i < 100; i++) signaling.deliver('A', { t: 'ping', id: i });
  assert.equal(signaling.relayed.length, 20);
  assert.equal(cmp.snapshot().ignored, 80);
  clock.now += 1000;
  signaling.deliver('A', { t: 'ping', id: 'next' });
  assert.equal(signaling.relayed.length, 21);
});

test('a path that is down loses its ping at once; a run stops when its peer leaves', (t) => {
  const { clock, signaling, mesh, cmp } = comparison(t);
  signaling.state = 'reconnecting';
  mesh.ready = false;
  cmp.start('B');
  assert.equal(signaling.relayed.length, 0, 'no relay queued behind a dead connection');
  let s = cmp.snapshot();
  assert.equal(s.summary.relay.lost, 1);
  assert.equal(s.summary.dc.lost, 1);
  assert.equal(s.summary.dc.pending, 0);

  mesh.emit('peer-removed', { peerId: 'B', reason: 'left' });
  s = cmp.snapshot();
  assert.equal(s.running, false);
  assert.match(s.stopReason, /left/);
  clock.now += WINDOW_MS - LOST_AFTER_MS;
  assert.equal(cmp.snapshot().series.dc.length, 1, 'a stopped run keeps its chart');
});
