// The only module that touches the DOM. It renders plain state objects and reports user intent through
// callbacks, so signaling.js and mesh.js stay reusable without this page.

const STATE_CLASS = {
  connected: 'state-good',
  completed: 'state-good',
  open: 'state-good',
  checking: 'state-warn',
  connecting: 'state-warn',
  new: 'state-warn',
  reconnecting: 'state-warn',
  disconnected: 'state-bad',
  failed: 'state-bad',
  closed: 'state-bad',
  closing: 'state-bad',
};

const TRANSPORT_LABELS = {
  ws: 'WebSocket', sse: 'SSE + POST', longpoll: 'long polling + POST', shortpoll: 'short polling + POST',
};

/** How the page names a transport ("sse" → "SSE + POST"). */
export function transportLabel(kind) {
  return TRANSPORT_LABELS[kind] ?? '–';
}

/**
 * @param {{onJoin: (room: string) => void, onSend: (text: string) => void}} handlers
 */
export function createUi({ onJoin, onSend }) {
  const $ = (id) => document.getElementById(id);
  const el = {
    notice: $('notice'),
    join: $('join'),
    joinForm: $('join-form'),
    roomInput: $('room-input'),
    session: $('session'),
    roomName: $('room-name'),
    peerId: $('peer-id'),
    signalingState: $('signaling-state'),
    transport: $('transport'),
    serverRtt: $('server-rtt'),
    peerCount: $('peer-count'),
    noPeers: $('no-peers'),
    peers: $('peers'),
    chatLog: $('chat-log'),
    composer: $('composer'),
    message: $('message'),
  };

  el.joinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (el.roomInput.reportValidity()) onJoin(el.roomInput.value.trim());
  });
  // A form submit is what Enter in the message field does, so Enter sends.
  el.composer.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = el.message.value;
    if (!text.trim()) return;
    onSend(text);
    el.message.value = '';
  });

  return {
    showJoin(suggestedRoom) {
      el.session.hidden = true;
      el.join.hidden = false;
      el.roomInput.value = suggestedRoom;
      el.roomInput.focus();
      el.roomInput.select();
    },

    showSession(room) {
      el.join.hidden = true;
      el.session.hidden = false;
      el.roomName.textContent = room;
      document.title = `${room} – WebRTC room demo`;
      el.message.focus();
    },

    notice(text, { bad = false } = {}) {
      el.notice.textContent = text;
      el.notice.classList.toggle('bad', bad);
    },

    /** @param {{from: string, text: string, self?: boolean, system?: boolean}} line */
    addChatLine({ from, text, self = false, system = false }) {
      const li = document.createElement('li');
      if (system) {
        li.className = 'system';
        li.textContent = text;
      } else {
        if (self) li.className = 'self';
        const who = document.createElement('span');
        who.className = 'who mono';
        who.textContent = self ? 'me' : shortId(from);
        li.append(who, document.createTextNode(text));
      }
      const atBottom = el.chatLog.scrollTop + el.chatLog.clientHeight >= el.chatLog.scrollHeight - 4;
      el.chatLog.append(li);
      // Follow new lines unless the reader scrolled up to read older ones.
      if (atBottom) el.chatLog.scrollTop = el.chatLog.scrollHeight;
    },

    /**
     * @param {{peerId: string|null, signaling: string, transport: string|null, forcedTransport: string|null,
     *   serverRttMs: number|null, peers: object}} state
     */
    render(state) {
      el.peerId.textContent = state.peerId ?? '…';
      setState(el.signalingState, state.signaling);
      el.transport.textContent = `${transportLabel(state.transport)}${state.forcedTransport ? ' (forced)' : ''}`;
      el.transport.dataset.transport = state.transport ?? '';
      el.serverRtt.textContent = formatMs(state.serverRttMs);
      const entries = Object.entries(state.peers);
      el.peerCount.textContent = entries.length ? `(${entries.length})` : '';
      el.noPeers.hidden = entries.length > 0;
      el.peers.replaceChildren(...entries.map(([id, peer]) => renderPeer(id, peer)));
    },
  };
}

function renderPeer(id, peer) {
  const li = document.createElement('li');
  li.className = 'peer';
  const title = document.createElement('h3');
  title.className = 'mono';
  title.textContent = id;
  const facts = document.createElement('dl');
  facts.className = 'facts';
  const path = peer.pairType ? `${peer.pairType} → ${peer.remoteType ?? '?'}` : '–';
  const addresses = peer.localAddress ? `${peer.localAddress} ↔ ${peer.remoteAddress ?? '?'}` : '–';
  const rows = [
    ['Connection', peer.pc, true],
    ['ICE', peer.ice, true],
    ['Channel', peer.ready ? `${peer.dc}, ready` : peer.queued ? `${peer.dc}, ${peer.queued} queued` : peer.dc, true],
    ['Path', path],
    ['Addresses', addresses],
    ['RTT (ICE)', formatMs(peer.rttMs)],
    ['RTT (channel)', formatMs(peer.appRttMs)],
  ];
  // e.g. a TURN server refusing an expired credential (401); only worth showing while there is no path.
  if (peer.iceError && peer.pc !== 'connected') rows.push(['ICE error', peer.iceError]);
  for (const [name, value, colored] of rows) {
    const dt = document.createElement('dt');
    dt.textContent = name;
    const dd = document.createElement('dd');
    if (colored) setState(dd, value);
    else dd.textContent = value;
    facts.append(dt, dd);
  }
  li.append(title, facts);
  return li;
}

function setState(node, value) {
  node.textContent = value;
  node.className = STATE_CLASS[String(value).split(',')[0]] ?? '';
}

function formatMs(ms) {
  return typeof ms === 'number' ? `${ms.toFixed(1)} ms` : '–';
}

/** The first 8 characters of a peer id, enough to tell peers apart on screen; '–' for none. */
export function shortId(id) {
  return id && id.length > 8 ? id.slice(0, 8) : id ?? '–';
}
