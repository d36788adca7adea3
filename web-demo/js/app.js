// Wires the signaling client, the mesh and the UI together, and exposes the test hooks (docs/web-demo.md).

import { SignalingClient } from './signaling.js';
import { Mesh } from './mesh.js';
import { Comparison } from './compare.js';
import { createCompareView } from './compare-view.js';
import { TRANSPORTS } from './transports.js';
import { createUi, transportLabel } from './ui.js';
import { UNAUTHORIZED_CLOSE, isAuthRefusal, joinTokenFrom, refusalNotice } from './access.js';

const ROOM_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/;
const RENDER_INTERVAL_MS = 1000;
/** The compare panel changes several times per ping; one redraw per this long is enough to look live. */
const COMPARE_RENDER_MS = 100;

const probeEarly = new URLSearchParams(location.search).get('probe') === 'early';
// `?relay=only`: TURN relays only (for tests, and for anyone who does not want peers to see their address).
const relayOnly = new URLSearchParams(location.search).get('relay') === 'only';
// `transport=ws|sse|longpoll|shortpoll`, in the fragment (like the room) or the query: use only that one.
const forcedTransport = param('transport');
// `?token=…` (or `#token=…`): the join token a server started with --auth-secret-file requires. A secret: it
// goes to the server on every join and resume and nowhere else (not the page, not its state, not the console).
const joinToken = joinTokenFrom(location.search, location.hash);
// Filled in by the mesh; created here so `window.demo.timings` exists before the first join.
const timings = { welcomeAt: null, openAt: {}, dcOpenAt: {} };

/** @type {{room: string, signaling: SignalingClient, mesh: Mesh, comparison: Comparison} | null} */
let session = null;
let serverRttMs = null;
let resumes = 0;
/** The error code of a join the server refused for its token ("unauthorized", "token-expired"), or null. */
let joinRefused = null;

const ui = createUi({
  onJoin: (room) => {
    // The address names the room, so it can be shared and reloaded; the rest of the fragment (a forced
    // transport, a join token) and the query stay.
    const hash = new URLSearchParams(location.hash.slice(1));
    hash.set('room', room);
    history.replaceState(null, '', `#${hash}`);
    join(room);
  },
  onSend: (text) => sendChat(text),
});
const compareView = createCompareView({
  onToggle: (peerId) => {
    const comparison = session?.comparison;
    if (comparison?.running) comparison.stop();
    else if (comparison && peerId) comparison.start(peerId);
  },
});
let compareRenderQueued = false;

/** Redraws the compare panel soon, once however many changes come meanwhile. */
function renderCompareSoon() {
  if (compareRenderQueued) return;
  compareRenderQueued = true;
  setTimeout(() => {
    compareRenderQueued = false;
    compareView.render(state());
  }, COMPARE_RENDER_MS);
}

/** Sends a line to every peer and shows it; returns how many peers it was addressed to. */
function sendChat(text) {
  if (!session) return 0;
  const peers = session.mesh.send(text);
  ui.addChatLine({ from: session.signaling.peerId, text, self: true });
  if (peers === 0) ui.addChatLine({ system: true, text: 'Nobody else is in the room; that line went nowhere.' });
  return peers;
}

/** A parameter of the fragment (`#room=…&transport=…`), or else of the query string. */
function param(name) {
  return new URLSearchParams(location.hash.slice(1)).get(name) ?? new URLSearchParams(location.search).get(name);
}

function roomFromHash() {
  return new URLSearchParams(location.hash.slice(1)).get('room');
}

function state() {
  return {
    peerId: session?.signaling.peerId ?? null,
    room: session?.room ?? null,
    signaling: session?.signaling.state ?? 'closed',
    transport: session?.signaling.transport ?? null, // "ws" | "sse" | "longpoll" | "shortpoll"
    forcedTransport: session?.forced ?? null,
    serverRttMs,
    resumes, // sessions resumed after a drop (`resumed` messages)
    connections: session?.signaling.connections ?? 0, // connections tried: the server was asked this often
    joinToken: joinToken !== null, // whether the page has one (never the token itself)
    joinRefused,
    peers: session?.mesh.snapshot() ?? {},
    received: session ? [...session.mesh.received] : [],
    earlyReceived: session?.mesh.earlyReceived ?? 0,
    compare: session?.comparison.snapshot() ?? null,
  };
}

function join(room) {
  if (!ROOM_PATTERN.test(room) || room === '.' || room === '..') {
    ui.notice(`"${room}" is not a valid room name.`, { bad: true });
    ui.showJoin(randomRoom());
    return;
  }
  let forced = null;
  if (forcedTransport !== null) {
    if (Object.hasOwn(TRANSPORTS, forcedTransport)) forced = forcedTransport;
    else ui.notice(`Unknown transport "${forcedTransport}"; trying them all.`, { bad: true });
  }
  const signaling = new SignalingClient(room, { ...(forced ? { transports: [forced] } : {}), joinToken });
  const mesh = new Mesh(signaling, { probeEarly, timings, relayOnly });
  const comparison = new Comparison(signaling, mesh);
  session = { room, signaling, mesh, comparison, forced };
  ui.showSession(room);

  const render = () => {
    ui.render(state());
    renderCompareSoon();
  };
  comparison.addEventListener('change', renderCompareSoon);
  signaling.addEventListener('state', render);
  signaling.addEventListener('transport', render);
  /** "SSE + POST (WebSocket unavailable)": which transport, and whether it is a fallback. */
  const over = () => {
    const { transport, transports } = signaling;
    const fallback = transport !== transports[0] ? ` (${transports.slice(0, transports.indexOf(transport))
      .map(transportLabel).join(', ')} unavailable)` : '';
    return `${transportLabel(transport)}${forced ? ' (forced)' : fallback}`;
  };
  signaling.addEventListener('welcome', (e) => {
    if (e.detail.recovered === false) {
      ui.notice(`The signaling session could not be resumed: new peer id, connecting to the peers again (over ${over()}).`, { bad: true });
    } else {
      ui.notice(`Joined "${room}" over ${over()}.`);
    }
    render();
  });
  signaling.addEventListener('resumed', (e) => {
    resumes += 1;
    ui.notice(`Signaling resumed over ${over()}: ${e.detail.replayed} missed messages replayed.`);
    render();
  });
  signaling.addEventListener('pong', (e) => { serverRttMs = e.detail.rttMs; });
  signaling.addEventListener('gap', (e) => {
    ui.notice(`Signaling lost messages (expected #${e.detail.expected}, got #${e.detail.got}).`, { bad: true });
  });
  const refused = (code, message) => {
    joinRefused = code;
    ui.notice(refusalNotice({ code, message, hadToken: joinToken !== null, token: joinToken }), { bad: true });
    render();
  };
  signaling.addEventListener('error', (e) => {
    if (isAuthRefusal(e.detail.code)) refused(e.detail.code, e.detail.message);
    else ui.notice(`Server: ${e.detail.code}: ${e.detail.message}`, { bad: true });
  });
  signaling.addEventListener('disconnect', (e) => {
    const { code, reason, reconnectInMs } = e.detail;
    // 4503 stops the client (4500–4999: not without a change); the refusal's notice stays up.
    if (code === UNAUTHORIZED_CLOSE && reconnectInMs === null) {
      if (joinRefused === null) refused('unauthorized', reason);
      return;
    }
    const why = `Signaling closed (${code}${reason ? ` ${reason}` : ''})`;
    if (reconnectInMs === null) ui.notice(`${why}.`, { bad: code !== 1000 });
    else if (reconnectInMs === 0) ui.notice(`${why}; resuming now. Peer connections stay up meanwhile.`, { bad: true });
    else ui.notice(`${why}; reconnecting in ${(reconnectInMs / 1000).toFixed(1)} s.`, { bad: true });
  });
  signaling.addEventListener('peer-joined', (e) => ui.addChatLine({ system: true, text: `${e.detail.peer_id} joined.` }));
  mesh.addEventListener('peer-removed', (e) => {
    ui.addChatLine({ system: true, text: `${e.detail.peerId} left (${e.detail.reason}).` });
  });
  mesh.addEventListener('chat', (e) => ui.addChatLine(e.detail));
  mesh.addEventListener('change', render);
  // Stats and RTTs change continuously; a steady refresh is simpler than an event per number.
  setInterval(render, RENDER_INTERVAL_MS);

  signaling.connect();
}

function randomRoom() {
  const bytes = crypto.getRandomValues(new Uint8Array(4));
  return `room-${[...bytes].map((b) => b.toString(16).padStart(2, '0')).join('')}`;
}

window.demo = {
  state,
  // Drops the signaling connection as a network failure would; the client resumes by itself.
  dropSignaling: () => session?.signaling.dropConnection(),
  send: sendChat,
  // Closes the chat channel with one peer for good (the connection stays): the compare panel's direct path dies.
  closeChannel: (peerId) => session?.mesh.closeChannel(peerId),
  // Pushes any JSON through the server as this page's `relay` (e.g. malformed compare probes, for tests).
  relay: (data, to) => session?.signaling.relay(data, to) ?? false,
  timings,
};

addEventListener('hashchange', () => {
  const room = roomFromHash();
  // One page load is one room (and one transport choice): a fresh page is the simplest way to drop every
  // connection and counter.
  if (room !== (session?.room ?? null) || param('transport') !== forcedTransport) location.reload();
});

addEventListener('pagehide', () => {
  // `leave` lets the others see "left" at once instead of waiting for the socket to be noticed closed.
  session?.comparison.stop();
  session?.signaling.close();
  session?.mesh.close();
});

addEventListener('pageshow', (e) => {
  // Restored from the back/forward cache after pagehide closed everything: start over.
  if (e.persisted) location.reload();
});

const initialRoom = roomFromHash();
if (initialRoom) join(initialRoom);
else ui.showJoin(randomRoom());
