// Join tokens in the web demo (run with `node --test tests/js/`): where the page finds one (access.js), the
// join URLs that carry it with the page's scheme (transports.js), that the signaling client hands it to every
// join and resume and stops for good on a refusal (signaling.js), and that no notice ever contains it.
import test from 'node:test';
import assert from 'node:assert/strict';
import { isAuthRefusal, joinTokenFrom, redact, refusalNotice } from '../../web-demo/js/access.js';
import { joinUrl } from '../../web-demo/js/transports.js';
import { SignalingClient } from '../../web-demo/js/signaling.js';

const TOKEN = 'eyJhbGciOiJIUzI1NiJ9.eyJyb29tIjoiYSIsImV4cCI6OTk5OTk5OTk5OX0.c2lnbmF0dXJl';

test('the token comes from the fragment, else the query; empty is none', () => {
  assert.equal(joinTokenFrom(`?token=${TOKEN}`, '#room=a'), TOKEN);
  assert.equal(joinTokenFrom('?token=q', '#room=a&token=f'), 'f', 'the fragment wins');
  assert.equal(joinTokenFrom('?transport=ws', '#room=a'), null);
  assert.equal(joinTokenFrom('?token=', ''), null);
  assert.equal(joinTokenFrom('', ''), null);
  // URLSearchParams decodes: a token with `+` must be percent-encoded in the link, as any query value.
  assert.equal(joinTokenFrom('?token=a%2Bb', ''), 'a+b');
});

test('join URLs follow the origin scheme: https → wss/https, http → ws/http', () => {
  assert.equal(joinUrl('https://127.0.0.1:8443', 'r', 'ws'), 'wss://127.0.0.1:8443/v1/rooms/r/ws');
  assert.equal(joinUrl('https://127.0.0.1:8443', 'r', 'sse'), 'https://127.0.0.1:8443/v1/rooms/r/sse');
  assert.equal(joinUrl('https://127.0.0.1:8443', 'r', 'poll'), 'https://127.0.0.1:8443/v1/rooms/r/poll');
  assert.equal(joinUrl('http://127.0.0.1:8080', 'r', 'ws'), 'ws://127.0.0.1:8080/v1/rooms/r/ws');
  assert.equal(joinUrl('http://127.0.0.1:8080', 'r', 'sse'), 'http://127.0.0.1:8080/v1/rooms/r/sse');
});

test('join URLs carry the token (encoded) on joins and resumes, and nothing without one', () => {
  const join = new URL(joinUrl('https://h', 'r.1', 'ws', { joinToken: 'a+b/c=&d' }));
  assert.equal(join.searchParams.get('token'), 'a+b/c=&d', 'survives a round trip through the query');
  assert.equal([...join.searchParams.keys()].join(','), 'token');
  const resume = new URL(joinUrl('https://h', 'r', 'poll', { resume: { token: 's1', after: 7 }, joinToken: TOKEN }));
  assert.equal(resume.searchParams.get('resume'), 's1');
  assert.equal(resume.searchParams.get('after'), '7');
  assert.equal(resume.searchParams.get('token'), TOKEN);
  assert.equal(joinUrl('https://h', 'r', 'sse', { joinToken: null }), 'https://h/v1/rooms/r/sse');
  assert.equal(joinUrl('https://h', 'r', 'sse', { joinToken: '' }), 'https://h/v1/rooms/r/sse');
});

test('refusal notices say what to do, that the page stops, and never contain the token', () => {
  assert.ok(isAuthRefusal('unauthorized'));
  assert.ok(isAuthRefusal('token-expired'));
  assert.ok(!isAuthRefusal('room-full'));
  const none = refusalNotice({ code: 'unauthorized', message: 'a join token is required', hadToken: false });
  assert.match(none, /invitation link/);
  assert.match(none, /has none/);
  assert.match(none, /Not retrying\.$/);
  const wrong = refusalNotice({
    code: 'unauthorized', message: `the join token is not for this room ${TOKEN}`, hadToken: true, token: TOKEN,
  });
  assert.match(wrong, /refused this page's invitation \(unauthorized: the join token is not for this room …\)/);
  assert.ok(!wrong.includes(TOKEN), 'an echoed token is redacted');
  const expired = refusalNotice({ code: 'token-expired', hadToken: true, token: TOKEN });
  assert.match(expired, /expired \(token-expired\)/);
  assert.equal(redact(`x${TOKEN}y${TOKEN}`, TOKEN), 'x…y…');
  assert.equal(redact('plain', null), 'plain');
});

/** A SignalingClient over fake transports that record their options. */
function setup(joinToken) {
  const made = [];
  const factories = Object.fromEntries(['ws', 'sse', 'longpoll'].map((kind) => [kind, (options, handlers) => {
    const t = {
      kind, options, handlers, sent: [],
      send(msg) { this.sent.push(msg); return true; },
      leave() {}, close() {},
    };
    made.push(t);
    return t;
  }]));
  const client = new SignalingClient('room', { origin: 'https://127.0.0.1:1', joinToken, factories });
  const events = [];
  for (const type of ['error', 'disconnect']) client.addEventListener(type, (e) => events.push([type, e.detail]));
  return { client, made, events };
}

const HEARTBEAT = { interval_ms: 60_000, timeout_ms: 30_000 };
const welcome = (peer, token) => ({
  type: 'welcome', seq: 1, peer_id: peer, peers: [], heartbeat: HEARTBEAT,
  session: { token, url: `/v1/sessions/${peer}`, resume_window_ms: 30_000 },
});

test('the client hands the token to every join and resume, over every transport', async () => {
  const { client, made } = setup(TOKEN);
  client.connect();
  assert.equal(made[0].options.joinToken, TOKEN);
  made[0].handlers.end({ code: 1006, reason: '', server: false }); // WebSocket blocked
  assert.equal(made[1].kind, 'sse');
  assert.equal(made[1].options.joinToken, TOKEN);
  made[1].handlers.message(welcome('p1', 's1'));
  made[1].handlers.end({ code: 1006, reason: '', server: false }); // a drop: resume at once
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.deepEqual(made[2].options.resume, { token: 's1', after: 1 });
  assert.equal(made[2].options.joinToken, TOKEN, 'a resume that fails becomes a join, which needs it');
  assert.equal(client.connections, 3);
  assert.ok(!JSON.stringify(Object.keys(client)).includes('oken'), 'no public field holds it');
  client.close();
});

test('without a token the client sends none', () => {
  const { client, made } = setup(null);
  client.connect();
  assert.equal(made[0].options.joinToken, null);
  client.close();
});

test('a join refused for its token (4503) stops after one connection, whatever the transport', async () => {
  for (const code of ['unauthorized', 'token-expired']) {
    const { client, made, events } = setup(TOKEN);
    client.connect();
    made[0].handlers.message({ type: 'error', seq: 1, code, message: 'refused' });
    made[0].handlers.end({ code: 4503, reason: code, server: true });
    await new Promise((resolve) => setTimeout(resolve, 700)); // past the shortest backoff (500 ms)
    assert.equal(made.length, 1, 'no other transport, no reconnect');
    assert.equal(client.connections, 1);
    assert.equal(client.state, 'closed');
    assert.deepEqual(events.map(([t]) => t), ['error', 'disconnect']);
    assert.equal(events[1][1].reconnectInMs, null);
  }
});
