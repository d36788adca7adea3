//! One peer's session: its identity, its bounded outgoing queue and the `seq` it stamps.
//!
//! Transports never build envelopes themselves: everything sent to a client goes through
//! [`Session::push`], so `seq` is gap-free whatever carries the messages.

use protocol::{CloseCode, PeerId, ServerEnvelope, ServerMessage};
use std::sync::Mutex;
use tokio::sync::{mpsc, watch};

/// A server message already stamped and encoded, ready for any transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The `seq` stamped on it.
    pub seq: u64,
    /// The JSON text.
    pub text: String,
}

/// The receiving half a transport drains: queued messages, and the order to close.
#[derive(Debug)]
pub struct SessionIo {
    /// Messages to deliver, in `seq` order.
    pub outbox: mpsc::Receiver<Outgoing>,
    /// Becomes `Some(code)` when the session must end (slow consumer, shutdown, ...).
    pub kill: watch::Receiver<Option<CloseCode>>,
}

/// A peer in a room.
#[derive(Debug)]
pub struct Session {
    peer_id: PeerId,
    room: String,
    // The lock makes "take the next seq" and "enqueue" one step, so concurrent senders
    // (two peers signalling the same target) can never enqueue out of seq order.
    out: Mutex<Outbox>,
    kill: watch::Sender<Option<CloseCode>>,
}

#[derive(Debug)]
struct Outbox {
    next_seq: u64,
    tx: mpsc::Sender<Outgoing>,
}

/// The session could not take a message: it has been told to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("session closed")]
pub struct Closed;

impl Session {
    /// A new session with a queue of `capacity` messages.
    pub fn new(peer_id: PeerId, room: String, capacity: usize) -> (Self, SessionIo) {
        let (tx, outbox) = mpsc::channel(capacity);
        let (kill, kill_rx) = watch::channel(None);
        let session = Session { peer_id, room, out: Mutex::new(Outbox { next_seq: 1, tx }), kill };
        (session, SessionIo { outbox, kill: kill_rx })
    }

    /// The server-assigned id.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// The room this session is in.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// Stamps the next `seq` on `msg` and queues it. A full queue means the client cannot keep up:
    /// the session is killed as a slow consumer instead of buffering without bound.
    pub fn push(&self, msg: ServerMessage) -> Result<(), Closed> {
        if self.kill.borrow().is_some() {
            return Err(Closed);
        }
        // A poisoned lock only means another pusher panicked mid-push; the counter is still consistent.
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let seq = out.next_seq;
        let text = ServerEnvelope { seq, msg }.encode();
        match out.tx.try_send(Outgoing { seq, text }) {
            Ok(()) => {
                out.next_seq += 1;
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                drop(out);
                tracing::warn!(peer = %self.peer_id, room = %self.room, "outgoing queue full: closing slow consumer");
                self.close(CloseCode::SlowConsumer);
                Err(Closed)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
        }
    }

    /// Orders the transport to close the session with `code`. The first code wins.
    pub fn close(&self, code: CloseCode) {
        self.kill.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(code);
                true
            } else {
                false
            }
        });
    }

    /// The close code, if the session was told to close.
    pub fn close_code(&self) -> Option<CloseCode> {
        *self.kill.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ServerEnvelope;

    #[test]
    fn seq_is_gap_free_from_one() {
        let (s, mut io) = Session::new("p".into(), "r".into(), 8);
        for id in 0..5 {
            s.push(ServerMessage::Pong { id: Some(id) }).unwrap();
        }
        for expect in 1..=5u64 {
            let out = io.outbox.try_recv().unwrap();
            assert_eq!(out.seq, expect);
            assert_eq!(ServerEnvelope::decode(&out.text).unwrap().seq, expect);
        }
    }

    #[test]
    fn overflow_closes_as_slow_consumer_without_growing() {
        let (s, mut io) = Session::new("p".into(), "r".into(), 2);
        s.push(ServerMessage::Pong { id: None }).unwrap();
        s.push(ServerMessage::Pong { id: None }).unwrap();
        assert_eq!(s.push(ServerMessage::Pong { id: None }), Err(Closed));
        assert_eq!(s.close_code(), Some(CloseCode::SlowConsumer));
        assert_eq!(*io.kill.borrow_and_update(), Some(CloseCode::SlowConsumer));
        // Nothing more is accepted once closed, even with room in the queue.
        io.outbox.try_recv().unwrap();
        assert_eq!(s.push(ServerMessage::Pong { id: None }), Err(Closed));
    }

    #[test]
    fn first_close_code_wins() {
        let (s, _io) = Session::new("p".into(), "r".into(), 2);
        s.close(CloseCode::HeartbeatTimeout);
        s.close(CloseCode::Shutdown);
        assert_eq!(s.close_code(), Some(CloseCode::HeartbeatTimeout));
    }
}
