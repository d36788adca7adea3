//! The session core: rooms, membership, presence and routing. Transports call [`Hub::join`],
//! [`Hub::handle`] and [`Hub::leave`]; what a message means never depends on what carried it.

use crate::broker::AnyBroker;
use crate::session::Session;
use dashmap::DashMap;
use protocol::{
    ClientEnvelope, ClientMessage, CloseCode, ErrorCode, Heartbeat, LeaveReason, Limits, PROTOCOL_VERSION,
    ServerMessage, SessionInfo, Welcome,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What the core needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Announced in `welcome` and enforced by transports.
    pub limits: Limits,
    /// Announced in `welcome`; enforced by transports.
    pub heartbeat: Heartbeat,
    /// Messages kept per session for resume; a client that falls further behind is a slow consumer.
    pub outbox: usize,
    /// How long a session whose connection dropped waits to be resumed.
    pub resume_window: Duration,
    /// ICE servers handed to every session, TURN credentials minted per session.
    pub ice_servers: crate::ice::IceServers,
    /// Rate, node, size and outbox-byte limits (`crate::limits`).
    pub node: crate::limits::LimitFlags,
    /// Whether SSE streams may be gzipped for clients that accept it (`--sse-gzip`).
    pub sse_gzip: bool,
}

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The room name is invalid.
    #[error("{0}")]
    BadRoom(String),
    /// The room has `max_peers` peers.
    #[error("room is full ({0} peers)")]
    RoomFull(usize),
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// No valid join token (see [`crate::auth`]).
    #[error("{0}")]
    Unauthorized(crate::auth::AuthError),
    /// This node holds `--max-sessions` sessions or `--max-rooms` rooms (the name of the limit).
    #[error("this node is full ({0}); retry later or on another node")]
    NodeFull(&'static str),
    /// Too many joins from the client's address (`--join-rate-per-ip-per-min`).
    #[error("too many joins from this address; retry later")]
    RateLimited,
    /// Cluster mode, and Redis is unreachable: rooms are shared there, so nobody can be admitted.
    #[error("the cluster is unreachable (Redis); retry later or on another node")]
    ClusterUnavailable,
}

impl JoinError {
    /// What a refused client receives, whatever the transport: the `error` (seq 1: no session exists, so it
    /// is the whole conversation) and the close code that follows it.
    pub fn refusal(&self, room: &str) -> (protocol::ServerEnvelope, CloseCode) {
        let (code, close) = self.codes();
        tracing::debug!(room = %room.escape_debug(), error = %self, "join refused");
        (protocol::ServerEnvelope { seq: 1, msg: ServerMessage::Error { code, message: self.to_string() } }, close)
    }

    /// The wire error code and the close code that follows it.
    pub fn codes(&self) -> (ErrorCode, CloseCode) {
        match self {
            JoinError::BadRoom(_) => (ErrorCode::BadRoom, CloseCode::BadRoom),
            JoinError::RoomFull(_) => (ErrorCode::RoomFull, CloseCode::RoomFull),
            JoinError::ShuttingDown => (ErrorCode::Internal, CloseCode::Shutdown),
            JoinError::Unauthorized(e) => (e.code(), CloseCode::Unauthorized),
            JoinError::NodeFull(_) => (ErrorCode::NodeFull, CloseCode::NodeFull),
            JoinError::RateLimited => (ErrorCode::RateLimited, CloseCode::RateLimited),
            JoinError::ClusterUnavailable => (ErrorCode::ClusterUnavailable, CloseCode::ClusterUnavailable),
        }
    }
}

/// What the transport should do after a client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep the session.
    Continue,
    /// The client left: close normally.
    Leave,
    /// The message was refused by a limit (the client got an `error` with this code); the session goes on
    /// unless the limit also closed it.
    Refused(ErrorCode),
}

/// The outcome of a resume request.
#[derive(Debug)]
pub enum Resumed {
    /// The session goes on; the client gets the messages after its `seq`, then `resumed`.
    Same(Arc<Session>),
    /// It could not be resumed: a new session (new peer id) whose `welcome` says `recovered: false`.
    Fresh(Arc<Session>),
}

/// All rooms of this server.
#[derive(Debug)]
pub struct Hub {
    cfg: HubConfig,
    broker: AnyBroker,
    // Every live session (attached or waiting to be resumed), by its secret.
    by_token: DashMap<String, Arc<Session>>,
    shutting_down: AtomicBool,
    gate: crate::auth::Gate,
    joins: crate::limits::JoinLimiter,
}

impl Hub {
    /// An empty hub.
    pub fn new(cfg: HubConfig) -> Self {
        let joins = crate::limits::JoinLimiter::new(cfg.node.join_rate_per_ip_per_min, crate::limits::JOIN_TABLE_CAP);
        Hub {
            cfg,
            broker: AnyBroker::default(),
            by_token: DashMap::new(),
            shutting_down: AtomicBool::new(false),
            gate: crate::auth::Gate::default(),
            joins,
        }
    }

    /// The same hub on another broker (cluster mode); the default is [`AnyBroker::Local`].
    pub fn with_broker(mut self, broker: AnyBroker) -> Self {
        self.broker = broker;
        self
    }

    /// The broker this hub runs on.
    pub fn broker(&self) -> &AnyBroker {
        &self.broker
    }

    /// Whether this node is clustered and cannot reach Redis (what a readiness probe reports).
    pub fn is_degraded(&self) -> bool {
        match &self.broker {
            AnyBroker::Local(_) => false,
            AnyBroker::Redis(b) => b.is_degraded(),
        }
    }

    /// The same hub with this admission policy (join tokens, origins); the default admits everyone.
    pub fn with_gate(mut self, gate: crate::auth::Gate) -> Self {
        self.gate = gate;
        self
    }

    /// The admission policy.
    pub fn gate(&self) -> &crate::auth::Gate {
        &self.gate
    }

    /// Join attempts per client address.
    pub fn joins(&self) -> &crate::limits::JoinLimiter {
        &self.joins
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// Adds a new session to `room`, queues its `welcome` (seq 1) and announces it to the others.
    pub async fn join(&self, room: &str) -> Result<Arc<Session>, JoinError> {
        self.join_as(room, None, self.cfg.limits.max_peers, "").await
    }

    /// [`Hub::join`] for a joiner its token admitted, with the token's room-size cap, over `transport` (its
    /// name, for the logs).
    pub async fn join_granted(
        &self,
        room: &str,
        grant: &crate::auth::Grant,
        transport: &'static str,
    ) -> Result<Arc<Session>, JoinError> {
        self.join_as(room, None, grant.cap(self.cfg.limits.max_peers), transport).await
    }

    /// Resumes the session holding `token` from the client's last `seq` (`after`), if it is still there, in
    /// `room`, and its gap can be filled; otherwise ends it and joins a new one that says `recovered: false`.
    pub async fn resume(&self, room: &str, token: &str, after: u64) -> Result<Resumed, JoinError> {
        self.resume_or_join(room, token, after, &Ok(crate::auth::Grant::default()), "").await
    }

    /// [`Hub::resume`], where the fresh session that replaces a failed resume is a join like any other: it
    /// needs `fresh` to admit it (a resume needs no join token, but must not become a way around one).
    /// `transport` names the transport resuming, for the logs.
    pub async fn resume_or_join(
        &self,
        room: &str,
        token: &str,
        after: u64,
        fresh: &crate::auth::Admit,
        transport: &'static str,
    ) -> Result<Resumed, JoinError> {
        protocol::validate_room(room).map_err(JoinError::BadRoom)?;
        let found = match self.session(token) {
            Some(s) => Some(s),
            None => self.carry(room, token, after).await?,
        };
        let found = found.filter(|s| s.room() == room && s.close_code().is_none());
        if let Some(session) = found {
            match session.can_resume_from(after) {
                Ok(()) => {
                    // Queued behind the missed messages, so the client knows when the gap is filled.
                    let received = session.received();
                    let pushed = match &self.broker {
                        AnyBroker::Local(_) => session.push_with(|seq| ServerMessage::Resumed { replayed: seq - 1 - after, received }),
                        AnyBroker::Redis(b) => {
                            let replayed = session.last_seq().saturating_sub(after);
                            b.push(&session, ServerMessage::Resumed { replayed, received });
                            Ok(replayed + after + 1)
                        }
                    };
                    if let Ok(seq) = pushed {
                        session.set_transport(transport);
                        tracing::info!(peer = %session.peer_id(), room, transport, after, missed = seq - 1 - after, "resumed");
                        return Ok(Resumed::Same(session));
                    }
                }
                Err(gap) => {
                    tracing::info!(peer = %session.peer_id(), room, %gap, "resume refused");
                    session.close(CloseCode::SlowConsumer);
                    self.leave(&session, LeaveReason::SlowConsumer);
                }
            }
        }
        let grant = fresh.as_ref().map_err(|e| JoinError::Unauthorized(e.clone()))?;
        self.join_as(room, Some(false), grant.cap(self.cfg.limits.max_peers), transport).await.map(Resumed::Fresh)
    }

    /// The live session holding `token`.
    pub fn session(&self, token: &str) -> Option<Arc<Session>> {
        // Tokens are fixed-length hex: anything else cannot match, and is not worth a lookup.
        if !valid_token(token) {
            return None;
        }
        self.by_token
            .get(token)
            .map(|s| s.clone())
            .filter(|s| s.token_matches(token))
            // Cluster mode: a copy another node took over is not this node's any more (it asks the cluster).
            .filter(|s| s.close_code() != Some(CloseCode::Superseded))
    }

    /// The peer id of the live session holding `token`, wherever it is served.
    pub async fn peer_of_token(&self, token: &str) -> Option<protocol::PeerId> {
        if let Some(s) = self.session(token) {
            return Some(s.peer_id().to_owned());
        }
        match &self.broker {
            AnyBroker::Local(_) => None,
            AnyBroker::Redis(b) if valid_token(token) => b.peer_of_token(token).await,
            AnyBroker::Redis(_) => None,
        }
    }

    /// The session holding `token` in `room`, carried over from the node that held it (cluster mode: a poll
    /// or a resume that reached another node); `None` on one node, or if the cluster has no such session.
    pub async fn carry(&self, room: &str, token: &str, after: u64) -> Result<Option<Arc<Session>>, JoinError> {
        let AnyBroker::Redis(b) = &self.broker else { return Ok(None) };
        if !valid_token(token) {
            return Ok(None);
        }
        let Some(carried) = b.carry(token, room, after, self.cfg.outbox).await? else { return Ok(None) };
        let session = carried.session;
        self.by_token.insert(session.token().to_owned(), session.clone());
        tracing::info!(peer = %session.peer_id(), room, last = carried.last, "session carried over from another node");
        Ok(Some(session))
    }

    async fn join_as(
        &self,
        room: &str,
        recovered: Option<bool>,
        max_peers: usize,
        transport: &'static str,
    ) -> Result<Arc<Session>, JoinError> {
        protocol::validate_room(room).map_err(JoinError::BadRoom)?;
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(JoinError::ShuttingDown);
        }
        // Checked before the room's entry lock is taken (counting takes every shard's lock), so joins racing
        // each other may overshoot a node limit by the number of joins in flight, never by more.
        if self.at_session_cap() {
            tracing::warn!(limit = self.cfg.node.max_sessions, "join refused: --max-sessions reached");
            return Err(JoinError::NodeFull("max-sessions"));
        }
        if !self.has_local_room(room) && self.room_count() >= self.cfg.node.max_rooms {
            tracing::warn!(limit = self.cfg.node.max_rooms, "join refused: --max-rooms reached");
            return Err(JoinError::NodeFull("max-rooms"));
        }
        let session = Arc::new(
            Session::new(new_id(), room.to_owned(), new_id(), self.cfg.outbox)
                .with_outbox_bytes(self.cfg.node.outbox_bytes),
        );
        session.set_transport(transport);
        let welcome = |peers| self.welcome(&session, peers, recovered);
        let peers = match &self.broker {
            AnyBroker::Local(b) => b.admit(&session, max_peers, welcome)?,
            AnyBroker::Redis(b) => b.admit(&session, max_peers, welcome).await?,
        };
        self.by_token.insert(session.token().to_owned(), session.clone());
        tracing::info!(peer = %session.peer_id(), room, transport, peers, "joined");
        Ok(session)
    }

    /// The `welcome` of `session`, with the peers already in its room.
    fn welcome(&self, session: &Session, peers: Vec<protocol::PeerId>, recovered: Option<bool>) -> ServerMessage {
        ServerMessage::Welcome(Welcome {
            protocol: PROTOCOL_VERSION,
            peer_id: session.peer_id().to_owned(),
            room: session.room().to_owned(),
            peers,
            ice_servers: self.cfg.ice_servers.for_peer(session.peer_id()),
            heartbeat: self.cfg.heartbeat,
            limits: self.cfg.limits,
            session: SessionInfo {
                token: session.token().to_owned(),
                url: format!("/v1/sessions/{}", session.peer_id()),
                resume_window_ms: self.cfg.resume_window.as_millis() as u64,
            },
            recovered,
        })
    }

    /// Acts on one client message unless its `cseq` shows the server already had it (a message sent again
    /// after a reconnect).
    pub fn handle_envelope(&self, from: &Session, env: ClientEnvelope) -> Flow {
        // Limits first: a refused message is not recorded as received, so `received` counts handled messages.
        match from.guard().check(&self.cfg.node, &env.msg, Instant::now()) {
            crate::limits::Verdict::Pass => {
                if !from.accept_cseq(env.cseq) {
                    tracing::debug!(peer = %from.peer_id(), cseq = env.cseq, "duplicate client message dropped");
                    return Flow::Continue;
                }
                self.handle(from, env.msg)
            }
            crate::limits::Verdict::Refuse(code, message) => {
                self.refuse(from, code, message);
                Flow::Refused(code)
            }
            crate::limits::Verdict::Close(code, message) => {
                tracing::warn!(peer = %from.peer_id(), room = %from.room(), "rate limit ignored: closing with 4004");
                self.refuse(from, code, message);
                from.close(CloseCode::RateLimited);
                Flow::Refused(code)
            }
        }
    }

    /// Acts on one client message.
    pub fn handle(&self, from: &Session, msg: ClientMessage) -> Flow {
        match msg {
            ClientMessage::Signal { to, data } => {
                self.send_to(from, &to, ServerMessage::Signal { from: from.peer_id().to_owned(), data });
            }
            ClientMessage::Relay { to: Some(to), data } => {
                self.send_to(from, &to, ServerMessage::Relay { from: from.peer_id().to_owned(), data });
            }
            ClientMessage::Relay { to: None, data } => {
                let msg = ServerMessage::Relay { from: from.peer_id().to_owned(), data };
                match &self.broker {
                    AnyBroker::Local(b) => b.broadcast(from, msg),
                    AnyBroker::Redis(b) => b.broadcast(from, msg),
                }
            }
            ClientMessage::Ping { id } => {
                let received = Some(from.received()).filter(|&r| r > 0);
                self.push_to(from, ServerMessage::Pong { id, received });
            }
            ClientMessage::Leave => {
                self.leave(from, LeaveReason::Left);
                return Flow::Leave;
            }
            // Only meaningful as a WebSocket's first message, which the transport reads itself; a client that
            // sends its token both ways, or to a server without auth, is not wrong.
            ClientMessage::Auth { .. } => {}
        }
        Flow::Continue
    }

    /// Tells the session about a message it sent that was refused.
    pub fn refuse(&self, to: &Session, code: ErrorCode, message: impl Into<String>) {
        self.push_to(to, ServerMessage::Error { code, message: message.into() });
    }

    /// Queues `msg` to `session` itself (through the cluster when clustered, which numbers its messages).
    fn push_to(&self, session: &Session, msg: ServerMessage) {
        match &self.broker {
            AnyBroker::Local(_) => {
                let _ = session.push(msg);
            }
            AnyBroker::Redis(b) => b.push(session, msg),
        }
    }

    /// Removes the session from its room and announces it. Idempotent.
    pub fn leave(&self, session: &Session, reason: LeaveReason) {
        self.by_token.remove_if(session.token(), |_, s| s.peer_id() == session.peer_id());
        let removed = match &self.broker {
            AnyBroker::Local(b) => b.remove(session, reason),
            AnyBroker::Redis(b) => b.remove(session, reason),
        };
        if removed {
            // The one end-of-session line: what an operator greps or ships to a log store. No token in it.
            tracing::info!(
                peer = %session.peer_id(),
                room = %session.room(),
                ?reason,
                transport = session.transport(),
                duration_ms = session.age().as_millis() as u64,
                close_code = session.close_code().map(|c| c.code()),
                "left"
            );
        }
    }

    /// Refuses new joins and tells every session to close with 4000 (reconnect elsewhere or later).
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        match &self.broker {
            AnyBroker::Local(b) => b.for_each_member(|m| m.close(CloseCode::Shutdown)),
            AnyBroker::Redis(_) => self.by_token.iter().for_each(|m| m.close(CloseCode::Shutdown)),
        }
    }

    /// Ends the sessions whose time is up: dropped connections not resumed within the window, clients silent
    /// for longer than the heartbeat allows (polling clients have no connection to notice closing), and
    /// sessions told to close while no connection served them. Run it often (the server does, every 100 ms).
    pub fn reap(&self, now: Instant) {
        let silence = Duration::from_millis(self.cfg.heartbeat.interval_ms + self.cfg.heartbeat.timeout_ms);
        let sessions: Vec<Arc<Session>> = self.by_token.iter().map(|s| s.value().clone()).collect();
        for s in sessions {
            let (last_seen, detached_at) = s.liveness();
            let reason = if let Some(code) = s.close_code() {
                leave_reason(code)
            } else if detached_at.is_some_and(|t| now.duration_since(t) >= self.cfg.resume_window) {
                LeaveReason::Closed
            } else if detached_at.is_none() && now.duration_since(last_seen) >= silence {
                tracing::info!(peer = %s.peer_id(), "heartbeat timeout");
                s.close(CloseCode::HeartbeatTimeout);
                LeaveReason::Timeout
            } else {
                continue;
            };
            self.leave(&s, reason);
        }
    }

    /// Why this node should not be sent new clients now, each as a stable code (empty: ready). What
    /// `GET /readyz` answers.
    pub fn not_ready(&self) -> Vec<&'static str> {
        let mut why = Vec::new();
        if self.shutting_down.load(Ordering::Acquire) {
            why.push("shutting-down");
        }
        if self.is_degraded() {
            why.push("cluster-unavailable");
        }
        if self.at_session_cap() {
            why.push("max-sessions");
        }
        why
    }

    /// This node holds `--max-sessions`: a join is refused, and `/readyz` says so.
    fn at_session_cap(&self) -> bool {
        self.by_token.len() >= self.cfg.node.max_sessions
    }

    /// Sessions currently in rooms.
    pub fn session_count(&self) -> usize {
        match &self.broker {
            AnyBroker::Local(b) => b.session_count(),
            AnyBroker::Redis(b) => b.session_count(),
        }
    }

    /// Rooms with at least one peer on this node.
    pub fn room_count(&self) -> usize {
        match &self.broker {
            AnyBroker::Local(b) => b.room_count(),
            AnyBroker::Redis(b) => b.room_count(),
        }
    }

    fn has_local_room(&self, room: &str) -> bool {
        match &self.broker {
            AnyBroker::Local(b) => b.has_room(room),
            AnyBroker::Redis(b) => b.has_room(room),
        }
    }

    fn send_to(&self, from: &Session, to: &str, msg: ServerMessage) {
        let delivered = match &self.broker {
            AnyBroker::Local(b) => b.send_to(from, to, msg),
            // Whether `to` is a member is known only in Redis: an unknown one gets the sender its error there.
            AnyBroker::Redis(b) => {
                b.send_to(from, to, msg);
                true
            }
        };
        if !delivered {
            self.refuse(from, ErrorCode::UnknownPeer, format!("no peer {to:?} in room {:?}", from.room()));
        }
    }
}

/// Session tokens are fixed-length hex: anything else cannot match, and is not worth a lookup.
fn valid_token(token: &str) -> bool {
    token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The `peer-left` reason for a session closed with `code`.
pub fn leave_reason(code: CloseCode) -> LeaveReason {
    match code {
        CloseCode::SlowConsumer => LeaveReason::SlowConsumer,
        CloseCode::HeartbeatTimeout => LeaveReason::Timeout,
        CloseCode::Shutdown => LeaveReason::Shutdown,
        CloseCode::Normal => LeaveReason::Left,
        _ => LeaveReason::Closed,
    }
}

/// 128 random bits, hex: unguessable, so knowing a peer id grants nothing outside the room, and a session
/// token cannot be guessed at all.
pub(crate) fn new_id() -> String {
    let mut bytes = [0u8; 16];
    // The OS RNG failing means the machine is unusable; there is no safe fallback for unguessable ids.
    getrandom::fill(&mut bytes).expect("OS random number generator");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{ServerEnvelope, SignalData};

    fn hub(max_peers: usize) -> Hub {
        Hub::new(HubConfig {
            limits: Limits { max_message_bytes: 65536, max_peers },
            heartbeat: Heartbeat { interval_ms: 1000, timeout_ms: 500 },
            outbox: 16,
            resume_window: Duration::from_millis(300),
            ice_servers: Default::default(),
            node: crate::limits::LimitFlags::default(),
            sse_gzip: true,
        })
    }

    /// A client's view of its session: the session and the last seq it read.
    struct Reader(Arc<Session>, u64);

    fn drain(io: &mut Reader) -> Vec<ServerMessage> {
        let got = io.0.read_after(io.1).unwrap();
        if let Some(last) = got.last() {
            io.1 = last.seq;
        }
        got.iter().map(|o| ServerEnvelope::decode(&o.text).unwrap().msg).collect()
    }

    #[tokio::test]
    async fn join_welcome_presence_and_routing() {
        let hub = hub(4);
        let a = hub.join("r").await.unwrap();
        let mut a_io = Reader(a.clone(), 0);
        let b = hub.join("r").await.unwrap();
        let mut b_io = Reader(b.clone(), 0);
        let ServerMessage::Welcome(w) = &drain(&mut b_io)[0] else { panic!("no welcome") };
        assert_eq!(w.peers, vec![a.peer_id().to_owned()]);
        assert_eq!(drain(&mut a_io)[1..], [ServerMessage::PeerJoined { peer_id: b.peer_id().into() }]);

        hub.handle(&a, ClientMessage::Signal { to: b.peer_id().into(), data: SignalData::EndOfCandidates });
        assert_eq!(
            drain(&mut b_io),
            [ServerMessage::Signal { from: a.peer_id().into(), data: SignalData::EndOfCandidates }]
        );
        assert_eq!(hub.handle(&b, ClientMessage::Leave), Flow::Leave);
        assert_eq!(
            drain(&mut a_io),
            [ServerMessage::PeerLeft { peer_id: b.peer_id().into(), reason: LeaveReason::Left }]
        );
        hub.leave(&b, LeaveReason::Closed); // idempotent: no second peer-left
        assert!(drain(&mut a_io).is_empty());
        hub.leave(&a, LeaveReason::Closed);
        assert_eq!(hub.room_count(), 0);
    }

    #[tokio::test]
    async fn no_signalling_across_rooms_or_to_self() {
        let hub = hub(4);
        let a = hub.join("r1").await.unwrap();
        let mut a_io = Reader(a.clone(), 0);
        let b = hub.join("r2").await.unwrap();
        let mut b_io = Reader(b.clone(), 0);
        drain(&mut a_io);
        drain(&mut b_io);
        for to in [b.peer_id(), a.peer_id(), "nobody"] {
            hub.handle(&a, ClientMessage::Signal { to: to.into(), data: SignalData::EndOfCandidates });
            let got = drain(&mut a_io);
            assert!(matches!(got[..], [ServerMessage::Error { code: ErrorCode::UnknownPeer, .. }]), "{got:?}");
        }
        assert!(drain(&mut b_io).is_empty());
    }

    #[tokio::test]
    async fn room_limit_and_bad_names() {
        let hub = hub(2);
        let _a = hub.join("r").await.unwrap();
        let _b = hub.join("r").await.unwrap();
        assert_eq!(hub.join("r").await.unwrap_err(), JoinError::RoomFull(2));
        assert!(matches!(hub.join("a b").await, Err(JoinError::BadRoom(_))));
    }

    #[tokio::test]
    async fn shutdown_closes_everyone_and_refuses_joins() {
        let hub = hub(4);
        let a = hub.join("r").await.unwrap();
        hub.shutdown();
        assert_eq!(a.close_code(), Some(CloseCode::Shutdown));
        assert_eq!(hub.join("r").await.unwrap_err(), JoinError::ShuttingDown);
    }

    fn welcome_of(msgs: &[ServerMessage]) -> Welcome {
        match &msgs[0] {
            ServerMessage::Welcome(w) => w.clone(),
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// `a` and `b` in room `r`, both read up to now, and `a`'s connection just dropped: returns a's token.
    async fn a_drops(hub: &Hub) -> (Arc<Session>, Reader, Arc<Session>, Reader, String) {
        let a = hub.join("r").await.unwrap();
        let mut a_io = Reader(a.clone(), 0);
        let b = hub.join("r").await.unwrap();
        let mut b_io = Reader(b.clone(), 0);
        let token = welcome_of(&drain(&mut a_io)).session.token;
        drain(&mut b_io);
        let (generation, _) = a.attach();
        a.detach(generation);
        (a, a_io, b, b_io, token)
    }

    #[tokio::test]
    async fn a_resume_within_the_window_replays_what_was_missed_and_nobody_sees_a_leave() {
        let hub = hub(4);
        let (a, mut a_io, b, mut b_io, token) = a_drops(&hub).await;
        hub.handle(&b, ClientMessage::Signal { to: a.peer_id().into(), data: SignalData::EndOfCandidates });
        hub.reap(Instant::now() + Duration::from_millis(100));
        let Resumed::Same(again) = hub.resume("r", &token, a_io.1).await.unwrap() else { panic!("not resumed") };
        assert!(Arc::ptr_eq(&again, &a));
        assert_eq!(
            drain(&mut a_io),
            [
                ServerMessage::Signal { from: b.peer_id().into(), data: SignalData::EndOfCandidates },
                ServerMessage::Resumed { replayed: 1, received: 0 }
            ]
        );
        assert!(drain(&mut b_io).is_empty(), "b must not see a leave for a short drop");
    }

    #[tokio::test]
    async fn after_the_window_the_peer_leaves_and_a_resume_gets_a_new_session() {
        let hub = hub(4);
        let (a, a_io, _b, mut b_io, token) = a_drops(&hub).await;
        hub.reap(Instant::now() + Duration::from_millis(301));
        assert_eq!(
            drain(&mut b_io),
            [ServerMessage::PeerLeft { peer_id: a.peer_id().into(), reason: LeaveReason::Closed }]
        );
        let Resumed::Fresh(fresh) = hub.resume("r", &token, a_io.1).await.unwrap() else {
            panic!("resumed a dead session")
        };
        let w = welcome_of(&drain(&mut Reader(fresh.clone(), 0)));
        assert_eq!(w.recovered, Some(false));
        assert_ne!(w.peer_id, a.peer_id());
        assert_eq!(drain(&mut b_io), [ServerMessage::PeerJoined { peer_id: w.peer_id }]);
    }

    #[tokio::test]
    async fn resumes_that_cannot_be_honoured_start_afresh() {
        let hub = hub(4);
        let a = hub.join("r").await.unwrap();
        let mut a_io = Reader(a.clone(), 0);
        let token = welcome_of(&drain(&mut a_io)).session.token;
        let _other = hub.join("r").await.unwrap();
        // Wrong room, malformed or unknown token, a seq never sent: all fresh, none touches `a`.
        for (room, tok, after) in [
            ("r2", token.as_str(), 1),
            ("r", "nope", 1),
            ("r", "0123456789abcdef0123456789abcdef", 1),
            ("r", &token, 99),
        ] {
            let Resumed::Fresh(s) = hub.resume(room, tok, after).await.unwrap() else { panic!("{room} {tok} {after}") };
            assert_ne!(s.peer_id(), a.peer_id());
        }
        // A bad room is still refused outright.
        assert!(matches!(hub.resume("bad room", &token, 1).await, Err(JoinError::BadRoom(_))));
    }

    #[tokio::test]
    async fn a_gap_that_cannot_be_filled_ends_the_old_session() {
        let hub = hub(4); // 16 messages kept
        let a = hub.join("r").await.unwrap();
        let mut a_io = Reader(a.clone(), 0);
        let token = welcome_of(&drain(&mut a_io)).session.token;
        for _ in 0..20 {
            hub.handle(&a, ClientMessage::Ping { id: None }); // a reads nothing: the pongs overflow
        }
        assert_eq!(a.close_code(), Some(CloseCode::SlowConsumer));
        hub.reap(Instant::now());
        assert!(hub.session(&token).is_none());
        assert!(matches!(hub.resume("r", &token, 1).await.unwrap(), Resumed::Fresh(_)));
    }

    #[tokio::test]
    async fn a_silent_client_is_timed_out_after_interval_plus_timeout() {
        let hub = hub(4);
        let a = hub.join("r").await.unwrap();
        let b = hub.join("r").await.unwrap();
        let mut b_io = Reader(b.clone(), 0);
        drain(&mut b_io);
        let (a_seen, _) = a.liveness();
        std::thread::sleep(Duration::from_millis(30));
        b.touch(); // b is 30 ms younger: only a's silence reaches the limit below
        hub.reap(a_seen + Duration::from_millis(1499));
        assert!(drain(&mut b_io).is_empty());
        hub.reap(a_seen + Duration::from_millis(1501));
        assert_eq!(b.close_code(), None);
        assert_eq!(a.close_code(), Some(CloseCode::HeartbeatTimeout));
        assert_eq!(
            drain(&mut b_io),
            [ServerMessage::PeerLeft { peer_id: a.peer_id().into(), reason: LeaveReason::Timeout }]
        );
    }

    #[tokio::test]
    async fn peer_ids_are_long_and_distinct() {
        let a = new_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_id());
    }
}
