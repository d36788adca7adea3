//! The public API: a [`Peer`] joins a room and keeps one peer connection per other peer.
//!
//! One actor task owns all negotiation state (perfect negotiation, pending candidates); webrtc-rs handler
//! callbacks and signaling messages only post events to it. Sending does not go through the actor: the open
//! channels are in a shared map, so a `send` that waits for buffer space never stalls negotiation.

use crate::error::Error;
use crate::framing::{self, Frame, Reassembler};
use crate::rtc::{self, DataChannel, DataChannelEvent, Pc, PcSettings, RTCDataChannelInit, RTCSdpType, RTCSessionDescription};
use crate::signaling::{self, SignalingEvent, SignalingOptions, SignalingSender, Transport};
use bytes::{Bytes, BytesMut};
use protocol::{ClientMessage, LeaveReason, PeerId, ServerMessage, SignalData};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;
use webrtc::peer_connection::{PeerConnectionEventHandler, RTCPeerConnectionIceEvent, RTCPeerConnectionState};

/// Events delivered to the application, in order.
const EVENT_QUEUE: usize = 1024;
/// How long a connection may stay `disconnected` before we restart ICE.
pub const DISCONNECTED_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How a data channel delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelOptions {
    /// The channel's label; channels are addressed by it.
    pub label: String,
    /// Deliver in order (default true).
    pub ordered: bool,
    /// Give up on a message after this many retransmissions (partial reliability).
    pub max_retransmits: Option<u16>,
    /// Give up on a message after this many milliseconds (partial reliability).
    pub max_packet_lifetime_ms: Option<u16>,
}

impl ChannelOptions {
    /// A reliable, ordered channel.
    pub fn reliable(label: impl Into<String>) -> Self {
        ChannelOptions { label: label.into(), ordered: true, max_retransmits: None, max_packet_lifetime_ms: None }
    }

    /// An unordered channel that never retransmits: latest-value traffic.
    pub fn unreliable(label: impl Into<String>) -> Self {
        ChannelOptions { label: label.into(), ordered: false, max_retransmits: Some(0), max_packet_lifetime_ms: None }
    }
}

/// What a [`Peer`] is told to do.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The signaling server: `http://`, `https://`, `ws://` or `wss://` and `host:port` (TLS settings and the join
    /// token are in [`PeerConfig::signaling`]).
    pub server: String,
    /// The room to join.
    pub room: String,
    /// Channels opened to every other peer (by the peer that joined later, as the web demo does).
    pub channels: Vec<ChannelOptions>,
    /// Where to gather host candidates: `127.0.0.1` for loopback only, `0.0.0.0` for every interface.
    pub bind: IpAddr,
    /// UDP socket buffer size (1 MiB by default: see `docs/peer.md`).
    pub udp_buffer: usize,
    /// Largest message accepted from a peer, after reassembly.
    pub max_message_bytes: usize,
    /// Use only TURN relays (`iceTransportPolicy: "relay"`): the other side never learns our addresses.
    /// Needs a TURN server; without a relay candidate each connection reports [`Error::RelayUnavailable`].
    pub relay_only: bool,
    /// ICE servers to use instead of the ones the server hands out (which are refreshed before their
    /// credentials expire; these are used as they are).
    pub ice_servers: Option<Vec<protocol::IceServer>>,
    /// Transports to try (WebSocket, SSE, long polling by default), reconnect backoff, timeouts, TLS trust and
    /// the join token.
    pub signaling: SignalingOptions,
}

impl PeerConfig {
    /// Joins `room` on `server` with one reliable channel named `chat`, on every interface.
    pub fn new(server: impl Into<String>, room: impl Into<String>) -> Self {
        PeerConfig {
            server: server.into(),
            room: room.into(),
            channels: vec![ChannelOptions::reliable("chat")],
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            udp_buffer: rtc::DEFAULT_UDP_BUFFER,
            max_message_bytes: framing::DEFAULT_MAX_MESSAGE,
            relay_only: false,
            ice_servers: None,
            signaling: SignalingOptions::default(),
        }
    }
}

/// A message's contents: data channels carry text and binary messages distinctly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A UTF-8 text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

/// What happens in the room and on the channels.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Another peer entered the room (or was there when we joined).
    PeerJoined(PeerId),
    /// Another peer left; its connection and channels are gone.
    PeerLeft {
        /// The peer.
        peer: PeerId,
        /// Why, as the server saw it.
        reason: LeaveReason,
    },
    /// The peer connection to `peer` changed state (`new`, `connecting`, `connected`, `disconnected`, `failed`, `closed`).
    ConnectionState {
        /// The peer.
        peer: PeerId,
        /// The new state.
        state: String,
    },
    /// A channel can carry messages.
    ChannelOpen {
        /// The peer.
        peer: PeerId,
        /// The channel label.
        label: String,
    },
    /// A channel closed.
    ChannelClosed {
        /// The peer.
        peer: PeerId,
        /// The channel label.
        label: String,
    },
    /// A message arrived.
    Message {
        /// The sender.
        peer: PeerId,
        /// The channel it came on.
        label: String,
        /// Its contents.
        payload: Payload,
    },
    /// Something failed without ending the peer (a negotiation step, a refused signal).
    Error(Error),
    /// The connection to the signaling server was lost; it is being resumed. Direct channels stay up.
    SignalingDisconnected {
        /// The close code, if the server sent one.
        code: Option<u16>,
    },
    /// The signaling connection is back. `resumed`: the same session went on and nothing was lost.
    /// Otherwise a [`Event::NewSession`] came just before.
    SignalingReconnected {
        /// The transport now in use.
        transport: Transport,
        /// Whether the old session was resumed.
        resumed: bool,
    },
    /// The old session could not be resumed: we have a new peer id, every old connection was closed (each
    /// announced with [`Event::PeerLeft`]) and we negotiate afresh with the peers now in the room.
    NewSession {
        /// Our new id.
        id: PeerId,
    },
    /// The signaling session ended for good; direct channels stay up but no new peer can be reached.
    SignalingClosed {
        /// The close code, if any.
        code: Option<u16>,
    },
}

/// An open channel, as senders see it.
struct OpenChannel {
    dc: Arc<dyn DataChannel>,
    /// Ordered and reliable: messages may span several frames.
    chunkable: bool,
    /// Held for a whole message, so two senders never interleave their chunks.
    send_lock: Arc<tokio::sync::Mutex<()>>,
}

type Channels = Arc<Mutex<HashMap<(PeerId, String), Arc<OpenChannel>>>>;

/// A member of a room, with direct data channels to every other member.
pub struct Peer {
    id: Arc<Mutex<PeerId>>,
    signaling: SignalingSender,
    channels: Channels,
    cmd: mpsc::Sender<Command>,
    actor: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
enum Command {
    Close(tokio::sync::oneshot::Sender<()>),
    RestartIce(PeerId, tokio::sync::oneshot::Sender<Result<(), Error>>),
    Path(PeerId, tokio::sync::oneshot::Sender<Option<(String, String)>>),
}

impl Peer {
    /// Joins the room and starts negotiating with everyone in it.
    pub async fn connect(cfg: PeerConfig) -> Result<(Peer, mpsc::Receiver<Event>), Error> {
        let tls = crate::tls::client_config(&cfg.signaling.tls)?;
        let (welcome, sender, sig_rx) =
            signaling::connect_with_tls(&cfg.server, &cfg.room, cfg.signaling.clone(), tls.clone()).await?;
        let id = Arc::new(Mutex::new(welcome.peer_id.clone()));
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let (cmd_tx, cmd_rx) = mpsc::channel(8);
        let (pc_tx, pc_rx) = mpsc::unbounded_channel();
        let channels: Channels = Arc::default();
        let settings = PcSettings {
            bind: cfg.bind,
            udp_buffer: cfg.udp_buffer,
            ice_servers: cfg.ice_servers.clone().unwrap_or_else(|| welcome.ice_servers.clone()),
            relay_only: cfg.relay_only,
        };
        // Server-provided TURN credentials expire: fetch fresh ones before they do.
        let (ice_tx, ice_rx) = mpsc::channel(1);
        let ice_identity: IceIdentity = Arc::new(Mutex::new((welcome.peer_id.clone(), welcome.session.token.clone())));
        let refresher = cfg.ice_servers.is_none().then(|| {
            let (server, identity, current) = (cfg.server.clone(), ice_identity.clone(), settings.ice_servers.clone());
            tokio::spawn(refresh_ice_servers(server, tls, identity, current, ice_tx))
        });
        let actor = Actor {
            me: welcome.peer_id.clone(),
            shared_id: id.clone(),
            ice_identity,
            cfg,
            settings,
            sender: sender.clone(),
            events: events_tx,
            pc_tx,
            remotes: HashMap::new(),
            channels: channels.clone(),
        };
        let existing = welcome.peers.clone();
        let handle = tokio::spawn(async move {
            actor.run(existing, sig_rx, pc_rx, cmd_rx, ice_rx).await;
            if let Some(r) = refresher {
                r.abort();
            }
        });
        Ok((Peer { id, signaling: sender, channels, cmd: cmd_tx, actor: handle }, events_rx))
    }

    /// Our server-assigned id. It changes only if the signaling session had to be replaced
    /// ([`Event::NewSession`]).
    pub fn id(&self) -> PeerId {
        lock(&self.id).clone()
    }

    /// The signaling transport in use now.
    pub fn transport(&self) -> Transport {
        self.signaling.transport()
    }

    /// Sends `payload` to `peer` on channel `label`. Messages of any size go on ordered reliable channels
    /// (they are chunked); on other channels a message must fit in one frame ([`framing::MAX_FRAME`]).
    /// Waits while the channel's send buffer is full, so memory stays bounded however much is sent.
    ///
    /// Cancel-safe: a chunked message is always sent whole, even if this future is dropped.
    /// `send` and [`buffered_amount`](Self::buffered_amount) share webrtc-rs's connection lock: do not
    /// `select!` one of them against the other on the same connection (a polled-but-parked waiter can hold the
    /// lock hand-off and stall both); run them in separate tasks or one after the other.
    pub async fn send(&self, peer: &str, label: &str, payload: Payload) -> Result<(), Error> {
        let ch = self.channel(peer, label)?;
        let (len, is_text) = match &payload {
            Payload::Text(t) => (t.len(), true),
            Payload::Binary(b) => (b.len(), false),
        };
        if !ch.chunkable && framing::frame_count(len, is_text) > 1 {
            let limit = if is_text { framing::MAX_FRAME } else { framing::MAX_FRAME - 1 };
            return Err(Error::TooLarge { label: label.to_owned(), size: len, limit });
        }
        let not_open = || Error::ChannelNotOpen { peer: peer.to_owned(), label: label.to_owned() };
        let frames = framing::encode(&payload);
        if let [frame] = &frames[..] {
            let _one_message_at_a_time = ch.send_lock.lock().await;
            return send_frame(&ch.dc, frame.clone()).await.map_err(|_| not_open());
        }
        // A chunked message is sent by its own task, so a caller that stops waiting (a timeout, a dropped
        // future) cannot leave half a message on the channel for the receiver to glue to the next one.
        // The lock is taken here, before the spawn and with no await in between: taken inside the task, a
        // caller cancelled before the task first ran would let its next `send` overtake this message.
        let whole_message = ch.send_lock.clone().lock_owned().await;
        let task = tokio::spawn(async move {
            let _whole_message = whole_message;
            for frame in frames {
                send_frame(&ch.dc, frame).await?;
            }
            Ok::<(), webrtc::error::Error>(())
        });
        match task.await {
            Ok(res) => res.map_err(|_| not_open()),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Sends `payload` on channel `label` to every peer that has it open; returns how many were sent to.
    pub async fn broadcast(&self, label: &str, payload: Payload) -> Result<usize, Error> {
        let mut sent = 0;
        for p in self.open_channels(label) {
            if self.send(&p, label, payload.clone()).await.is_ok() {
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// Bytes handed to channel `label` to `peer` that SCTP has not released yet (sent but not acknowledged,
    /// or not yet sent). `send` waits while this is above [`SEND_BUFFER_LIMIT`](crate::SEND_BUFFER_LIMIT).
    pub async fn buffered_amount(&self, peer: &str, label: &str) -> Result<usize, Error> {
        Ok(self.channel(peer, label)?.dc.outstanding_bytes().await?)
    }

    /// Peers with an open channel `label`.
    pub fn open_channels(&self, label: &str) -> Vec<PeerId> {
        lock(&self.channels).keys().filter(|(_, l)| l == label).map(|(p, _)| p.clone()).collect()
    }

    /// Restarts ICE with `peer` (new credentials, fresh candidates) and renegotiates; the data channels stay.
    /// Done automatically when the connection fails or stays disconnected for [`DISCONNECTED_GRACE`].
    pub async fn restart_ice(&self, peer: &str) -> Result<(), Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.cmd.send(Command::RestartIce(peer.to_owned(), tx)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// The candidate types (`host`, `srflx`, `prflx`, `relay`) of the pair the connection to `peer` uses,
    /// local then remote; `None` before one is selected.
    pub async fn selected_path(&self, peer: &str) -> Result<Option<(String, String)>, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.cmd.send(Command::Path(peer.to_owned(), tx)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Leaves the room and closes every connection; returns when everything is released.
    pub async fn close(self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.cmd.send(Command::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = self.actor.await;
    }

    fn channel(&self, peer: &str, label: &str) -> Result<Arc<OpenChannel>, Error> {
        lock(&self.channels)
            .get(&(peer.to_owned(), label.to_owned()))
            .cloned()
            .ok_or_else(|| Error::ChannelNotOpen { peer: peer.to_owned(), label: label.to_owned() })
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("id", &self.id).finish_non_exhaustive()
    }
}

async fn send_frame(dc: &Arc<dyn DataChannel>, frame: Frame) -> Result<(), webrtc::error::Error> {
    match frame {
        Frame::Text(t) => dc.send_text(&t).await,
        Frame::Binary(b) => dc.send(BytesMut::from(&b[..])).await,
    }
}

/// The `a=ice-ufrag` of an SDP, for logs (an ICE restart changes it).
fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines().find_map(|l| l.strip_prefix("a=ice-ufrag:"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks (map inserts/removes only), so poison carries no meaning.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What webrtc-rs callbacks tell the actor.
enum PcEvent {
    NegotiationNeeded,
    Candidate(protocol::IceCandidateInit),
    GatheringComplete,
    State(RTCPeerConnectionState),
    DataChannel(Arc<dyn DataChannel>),
    /// Posted [`DISCONNECTED_GRACE`] after entering `disconnected` at the given instant.
    DisconnectedFor(Instant),
}

/// Forwards webrtc-rs callbacks (which run on its driver task and must not block) to the actor.
struct Handler {
    peer: PeerId,
    tx: mpsc::UnboundedSender<(PeerId, PcEvent)>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_negotiation_needed(&self) {
        let _ = self.tx.send((self.peer.clone(), PcEvent::NegotiationNeeded));
    }
    async fn on_ice_candidate(&self, ev: RTCPeerConnectionIceEvent) {
        match ev.candidate.to_json() {
            Ok(init) => {
                let _ = self.tx.send((self.peer.clone(), PcEvent::Candidate(rtc::candidate_from_rtc(init))));
            }
            Err(e) => tracing::warn!(error = %e, "unserialisable local candidate"),
        }
    }
    async fn on_ice_gathering_state_change(&self, state: webrtc::peer_connection::RTCIceGatheringState) {
        if state == webrtc::peer_connection::RTCIceGatheringState::Complete {
            let _ = self.tx.send((self.peer.clone(), PcEvent::GatheringComplete));
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.tx.send((self.peer.clone(), PcEvent::State(state)));
    }
    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let _ = self.tx.send((self.peer.clone(), PcEvent::DataChannel(dc)));
    }
}

/// Per remote peer: its connection and the perfect-negotiation state.
struct Remote {
    pc: Pc,
    /// The polite peer yields on offer collisions.
    polite: bool,
    /// Remote candidates that arrived before the remote description.
    pending: Vec<protocol::IceCandidateInit>,
    /// Set while we ignore a colliding offer (impolite side): its candidates fail harmlessly.
    ignore_offer: bool,
    /// When the connection last went `disconnected` (None while it is not).
    disconnected_since: Option<Instant>,
    /// Local candidates gathered since the last (re)start of gathering.
    local_candidates: usize,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The session `GET /v1/ice` mints for: its peer id and the session token that authorises the request. A new
/// session (a resume that failed) replaces both.
type IceIdentity = Arc<Mutex<(PeerId, String)>>;

struct Actor {
    me: PeerId,
    shared_id: Arc<Mutex<PeerId>>,
    ice_identity: IceIdentity,
    cfg: PeerConfig,
    settings: PcSettings,
    sender: SignalingSender,
    events: mpsc::Sender<Event>,
    pc_tx: mpsc::UnboundedSender<(PeerId, PcEvent)>,
    remotes: HashMap<PeerId, Remote>,
    channels: Channels,
}

impl Actor {
    async fn run(
        mut self,
        existing: Vec<PeerId>,
        mut sig_rx: mpsc::Receiver<SignalingEvent>,
        mut pc_rx: mpsc::UnboundedReceiver<(PeerId, PcEvent)>,
        mut cmd_rx: mpsc::Receiver<Command>,
        mut ice_rx: mpsc::Receiver<Vec<protocol::IceServer>>,
    ) {
        // We joined later than everyone listed: we create the channels, which triggers our offers.
        for peer in existing {
            self.emit(Event::PeerJoined(peer.clone())).await;
            if let Err(e) = self.add_remote(&peer, true).await {
                self.emit(Event::Error(e)).await;
            }
        }
        let mut signaling_open = true;
        loop {
            tokio::select! {
                ev = sig_rx.recv(), if signaling_open => match ev {
                    Some(SignalingEvent::Message(msg)) => self.on_server(msg).await,
                    Some(SignalingEvent::Disconnected { code }) => {
                        self.emit(Event::SignalingDisconnected { code }).await;
                    }
                    Some(SignalingEvent::Reconnected { transport, resumed }) => {
                        self.emit(Event::SignalingReconnected { transport, resumed }).await;
                    }
                    Some(SignalingEvent::NewSession(welcome)) => self.new_session(welcome).await,
                    Some(SignalingEvent::Closed { code, .. }) => {
                        signaling_open = false;
                        self.emit(Event::SignalingClosed { code }).await;
                    }
                    None => {
                        signaling_open = false;
                        let code = None;
                        self.emit(Event::SignalingClosed { code }).await;
                    }
                },
                Some((peer, ev)) = pc_rx.recv() => {
                    if let Err(e) = self.on_pc(&peer, ev).await {
                        self.emit(Event::Error(e)).await;
                    }
                }
                Some(servers) = ice_rx.recv() => self.update_ice_servers(servers).await,
                cmd = cmd_rx.recv() => {
                    let done = match cmd {
                        Some(Command::RestartIce(peer, reply)) => {
                            let _ = reply.send(self.restart_ice(&peer).await);
                            continue;
                        }
                        Some(Command::Path(peer, reply)) => {
                            let pc = self.remotes.get(&peer).map(|r| r.pc.clone());
                            let path = match pc {
                                Some(pc) => rtc::selected_path(&pc).await,
                                None => None,
                            };
                            let _ = reply.send(path);
                            continue;
                        }
                        Some(Command::Close(done)) => Some(done),
                        None => None,
                    };
                    let _ = self.sender.send(ClientMessage::Leave).await;
                    let peers: Vec<PeerId> = self.remotes.keys().cloned().collect();
                    for p in peers {
                        self.remove_remote(&p).await;
                    }
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
            }
        }
    }

    async fn emit(&self, ev: Event) {
        // The application dropped its receiver: nothing to tell, keep serving sends.
        let _ = self.events.send(ev).await;
    }

    async fn add_remote(&mut self, peer: &PeerId, create_channels: bool) -> Result<(), Error> {
        let has_turn = crate::ice::usable_by_webrtc_rs(&self.settings.ice_servers)
            .iter()
            .any(|s| s.urls.iter().any(|u| u.starts_with("turn:")));
        if self.settings.relay_only && !has_turn {
            return Err(Error::RelayUnavailable { peer: peer.clone() });
        }
        let handler = Arc::new(Handler { peer: peer.clone(), tx: self.pc_tx.clone() });
        let pc = rtc::build_pc(&self.settings, handler).await?;
        let polite = self.me.as_str() < peer.as_str();
        self.remotes.insert(peer.clone(), Remote {
                pc: pc.clone(),
                polite,
                pending: Vec::new(),
                ignore_offer: false,
                disconnected_since: None,
                local_candidates: 0,
                tasks: Vec::new(),
            },);
        if create_channels {
            for opts in self.cfg.channels.clone() {
                let init = RTCDataChannelInit {
                    ordered: opts.ordered,
                    max_retransmits: opts.max_retransmits,
                    max_packet_life_time: opts.max_packet_lifetime_ms,
                    ..Default::default()
                };
                let dc = pc.create_data_channel(&opts.label, Some(init)).await?;
                self.watch_channel(peer, opts.label.clone(), dc);
            }
        }
        Ok(())
    }

    async fn remove_remote(&mut self, peer: &PeerId) {
        if let Some(remote) = self.remotes.remove(peer) {
            lock(&self.channels).retain(|(p, _), _| p != peer);
            let _ = remote.pc.close().await;
            for t in remote.tasks {
                t.abort();
            }
        }
    }

    /// One task per channel drains its events (webrtc-rs allows exactly one consumer of `poll()`).
    fn watch_channel(&mut self, peer: &PeerId, label: String, dc: Arc<dyn DataChannel>) {
        let events = self.events.clone();
        let channels = self.channels.clone();
        let peer_id = peer.clone();
        let max_message = self.cfg.max_message_bytes;
        let task = tokio::spawn(async move {
            let mut reassembler = Reassembler::new(max_message);
            while let Some(ev) = dc.poll().await {
                match ev {
                    DataChannelEvent::OnOpen => {
                        let chunkable = dc.ordered().await.unwrap_or(false)
                            && dc.max_retransmits().await.ok().flatten().is_none()
                            && dc.max_packet_life_time().await.ok().flatten().is_none();
                        let open = OpenChannel { dc: dc.clone(), chunkable, send_lock: Arc::default() };
                        lock(&channels).insert((peer_id.clone(), label.clone()), Arc::new(open));
                        let _ = events.send(Event::ChannelOpen { peer: peer_id.clone(), label: label.clone() }).await;
                    }
                    DataChannelEvent::OnMessage(m) => {
                        let decoded = if m.is_string {
                            match String::from_utf8(m.data.to_vec()) {
                                Ok(t) => reassembler.text(t).map(Some),
                                Err(_) => Err(framing::FrameError::BadUtf8),
                            }
                        } else {
                            reassembler.binary(&m.data)
                        };
                        let ev = match decoded {
                            Ok(Some(payload)) => Event::Message { peer: peer_id.clone(), label: label.clone(), payload },
                            Ok(None) => continue,
                            Err(e) => Event::Error(Error::BadFrame { peer: peer_id.clone(), label: label.clone(), detail: e.to_string() }),
                        };
                        // Awaiting here is the backpressure: a slow application slows the channel, not memory.
                        let _ = events.send(ev).await;
                    }
                    DataChannelEvent::OnClose => break,
                    _ => {}
                }
            }
            lock(&channels).remove(&(peer_id.clone(), label.clone()));
            let _ = events.send(Event::ChannelClosed { peer: peer_id, label }).await;
        });
        if let Some(r) = self.remotes.get_mut(peer) {
            r.tasks.push(task);
        }
    }

    /// The server could not resume our session: the old peer ids mean nothing any more (the others see us
    /// leave and join again too), so every connection is renegotiated under the new ids.
    async fn new_session(&mut self, welcome: protocol::Welcome) {
        let old: Vec<PeerId> = self.remotes.keys().cloned().collect();
        for peer in old {
            self.remove_remote(&peer).await;
            self.emit(Event::PeerLeft { peer, reason: LeaveReason::Closed }).await;
        }
        self.me = welcome.peer_id.clone();
        *lock(&self.shared_id) = welcome.peer_id.clone();
        *lock(&self.ice_identity) = (welcome.peer_id.clone(), welcome.session.token.clone());
        self.emit(Event::NewSession { id: welcome.peer_id }).await;
        for peer in welcome.peers {
            self.emit(Event::PeerJoined(peer.clone())).await;
            if let Err(e) = self.add_remote(&peer, true).await {
                self.emit(Event::Error(e)).await;
            }
        }
    }

    async fn on_server(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::PeerJoined { peer_id } => {
                self.emit(Event::PeerJoined(peer_id.clone())).await;
                // The newcomer creates the channels and offers; we only prepare to answer.
                if let Err(e) = self.add_remote(&peer_id, false).await {
                    self.emit(Event::Error(e)).await;
                }
            }
            ServerMessage::PeerLeft { peer_id, reason } => {
                self.remove_remote(&peer_id).await;
                self.emit(Event::PeerLeft { peer: peer_id, reason }).await;
            }
            ServerMessage::Signal { from, data } => {
                if let Err(e) = self.on_signal(&from, data).await {
                    self.emit(Event::Error(e)).await;
                }
            }
            ServerMessage::Error { code, message } => {
                self.emit(Event::Error(Error::Refused { code, message })).await;
            }
            ServerMessage::Welcome(_)
            | ServerMessage::Relay { .. }
            | ServerMessage::Pong { .. }
            | ServerMessage::Resumed { .. } => {}
        }
    }

    /// Perfect negotiation, receiving side (https://w3c.github.io/webrtc-pc/#perfect-negotiation-example).
    async fn on_signal(&mut self, from: &PeerId, data: SignalData) -> Result<(), Error> {
        let Some(remote) = self.remotes.get_mut(from) else {
            return Err(Error::UnknownPeer(from.clone()));
        };
        let pc = remote.pc.clone();
        match data {
            SignalData::Offer { sdp } => {
                // Not "stable" exactly when a local or remote description is pending.
                let collision =
                    pc.pending_local_description().await.is_some() || pc.pending_remote_description().await.is_some();
                remote.ignore_offer = !remote.polite && collision;
                if remote.ignore_offer {
                    tracing::debug!(peer = %from, "ignoring colliding offer (impolite)");
                    return Ok(());
                }
                if collision {
                    pc.set_local_description(RTCSessionDescription::rollback(None)?).await?;
                }
                pc.set_remote_description(RTCSessionDescription::offer(sdp)?).await?;
                self.flush_candidates(from).await;
                let answer = pc.create_answer(None).await?;
                pc.set_local_description(answer).await?;
                if let Some(local) = pc.local_description().await {
                    self.signal(from, SignalData::Answer { sdp: local.sdp }).await?;
                }
            }
            SignalData::Answer { sdp } => {
                remote.ignore_offer = false;
                pc.set_remote_description(RTCSessionDescription::answer(sdp)?).await?;
                self.flush_candidates(from).await;
            }
            SignalData::Candidate { candidate } => {
                if pc.remote_description().await.is_none() {
                    remote.pending.push(candidate);
                } else if let Err(e) = pc.add_ice_candidate(rtc::candidate_to_rtc(candidate)).await
                    && !remote.ignore_offer
                {
                    return Err(e.into());
                }
            }
            SignalData::EndOfCandidates => {}
        }
        Ok(())
    }

    async fn flush_candidates(&mut self, peer: &PeerId) {
        let Some(remote) = self.remotes.get_mut(peer) else { return };
        for c in std::mem::take(&mut remote.pending) {
            if let Err(e) = remote.pc.add_ice_candidate(rtc::candidate_to_rtc(c)).await {
                tracing::debug!(peer = %peer, error = %e, "queued candidate rejected");
            }
        }
    }

    async fn on_pc(&mut self, peer: &PeerId, ev: PcEvent) -> Result<(), Error> {
        let Some(remote) = self.remotes.get(peer) else { return Ok(()) }; // already torn down
        let pc = remote.pc.clone();
        match ev {
            PcEvent::NegotiationNeeded => self.offer(peer, &pc).await?,
            PcEvent::Candidate(c) => {
                if let Some(r) = self.remotes.get_mut(peer) {
                    r.local_candidates += 1;
                }
                self.signal(peer, SignalData::Candidate { candidate: c }).await?
            }
            PcEvent::GatheringComplete => {
                self.signal(peer, SignalData::EndOfCandidates).await?;
                // Relay-only with no relay candidate can never connect: say why now, not after ICE times out.
                if self.settings.relay_only && self.remotes.get(peer).is_some_and(|r| r.local_candidates == 0) {
                    return Err(Error::RelayUnavailable { peer: peer.clone() });
                }
            }
            PcEvent::State(state) => {
                let since = Instant::now();
                if let Some(r) = self.remotes.get_mut(peer) {
                    r.disconnected_since = (state == RTCPeerConnectionState::Disconnected).then_some(since);
                }
                match state {
                    // A path failed: gather anew and renegotiate.
                    RTCPeerConnectionState::Failed => self.restart_ice(peer).await?,
                    // Disconnected often heals by itself (a lost burst of checks); restart only if it lasts.
                    RTCPeerConnectionState::Disconnected => {
                        let tx = self.pc_tx.clone();
                        let peer = peer.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(DISCONNECTED_GRACE).await;
                            let _ = tx.send((peer, PcEvent::DisconnectedFor(since)));
                        });
                    }
                    _ => {}
                }
                self.emit(Event::ConnectionState { peer: peer.clone(), state: state.to_string() }).await;
            }
            PcEvent::DisconnectedFor(since) => {
                if self.remotes.get(peer).is_some_and(|r| r.disconnected_since == Some(since)) {
                    tracing::info!(peer = %peer, "disconnected for too long: restarting ICE");
                    self.restart_ice(peer).await?;
                }
            }
            PcEvent::DataChannel(dc) => {
                let label = dc.label().await.unwrap_or_default();
                self.watch_channel(peer, label, dc);
            }
        }
        Ok(())
    }

    /// Creates and sends an offer, unless a negotiation is already under way (its answer will cover this).
    async fn offer(&self, peer: &PeerId, pc: &Pc) -> Result<(), Error> {
        if pc.pending_local_description().await.is_some() || pc.pending_remote_description().await.is_some() {
            tracing::debug!(peer = %peer, "negotiation under way: no new offer");
            return Ok(());
        }
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer).await?;
        if let Some(local) = pc.local_description().await
            && local.sdp_type == RTCSdpType::Offer
        {
            tracing::debug!(peer = %peer, ufrag = ?ice_ufrag(&local.sdp), "sending offer");
            self.signal(peer, SignalData::Offer { sdp: local.sdp }).await?;
        }
        Ok(())
    }

    async fn restart_ice(&mut self, peer: &PeerId) -> Result<(), Error> {
        let remote = self.remotes.get_mut(peer).ok_or_else(|| Error::UnknownPeer(peer.clone()))?;
        remote.local_candidates = 0;
        let pc = remote.pc.clone();
        // Sets the ICE-restart flag for the next offer; webrtc-rs does not fire negotiation-needed for it.
        pc.restart_ice().await?;
        self.offer(peer, &pc).await
    }

    /// Fresh credentials: new connections use them, existing ones at their next gathering (ICE restart).
    async fn update_ice_servers(&mut self, servers: Vec<protocol::IceServer>) {
        tracing::debug!(count = servers.len(), "ICE servers refreshed");
        self.settings.ice_servers = servers;
        let config = rtc::configuration(&self.settings);
        for (peer, remote) in &self.remotes {
            if let Err(e) = remote.pc.set_configuration(config.clone()).await {
                tracing::warn!(peer = %peer, error = %e, "cannot apply refreshed ICE servers");
            }
        }
    }

    async fn signal(&self, to: &PeerId, data: SignalData) -> Result<(), Error> {
        self.sender.send(ClientMessage::Signal { to: to.clone(), data }).await
    }
}

/// Fetches fresh ICE servers from the signaling server before the current TURN credentials expire, for as
/// long as the actor takes them. A failed fetch is retried (sooner as the expiry nears, never busy).
async fn refresh_ice_servers(
    server: String,
    tls: std::sync::Arc<rustls::ClientConfig>,
    identity: IceIdentity,
    mut current: Vec<protocol::IceServer>,
    tx: mpsc::Sender<Vec<protocol::IceServer>>,
) {
    while let Some(delay) = crate::ice::refresh_after(&current, std::time::SystemTime::now()) {
        tokio::time::sleep(delay).await;
        let (peer_id, session_token) = lock(&identity).clone();
        match crate::ice::fetch(&server, &peer_id, &session_token, &tls).await {
            Ok(fresh) => {
                current = fresh.clone();
                if tx.send(fresh).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "refreshing TURN credentials failed; retrying"),
        }
    }
}
