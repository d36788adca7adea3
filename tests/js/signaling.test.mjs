// Unit tests of the browser signaling client's session logic (run with `node --test tests/js/`): transport
// fallback with no delay, exactly-once processing of seqs, resume with resending of unacknowledged messages,
// new sessions, close codes. The transports are fakes driven by the test (the real ones are covered by the
// browser e2e tests).
import test from 'node:test';
import assert from 'node:assert/strict';
import { SignalingClient } from '../../web-demo/js/signaling.js';

/** A fake transport the test drives: `server(msg)`, `end(info)`; it records what the client sent. */
class Fake {
  sent = [];
  closed = null;
  left = false;
  constructor(kind, options, handlers) {
    Object.assign(this, { kind, options, handlers });
  }
  send(msg) { this.sent.push(msg); return true; }
  leave() { this.left = true; }
  close(code, reason) { this.closed = { code, reason }; }
  server(msg) { this.handlers.message(msg); }
  end(code, server = true) { this.handlers.end({ code, reason: '', server }); }
}

function setup(transports = ['ws', 'sse', 'longpoll']) {
  const made = [];
  const factories = Object.fromEntries(
    ['ws', 'sse', 'longpoll', 'shortpoll'].map((kind) => [kind, (options, handlers) => {
      const t = new Fake(kind, options, handlers);
      made.push(t);
      return t;
    }]),
  );
  const client = new SignalingClient('room', { origin: 'http://127.0.0.1:1', transports, factories });
  const events = [];
  for (const type of ['welcome', 'signal', 'resumed', 'gap', 'disconnect', 'transport']) {
    client.addEventListener(type, (e) => events.push([type, e.detail]));
  }
  return { client, made, events, last: () => made[made.length - 1] };
}

const HEARTBEAT = { interval_ms: 60_000, timeout_ms: 30_000 }; // long enough not to fire during a test
const welcome = (peer, token, extra = {}) => ({
  type: 'welcome', seq: 1, peer_id: peer, peers: [], heartbeat: HEARTBEAT,
  session: { token, url: `/v1/sessions/${peer}`, resume_window_ms: 30_000 }, ...extra,
});
const tick = () => new Promise((resolve) => setTimeout(resolve, 5));
const numbered = (t) => t.sent.filter((m) => m.cseq !== undefined).map((m) => m.cseq);

test('first connect falls through failing transports with no delay', () => {
  const { client, made } = setup();
  client.connect();
  made[0].end(1006, false); // WebSocket refused before any message (e.g. 404)
  assert.equal(made.length, 2, 'SSE is tried at once');
  assert.equal(made[1].kind, 'sse');
  assert.equal(made[1].options.resume, null, 'a first connect joins');
  made[1].server(welcome('p1', 't1'));
  assert.equal(client.state, 'open');
  assert.equal(client.transport, 'sse');
  assert.equal(client.peerId, 'p1');
  client.close();
  assert.ok(made[1].left, 'close() leaves');
});

test('a refused join stops, with no other transport tried', () => {
  const { client, made, events } = setup();
  client.connect();
  made[0].server({ type: 'error', seq: 1, code: 'room-full', message: 'full' });
  made[0].end(4501);
  assert.equal(made.length, 1);
  assert.equal(client.state, 'closed');
  assert.deepEqual(events.at(-1), ['disconnect', { code: 4501, reason: '', reconnectInMs: null }]);
});

test('seqs are processed exactly once; a gap resumes from the last good one', async () => {
  const { client, made, events } = setup();
  client.connect();
  const ws = made[0];
  ws.server(welcome('p1', 't1'));
  ws.server({ type: 'signal', seq: 2, from: 'x', data: { kind: 'end-of-candidates' } });
  ws.server({ type: 'signal', seq: 2, from: 'x', data: { kind: 'end-of-candidates' } }); // duplicate
  ws.server({ type: 'signal', seq: 4, from: 'x', data: { kind: 'end-of-candidates' } }); // gap
  assert.equal(events.filter(([t]) => t === 'signal').length, 1);
  assert.deepEqual(events.find(([t]) => t === 'gap')[1], { expected: 3, got: 4 });
  assert.ok(ws.closed, 'the connection out of step is dropped');
  await tick();
  assert.deepEqual(made[1].options.resume, { token: 't1', after: 2 }, 'resumes at once from seq 2');
  assert.equal(made[1].kind, 'ws', 'each attempt starts with the first transport');
  client.close();
});

test('a drop resumes at once; unacknowledged messages go again after resumed, in order', async () => {
  const { client, made, events } = setup();
  client.connect();
  const ws = made[0];
  ws.server(welcome('p1', 't1'));
  for (const n of [1, 2, 3]) assert.ok(client.relay({ n }));
  assert.deepEqual(numbered(ws), [1, 2, 3]);
  ws.server({ type: 'pong', seq: 2, id: 1, received: 1 });
  assert.equal(client.unacked, 2, 'pong.received acknowledges');

  ws.end(1006, false); // dropped: no close frame
  assert.equal(events.at(-1)[1].reconnectInMs, 0);
  assert.ok(client.relay({ n: 4 }), 'messages are kept while reconnecting');
  await tick();
  const again = made[1];
  assert.deepEqual(again.options.resume, { token: 't1', after: 2 });
  again.end(1006, false); // WebSocket blocked now: SSE at once
  const sse = made[2];
  assert.equal(sse.kind, 'sse');
  sse.server({ type: 'relay', seq: 3, from: 'x', data: 'missed' });
  assert.deepEqual(numbered(sse), [], 'nothing is sent before resumed says what arrived');
  sse.server({ type: 'resumed', seq: 4, replayed: 1, received: 2 });
  assert.deepEqual(numbered(sse), [3, 4], 'only the messages above received, in order');
  assert.equal(client.unacked, 2);
  assert.equal(client.peerId, 'p1');
  assert.equal(client.transport, 'sse');
  client.close();
});

test('a failed resume is a new session: the old messages are dropped and cseq starts again', async () => {
  const { client, made, events } = setup();
  client.connect();
  made[0].server(welcome('p1', 't1'));
  client.signal('old-peer', { kind: 'end-of-candidates' });
  made[0].end(1006, false);
  await tick();
  made[1].server(welcome('p2', 't2', { recovered: false, peers: ['q'] }));
  assert.equal(client.peerId, 'p2');
  assert.equal(client.unacked, 0);
  assert.equal(events.filter(([t]) => t === 'welcome').length, 2);
  client.signal('q', { kind: 'end-of-candidates' });
  assert.deepEqual(numbered(made[1]), [1]);
  client.close();
});

test('4000-4499 backs off before coming back; 4502 and 1000 stop', () => {
  const { client, made, events } = setup();
  client.connect();
  made[0].server(welcome('p1', 't1'));
  made[0].end(4000); // shutdown
  const { reconnectInMs } = events.at(-1)[1];
  assert.ok(reconnectInMs >= 500 && reconnectInMs <= 1000, `first backoff ${reconnectInMs}`);
  assert.equal(made.length, 1, 'nothing before the delay');
  client.close();

  for (const code of [4502, 1000]) {
    const s = setup(['sse']);
    s.client.connect();
    s.made[0].server(welcome('p1', 't1'));
    s.made[0].end(code);
    assert.equal(s.client.state, 'closed', `code ${code}`);
  }
});

test('a forced transport is the only one tried', () => {
  const { client, made, events } = setup(['longpoll']);
  client.connect();
  made[0].end(1006, false);
  assert.equal(made.length, 1);
  assert.equal(client.state, 'connecting');
  assert.ok(events.at(-1)[1].reconnectInMs >= 500, 'the next attempt backs off');
  client.close();
});
