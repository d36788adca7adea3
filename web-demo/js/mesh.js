// Full mesh of WebRTC peer connections driven by a SignalingClient (docs/protocol.md, "Perfect negotiation"
// and "The web demo's data-channel messages"). No DOM access: embedders can reuse it with their own UI.
//
// Events (CustomEvent, payload in `detail`):
//   change        – {peerId}: something shown about that peer changed (state, stats, readiness)
//   peer-removed  – {peerId, reason}
//   chat          – {from, text}: a chat line from a peer
//   ping          – {peerId, id}: that peer's channel ping, answered with a pong on the same channel
//   pong          – {peerId, id}: a channel pong (our own once-a-second probe has integer ids; others are
//                   answers to `ping()`)

import { Reassembler, send as sendFramed } from './framing.js';
import { fetchIceServers, refreshAfterMs } from './ice.js';

const CHAT_LABEL = 'chat';
const HELLO_INTERVAL_MS = 250;
const STATS_INTERVAL_MS = 1000;
const CHANNEL_PING_INTERVAL_MS = 1000;
// Lines typed before a peer's channel is ready wait in memory; a peer that never becomes ready must not make
// that grow without bound.
const MAX_QUEUED_LINES = 1000;

export class Mesh extends EventTarget {
  #signaling;
  #probeEarly;
  #selfId = null;
  #iceServers = [];
  #iceTransportPolicy = 'all';
  #iceRefreshTimer = null;
  /** @type {Map<string, PeerLink>} */
  #peers = new Map();
  #nextChatId = 1;

  /** Chat lines received from peers, oldest first. */
  received = [];
  /** `{"t":"early"}` probe messages received (see the `probeEarly` option). */
  earlyReceived = 0;
  /** Date.now() stamps: when this session was welcomed, and per peer when its channel opened / became ready. */
  timings;

  /**
   * @param {import('./signaling.js').SignalingClient} signaling
   * @param {{probeEarly?: boolean, timings?: object}} [options]
   *   probeEarly: the side that receives a channel sends `{"t":"early"}` the instant it opens, before the
   *   readiness handshake, to measure whether such messages get lost.
   *   relayOnly: use TURN relays only (`iceTransportPolicy: "relay"`), so peers never see our addresses.
   */
  constructor(signaling, { probeEarly = false, timings = {}, relayOnly = false } = {}) {
    super();
    this.#signaling = signaling;
    this.#probeEarly = probeEarly;
    this.#iceTransportPolicy = relayOnly ? 'relay' : 'all';
    this.timings = Object.assign(timings, { welcomeAt: null, openAt: {}, dcOpenAt: {} });
    signaling.addEventListener('welcome', (e) => this.#onWelcome(e.detail));
    signaling.addEventListener('peer-joined', (e) => this.#ensurePeer(e.detail.peer_id, false));
    signaling.addEventListener('peer-left', (e) => this.#removePeer(e.detail.peer_id, e.detail.reason));
    signaling.addEventListener('signal', (e) => this.#ensurePeer(e.detail.from, false).handleSignal(e.detail.data));
  }

  /** Sends a chat line to every peer; it waits per peer until that peer is ready. Returns how many peers. */
  send(text) {
    const msg = { t: 'chat', id: this.#nextChatId++, text };
    for (const link of this.#peers.values()) link.sendChat(msg);
    return this.#peers.size;
  }

  /**
   * Sends `{t:"ping", id, ts}` to one peer over its channel now; its answer comes as a `pong` event.
   * @returns {boolean} false when that peer's channel is not ready (nothing was sent)
   */
  ping(peerId, { id, ts }) {
    return this.#peers.get(peerId)?.sendPing({ t: 'ping', id, ts }) ?? false;
  }

  /**
   * Closes the chat channel with one peer and leaves the connection up; the channel is not reopened. For tests
   * (and for watching the compare panel lose the direct path while the relay goes on).
   */
  closeChannel(peerId) {
    this.#peers.get(peerId)?.closeChannel();
  }

  /** A JSON-serialisable view of every peer, keyed by peer id. */
  snapshot() {
    return Object.fromEntries([...this.#peers].map(([id, link]) => [id, link.snapshot()]));
  }

  /** Closes every peer connection (the page is going away). */
  close() {
    clearTimeout(this.#iceRefreshTimer);
    for (const id of [...this.#peers.keys()]) this.#removePeer(id, 'closed');
  }

  #onWelcome(welcome) {
    // A welcome always starts a new session (a resumed one gets `resumed` instead): a new peer id, which the
    // others know nothing of, and `welcome.peers` may be other sessions than the ones we had. Connections of
    // the previous session are dropped and everything is negotiated afresh with `welcome.peers`. (While the
    // signaling connection is merely down, nothing here changes: established channels keep working.)
    const reason = welcome.recovered === false ? 'new session' : 'closed';
    for (const id of [...this.#peers.keys()]) this.#removePeer(id, reason);
    this.#selfId = welcome.peer_id;
    this.#iceServers = Array.isArray(welcome.ice_servers) ? welcome.ice_servers : [];
    this.#scheduleIceRefresh();
    this.timings.welcomeAt = Date.now();
    // Peers already in the room are waiting for us: as the later joiner we create the channels and offer.
    for (const peerId of welcome.peers ?? []) this.#ensurePeer(peerId, true);
  }

  #ensurePeer(peerId, initiator) {
    let link = this.#peers.get(peerId);
    if (link) return link;
    link = new PeerLink({
      selfId: this.#selfId,
      peerId,
      iceServers: this.#iceServers,
      iceTransportPolicy: this.#iceTransportPolicy,
      initiator,
      probeEarly: this.#probeEarly,
      signal: (data) => this.#signaling.signal(peerId, data),
      events: {
        changed: () => this.#emit('change', { peerId }),
        dcOpen: () => { this.timings.dcOpenAt[peerId] = Date.now(); },
        ready: () => { this.timings.openAt[peerId] = Date.now(); },
        chat: (text) => {
          this.received.push({ from: peerId, text });
          this.#emit('chat', { from: peerId, text });
        },
        early: () => { this.earlyReceived += 1; },
        ping: (id) => this.#emit('ping', { peerId, id }),
        pong: (id) => this.#emit('pong', { peerId, id }),
      },
    });
    this.#peers.set(peerId, link);
    this.#emit('change', { peerId });
    return link;
  }

  #removePeer(peerId, reason) {
    const link = this.#peers.get(peerId);
    if (!link) return;
    this.#peers.delete(peerId);
    link.close();
    this.#emit('peer-removed', { peerId, reason });
    this.#emit('change', { peerId });
  }

  /** TURN credentials expire: fetch fresh ones before they do; connections use them at their next gathering. */
  #scheduleIceRefresh() {
    clearTimeout(this.#iceRefreshTimer);
    const delay = refreshAfterMs(this.#iceServers, Date.now());
    if (delay === null) return;
    const selfId = this.#selfId;
    this.#iceRefreshTimer = setTimeout(async () => {
      try {
        const servers = await fetchIceServers(selfId, { sessionToken: this.#signaling.sessionToken });
        if (selfId !== this.#selfId) return; // a new session started meanwhile
        this.#iceServers = servers;
        for (const link of this.#peers.values()) link.setIceServers(servers);
      } catch (err) {
        console.warn('mesh: refreshing TURN credentials failed; retrying', err);
      }
      if (selfId === this.#selfId) this.#scheduleIceRefresh();
    }, delay);
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** One RTCPeerConnection and its `chat` channel, negotiated with the "perfect negotiation" pattern. */
class PeerLink {
  #pc;
  #polite;
  #signal;
  #events;
  #probeEarly;
  #makingOffer = false;
  #ignoreOffer = false;
  /** Remote candidates that arrived before a remote description they could belong to. */
  #pendingCandidates = [];
  /** Incoming signals are applied one at a time, in arrival order. */
  #inbox = Promise.resolve();
  #channel = null;
  #channelOpened = false;
  #ready = false;
  #outbox = [];
  #helloTimer = null;
  #pingTimer = null;
  #statsTimer = null;
  #nextPingId = 1;
  #stats = { pairType: null, remoteType: null, localAddress: null, remoteAddress: null, rttMs: null };
  /** The last ICE candidate error (e.g. a TURN server refusing an expired credential with 401). */
  #iceError = null;
  #appRttMs = null;

  constructor({ selfId, peerId, iceServers, iceTransportPolicy, initiator, probeEarly, signal, events }) {
    // Peer ids are ASCII, so UTF-16 comparison is the byte-wise order the protocol specifies.
    this.#polite = selfId < peerId;
    this.#signal = signal;
    this.#events = events;
    this.#probeEarly = probeEarly;

    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy });
    this.#pc = pc;
    pc.onicecandidateerror = (e) => {
      this.#iceError = `${e.url ?? ''} ${e.errorCode} ${e.errorText ?? ''}`.trim();
      this.#events.changed();
    };
    pc.onnegotiationneeded = () => this.#offer();
    pc.onicecandidate = ({ candidate }) => {
      if (candidate === null) this.#signal({ kind: 'end-of-candidates' });
      // An empty candidate string is a per-generation end marker; the null event that follows covers it.
      else if (candidate.candidate) this.#signal({ kind: 'candidate', candidate: candidate.toJSON() });
    };
    pc.onconnectionstatechange = () => {
      // Either side may restart; if both do, the offers collide and perfect negotiation settles it.
      if (pc.connectionState === 'failed') pc.restartIce();
      this.#events.changed();
    };
    pc.oniceconnectionstatechange = () => this.#events.changed();
    pc.ondatachannel = ({ channel }) => {
      if (channel.label !== CHAT_LABEL) {
        console.warn(`mesh: ignoring unexpected data channel "${channel.label}"`);
        return;
      }
      this.#attachChannel(channel, true);
    };
    // Creating the channel fires negotiationneeded, which sends the first offer.
    if (initiator) this.#attachChannel(pc.createDataChannel(CHAT_LABEL, { ordered: true }), false);
    this.#statsTimer = setInterval(() => this.#refreshStats(), STATS_INTERVAL_MS);
  }

  handleSignal(data) {
    this.#inbox = this.#inbox
      .then(() => this.#applySignal(data))
      .catch((err) => console.error(`mesh: applying ${data?.kind} failed`, err));
  }

  /** Sends now if the peer is ready, otherwise once its `hello` arrives. */
  sendChat(msg) {
    if (this.#ready) {
      this.#send(msg);
    } else if (this.#outbox.length < MAX_QUEUED_LINES) {
      this.#outbox.push(msg);
    } else {
      console.warn('mesh: peer never became ready; dropping chat line', msg);
    }
  }

  /** Sends a ping at once if the peer is ready; a ping queued for later would measure the wait, not the path. */
  sendPing(msg) {
    if (!this.#ready || this.#channel?.readyState !== 'open') return false;
    this.#send(msg);
    return true;
  }

  snapshot() {
    return {
      pc: this.#pc.connectionState,
      ice: this.#pc.iceConnectionState,
      dc: this.#channel?.readyState ?? 'none',
      ready: this.#ready,
      ...this.#stats,
      appRttMs: this.#appRttMs,
      iceError: this.#iceError,
      queued: this.#outbox.length,
    };
  }

  closeChannel() {
    this.#channel?.close();
  }

  /** New ICE servers (fresh credentials), used from the next ICE gathering on. */
  setIceServers(iceServers) {
    try {
      this.#pc.setConfiguration({ ...this.#pc.getConfiguration(), iceServers });
    } catch (err) {
      console.warn('mesh: cannot apply refreshed ICE servers', err);
    }
  }

  close() {
    clearInterval(this.#statsTimer);
    this.#stopChannelTimers();
    this.#ready = false;
    this.#channel?.close();
    this.#pc.close();
  }

  async #offer() {
    try {
      this.#makingOffer = true;
      await this.#pc.setLocalDescription();
      const { type, sdp } = this.#pc.localDescription;
      this.#signal({ kind: type, sdp });
    } catch (err) {
      console.error('mesh: creating an offer failed', err);
    } finally {
      this.#makingOffer = false;
    }
  }

  async #applySignal(data) {
    switch (data?.kind) {
      case 'offer':
      case 'answer':
        return this.#applyDescription({ type: data.kind, sdp: data.sdp });
      case 'candidate':
        return this.#applyCandidate(data.candidate);
      case 'end-of-candidates':
        return this.#applyCandidate(null);
      default:
        console.warn('mesh: ignoring unknown signal', data);
    }
  }

  async #applyDescription(description) {
    const pc = this.#pc;
    // The inbox applies one signal at a time, so a remote answer is never half-applied here and "stable"
    // alone says whether we are free to take an offer.
    const offerCollision = description.type === 'offer' && (this.#makingOffer || pc.signalingState !== 'stable');
    this.#ignoreOffer = !this.#polite && offerCollision;
    if (this.#ignoreOffer) return;
    // On the polite side a colliding offer rolls our own offer back implicitly.
    await pc.setRemoteDescription(description);
    if (description.type === 'offer') {
      await pc.setLocalDescription();
      const { type, sdp } = pc.localDescription;
      this.#signal({ kind: type, sdp });
    }
    const pending = this.#pendingCandidates;
    this.#pendingCandidates = [];
    for (const candidate of pending) await this.#applyCandidate(candidate);
  }

  /** @param {RTCIceCandidateInit | null} candidate null is end-of-candidates */
  async #applyCandidate(candidate) {
    if (!this.#pc.remoteDescription) {
      this.#pendingCandidates.push(candidate);
      return;
    }
    try {
      // addIceCandidate() without an argument is end-of-candidates.
      await (candidate === null ? this.#pc.addIceCandidate() : this.#pc.addIceCandidate(candidate));
    } catch (err) {
      // Candidates of an offer we ignored cannot apply; that is expected, not an error.
      if (!this.#ignoreOffer) console.warn('mesh: a remote candidate did not apply', candidate, err);
    }
  }

  #attachChannel(channel, received) {
    this.#channel = channel;
    // Binary frames carry the framing header (framing.js); ArrayBuffers are what the reassembler reads.
    channel.binaryType = 'arraybuffer';
    const reassembler = new Reassembler();
    // The handler is attached before anything is sent, so no hello can slip past it.
    channel.onmessage = (ev) => {
      let message;
      try {
        message = reassembler.push(ev.data);
      } catch (err) {
        console.warn(`mesh: dropped a bad frame (${err.code})`, err);
        return;
      }
      if (message !== null) this.#onChannelMessage(message);
    };
    channel.onopen = () => this.#onChannelOpen(received);
    channel.onclose = () => {
      this.#ready = false;
      this.#stopChannelTimers();
      this.#events.changed();
    };
    // A channel handed over by ondatachannel may already be open, and then no open event follows.
    if (channel.readyState === 'open') this.#onChannelOpen(received);
    this.#events.changed();
  }

  #onChannelOpen(received) {
    if (this.#channelOpened) return;
    this.#channelOpened = true;
    this.#events.dcOpen();
    if (received && this.#probeEarly) this.#channel.send(JSON.stringify({ t: 'early' }));
    // The other side may not have its handler attached yet, so repeat until it proves it hears us.
    this.#send({ t: 'hello', ack: false });
    this.#helloTimer = setInterval(() => this.#send({ t: 'hello', ack: false }), HELLO_INTERVAL_MS);
    this.#events.changed();
  }

  #onChannelMessage(raw) {
    if (typeof raw !== 'string') {
      // Native peers may send bytes; the chat can only say that they came.
      this.#events.chat(`[binary message, ${raw.byteLength} bytes]`);
      return;
    }
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      // Plain text from a client that does not speak the demo's JSON (e.g. a native app): show it as is.
      this.#events.chat(raw);
      return;
    }
    switch (msg?.t) {
      case 'hello':
        if (msg.ack !== true) this.#send({ t: 'hello', ack: true });
        if (!this.#ready) this.#becomeReady();
        break;
      case 'chat':
        if (typeof msg.text === 'string') this.#events.chat(msg.text);
        break;
      case 'ping':
        this.#send({ t: 'pong', id: msg.id, ts: msg.ts });
        this.#events.ping(msg.id);
        break;
      case 'pong':
        if (typeof msg.ts === 'number') {
          this.#appRttMs = performance.now() - msg.ts;
          this.#events.changed();
        }
        this.#events.pong(msg.id);
        break;
      case 'early':
        this.#events.early();
        break;
      default:
        console.warn('mesh: ignoring unknown channel message', msg);
    }
  }

  #becomeReady() {
    this.#ready = true;
    clearInterval(this.#helloTimer);
    this.#helloTimer = null;
    this.#events.ready();
    for (const msg of this.#outbox) this.#send(msg);
    this.#outbox = [];
    this.#pingTimer = setInterval(
      () => this.#send({ t: 'ping', id: this.#nextPingId++, ts: performance.now() }),
      CHANNEL_PING_INTERVAL_MS,
    );
    this.#events.changed();
  }

  #send(msg) {
    if (this.#channel?.readyState !== 'open') return;
    // framing.send chunks messages above the SCTP limit and waits while the channel buffers too much.
    sendFramed(this.#channel, JSON.stringify(msg)).catch((err) => console.warn(`mesh: send failed (${err.code})`, err));
  }

  #stopChannelTimers() {
    clearInterval(this.#helloTimer);
    clearInterval(this.#pingTimer);
    this.#helloTimer = null;
    this.#pingTimer = null;
  }

  async #refreshStats() {
    let report;
    try {
      report = await this.#pc.getStats();
    } catch {
      return; // the connection was closed meanwhile
    }
    let pair = null;
    for (const s of report.values()) {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId) ?? null;
    }
    // Not every browser names the selected pair on the transport; the nominated working pair is the same one.
    if (!pair) {
      for (const s of report.values()) {
        if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
      }
    }
    const local = pair && report.get(pair.localCandidateId);
    const remote = pair && report.get(pair.remoteCandidateId);
    this.#stats = {
      pairType: local?.candidateType ?? null,
      remoteType: remote?.candidateType ?? null,
      localAddress: formatAddress(local),
      remoteAddress: formatAddress(remote),
      rttMs: typeof pair?.currentRoundTripTime === 'number' ? pair.currentRoundTripTime * 1000 : null,
    };
    this.#events.changed();
  }
}

function formatAddress(candidate) {
  const address = candidate?.address ?? candidate?.ip;
  if (!address) return null;
  return address.includes(':') ? `[${address}]:${candidate.port}` : `${address}:${candidate.port}`;
}
