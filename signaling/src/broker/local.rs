//! The in-process broker: rooms are vectors of this node's sessions, delivery is a push into the target's
//! buffer. The default, and the fast path: no I/O, one map lookup per message.

use crate::hub::JoinError;
use crate::session::Session;
use dashmap::DashMap;
use protocol::{LeaveReason, PeerId, ServerMessage};
use std::sync::Arc;

/// Rooms of one node, members in join order (so `welcome.peers` lists the oldest first).
#[derive(Debug, Default)]
pub struct LocalBroker {
    rooms: DashMap<String, Vec<Arc<Session>>>,
}

impl LocalBroker {
    /// Adds `session` to its room unless the room holds `max_peers`: queues the `welcome` that
    /// `welcome(peers already there)` builds, then announces the newcomer to the others.
    pub fn admit(
        &self,
        session: &Arc<Session>,
        max_peers: usize,
        welcome: impl FnOnce(Vec<PeerId>) -> ServerMessage,
    ) -> Result<usize, JoinError> {
        // The entry lock is held throughout, so nobody can route to the newcomer before its
        // welcome is queued, and two joiners cannot both take the last place.
        let mut members = self.rooms.entry(session.room().to_owned()).or_default();
        if members.len() >= max_peers {
            return Err(JoinError::RoomFull(members.len()));
        }
        // A fresh buffer always has room for the welcome.
        let _ = session.push(welcome(members.iter().map(|m| m.peer_id().to_owned()).collect()));
        for other in members.iter() {
            let _ = other.push(ServerMessage::PeerJoined { peer_id: session.peer_id().to_owned() });
        }
        members.push(session.clone());
        Ok(members.len())
    }

    /// Pushes `msg` to the member `to` of `from`'s room (never to `from` itself); false if there is none.
    pub fn send_to(&self, from: &Session, to: &str, msg: ServerMessage) -> bool {
        let target = self
            .rooms
            .get(from.room())
            .and_then(|members| members.iter().find(|m| m.peer_id() == to && m.peer_id() != from.peer_id()).cloned());
        match target {
            // A full target is the target's problem (it gets closed), not the sender's.
            Some(target) => {
                let _ = target.push(msg);
                true
            }
            None => false,
        }
    }

    /// Pushes `msg` to every member of `from`'s room but `from`.
    pub fn broadcast(&self, from: &Session, msg: ServerMessage) {
        if let Some(members) = self.rooms.get(from.room()) {
            for m in members.iter().filter(|m| m.peer_id() != from.peer_id()) {
                let _ = m.push(msg.clone());
            }
        }
    }

    /// Removes `session` from its room and announces `peer-left` to the others; false if it was not there.
    pub fn remove(&self, session: &Session, reason: LeaveReason) -> bool {
        let removed = {
            let Some(mut members) = self.rooms.get_mut(session.room()) else {
                return false;
            };
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
        removed
    }

    /// Whether `room` has members here.
    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Rooms with at least one member.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Sessions in rooms.
    pub fn session_count(&self) -> usize {
        self.rooms.iter().map(|r| r.len()).sum()
    }

    /// Every member of every room.
    pub fn for_each_member(&self, mut f: impl FnMut(&Arc<Session>)) {
        for room in self.rooms.iter() {
            room.iter().for_each(&mut f);
        }
    }
}
