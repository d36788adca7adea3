//! The session core: rooms, membership, presence and routing. Transports call [`Hub::join`],
//! [`Hub::handle`] and [`Hub::leave`]; what a message means never depends on what carried it.

use crate::session::{Session, SessionIo};
use dashmap::DashMap;
use protocol::{
    ClientMessage, CloseCode, ErrorCode, Heartbeat, LeaveReason, Limits, PeerId, ServerMessage, Welcome,
    PROTOCOL_VERSION,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the core needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Announced in `welcome` and enforced by transports.
    pub limits: Limits,
    /// Announced in `welcome`; enforced by transports.
    pub heartbeat: Heartbeat,
    /// Queue capacity per session.
    pub outbox: usize,
    /// ICE servers handed to every session, TURN credentials minted per session.
    pub ice_servers: crate::ice::IceServers,
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
}

impl JoinError {
    /// The wire error code and the close code that follows it.
    pub fn codes(&self) -> (ErrorCode, CloseCode) {
        match self {
            JoinError::BadRoom(_) => (ErrorCode::BadRoom, CloseCode::BadRoom),
            JoinError::RoomFull(_) => (ErrorCode::RoomFull, CloseCode::RoomFull),
            JoinError::ShuttingDown => (ErrorCode::Internal, CloseCode::Shutdown),
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
}

/// All rooms of this server.
#[derive(Debug)]
pub struct Hub {
    cfg: HubConfig,
    // Members in join order, so `welcome.peers` lists the oldest first.
    rooms: DashMap<String, Vec<Arc<Session>>>,
    shutting_down: AtomicBool,
}

impl Hub {
    /// An empty hub.
    pub fn new(cfg: HubConfig) -> Self {
        Hub { cfg, rooms: DashMap::new(), shutting_down: AtomicBool::new(false) }
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// Adds a new session to `room`, queues its `welcome` (seq 1) and announces it to the others.
    pub fn join(&self, room: &str) -> Result<(Arc<Session>, SessionIo), JoinError> {
        protocol::validate_room(room).map_err(JoinError::BadRoom)?;
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(JoinError::ShuttingDown);
        }
        let (session, io) = Session::new(new_peer_id(), room.to_owned(), self.cfg.outbox);
        let session = Arc::new(session);
        // The entry lock is held throughout, so nobody can route to the newcomer before its
        // welcome is queued, and two joiners cannot both take the last place.
        let mut members = self.rooms.entry(room.to_owned()).or_default();
        if members.len() >= self.cfg.limits.max_peers {
            return Err(JoinError::RoomFull(members.len()));
        }
        let welcome = ServerMessage::Welcome(Welcome {
            protocol: PROTOCOL_VERSION,
            peer_id: session.peer_id().to_owned(),
            room: room.to_owned(),
            peers: members.iter().map(|m| m.peer_id().to_owned()).collect(),
            ice_servers: self.cfg.ice_servers.for_peer(session.peer_id()),
            heartbeat: self.cfg.heartbeat,
            limits: self.cfg.limits,
        });
        // A fresh queue always has room for the welcome.
        let _ = session.push(welcome);
        for other in members.iter() {
            let _ = other.push(ServerMessage::PeerJoined { peer_id: session.peer_id().to_owned() });
        }
        members.push(session.clone());
        tracing::info!(peer = %session.peer_id(), room, peers = members.len(), "joined");
        Ok((session, io))
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
                if let Some(members) = self.rooms.get(from.room()) {
                    for m in members.iter().filter(|m| m.peer_id() != from.peer_id()) {
                        let _ = m.push(msg.clone());
                    }
                }
            }
            ClientMessage::Ping { id } => {
                let _ = from.push(ServerMessage::Pong { id });
            }
            ClientMessage::Leave => {
                self.leave(from, LeaveReason::Left);
                return Flow::Leave;
            }
        }
        Flow::Continue
    }

    /// Tells the session about a message it sent that was refused.
    pub fn refuse(&self, to: &Session, code: ErrorCode, message: impl Into<String>) {
        let _ = to.push(ServerMessage::Error { code, message: message.into() });
    }

    /// Removes the session from its room and announces it. Idempotent.
    pub fn leave(&self, session: &Session, reason: LeaveReason) {
        let removed = {
            let Some(mut members) = self.rooms.get_mut(session.room()) else { return };
            let before = members.len();
            members.retain(|m| m.peer_id() != session.peer_id());
            let removed = members.len() != before;
            if removed {
                for m in members.iter() {
                    let _ = m.push(ServerMessage::PeerLeft { peer_id: session.peer_id().to_owned(), reason });
                }
            }
            removed
        };
        // Re-check under the entry lock: someone may have joined since the guard above was dropped.
        self.rooms.remove_if(session.room(), |_, members| members.is_empty());
        if removed {
            tracing::info!(peer = %session.peer_id(), room = %session.room(), ?reason, "left");
        }
    }

    /// Refuses new joins and tells every session to close with 4000 (reconnect elsewhere or later).
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        for room in self.rooms.iter() {
            for m in room.iter() {
                m.close(CloseCode::Shutdown);
            }
        }
    }

    /// Sessions currently in rooms.
    pub fn session_count(&self) -> usize {
        self.rooms.iter().map(|r| r.len()).sum()
    }

    /// Rooms with at least one peer.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    fn send_to(&self, from: &Session, to: &str, msg: ServerMessage) {
        let target = self
            .rooms
            .get(from.room())
            .and_then(|members| members.iter().find(|m| m.peer_id() == to && m.peer_id() != from.peer_id()).cloned());
        match target {
            // A full target is the target's problem (it gets closed), not the sender's.
            Some(target) => {
                let _ = target.push(msg);
            }
            None => self.refuse(from, ErrorCode::UnknownPeer, format!("no peer {to:?} in room {:?}", from.room())),
        }
    }
}

/// 128 random bits, hex: unguessable, so knowing an id grants nothing outside the room.
fn new_peer_id() -> PeerId {
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
            ice_servers: Default::default(),
        })
    }

    fn drain(io: &mut SessionIo) -> Vec<ServerMessage> {
        let mut v = vec![];
        while let Ok(o) = io.outbox.try_recv() {
            v.push(ServerEnvelope::decode(&o.text).unwrap().msg);
        }
        v
    }

    #[test]
    fn join_welcome_presence_and_routing() {
        let hub = hub(4);
        let (a, mut a_io) = hub.join("r").unwrap();
        let (b, mut b_io) = hub.join("r").unwrap();
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

    #[test]
    fn no_signalling_across_rooms_or_to_self() {
        let hub = hub(4);
        let (a, mut a_io) = hub.join("r1").unwrap();
        let (b, mut b_io) = hub.join("r2").unwrap();
        drain(&mut a_io);
        drain(&mut b_io);
        for to in [b.peer_id(), a.peer_id(), "nobody"] {
            hub.handle(&a, ClientMessage::Signal { to: to.into(), data: SignalData::EndOfCandidates });
            let got = drain(&mut a_io);
            assert!(matches!(got[..], [ServerMessage::Error { code: ErrorCode::UnknownPeer, .. }]), "{got:?}");
        }
        assert!(drain(&mut b_io).is_empty());
    }

    #[test]
    fn room_limit_and_bad_names() {
        let hub = hub(2);
        let _a = hub.join("r").unwrap();
        let _b = hub.join("r").unwrap();
        assert_eq!(hub.join("r").unwrap_err(), JoinError::RoomFull(2));
        assert!(matches!(hub.join("a b"), Err(JoinError::BadRoom(_))));
    }

    #[test]
    fn shutdown_closes_everyone_and_refuses_joins() {
        let hub = hub(4);
        let (a, _a_io) = hub.join("r").unwrap();
        hub.shutdown();
        assert_eq!(a.close_code(), Some(CloseCode::Shutdown));
        assert_eq!(hub.join("r").unwrap_err(), JoinError::ShuttingDown);
    }

    #[test]
    fn peer_ids_are_long_and_distinct() {
        let a = new_peer_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_peer_id());
    }
}
