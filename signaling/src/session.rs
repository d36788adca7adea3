//! One peer's session: its identity, its secret, the `seq` it stamps and the buffer that makes resume work.
//!
//! Transports never build envelopes themselves: everything sent to a client goes through
//! [`Session::push`], so `seq` is gap-free whatever carries the messages. Every pushed message stays in a
//! bounded buffer (the last `capacity` ones); a transport reads from it with its own cursor
//! ([`Session::read_after`]), so a connection that drops can be replaced by another, on any transport, that
//! continues from the last `seq` the client saw: nothing lost, nothing duplicated.

use protocol::{CloseCode, PeerId, ServerEnvelope, ServerMessage};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A server message already stamped and encoded, ready for any transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The `seq` stamped on it.
    pub seq: u64,
    /// The JSON text.
    pub text: String,
}

/// The client asked for messages that are no longer buffered: the gap cannot be filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("messages after seq {after} are no longer buffered (oldest kept: {oldest})")]
pub struct Gap {
    /// What the client had.
    pub after: u64,
    /// The oldest `seq` still buffered.
    pub oldest: u64,
}

/// Which connection currently serves a session. A newer attachment supersedes the older ones.
pub type Generation = u64;

/// A peer in a room.
#[derive(Debug)]
pub struct Session {
    peer_id: PeerId,
    room: String,
    token: String,
    capacity: usize,
    // Bytes of encoded messages kept at most (`--outbox-bytes`); the newest message is always kept.
    byte_capacity: usize,
    guard: crate::limits::SessionGuard,
    // One lock makes "take the next seq" and "append" one step, so concurrent senders (two peers
    // signalling the same target) can never append out of seq order.
    state: Mutex<State>,
    // The last seq pushed; transports wait on it instead of polling.
    last_seq: watch::Sender<u64>,
    // The current attachment; a transport whose generation is no longer current stops.
    attached: watch::Sender<Generation>,
    kill: watch::Sender<Option<CloseCode>>,
    // When this node created (or carried over) the session.
    started: Instant,
}

#[derive(Debug)]
struct State {
    next_seq: u64,
    buf: VecDeque<Outgoing>,
    // Sum of the text lengths in `buf`.
    bytes: usize,
    // Highest seq ever handed to a transport. Evicting a message above it would lose it for good.
    handed_out: u64,
    last_seen: Instant,
    detached_at: Option<Instant>,
    // Highest client sequence number received.
    last_cseq: u64,
    // The transport that attached last (`ws`, `sse`, `longpoll`), for the session's end-of-session log line.
    transport: &'static str,
}

impl Session {
    /// A new session that keeps the last `capacity` messages for resume.
    pub fn new(peer_id: PeerId, room: String, token: String, capacity: usize) -> Self {
        Session {
            peer_id,
            room,
            token,
            capacity: capacity.max(1),
            byte_capacity: usize::MAX,
            guard: crate::limits::SessionGuard::default(),
            state: Mutex::new(State {
                next_seq: 1,
                buf: VecDeque::new(),
                bytes: 0,
                handed_out: 0,
                last_seen: Instant::now(),
                detached_at: None,
                last_cseq: 0,
                transport: "",
            }),
            started: Instant::now(),
            last_seq: watch::channel(0).0,
            attached: watch::channel(0).0,
            kill: watch::channel(None).0,
        }
    }

    /// A session carried over from another node (cluster resume): `buf` is its outbox as the cluster kept it,
    /// ending at `last`; the client has everything up to `after`, and the server had its messages up to
    /// `last_cseq`.
    // One argument per field the cluster keeps for a session; a struct would only repeat them.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        peer_id: PeerId,
        room: String,
        token: String,
        capacity: usize,
        buf: Vec<Outgoing>,
        last: u64,
        after: u64,
        last_cseq: u64,
    ) -> Self {
        let s = Session::new(peer_id, room, token, capacity);
        {
            let mut st = s.state();
            st.next_seq = last + 1;
            st.bytes = buf.iter().map(|o| o.text.len()).sum();
            st.buf = buf.into();
            st.handed_out = after.min(last);
            st.last_cseq = last_cseq;
        }
        s.last_seq.send_replace(last);
        s
    }

    /// Also bounds the buffer to `bytes` of encoded messages: a client that does not read can make the
    /// server hold this much for it, not more.
    pub fn with_outbox_bytes(mut self, bytes: usize) -> Self {
        self.byte_capacity = bytes;
        self
    }

    /// Records which transport serves the session now (a resume may change it).
    pub fn set_transport(&self, name: &'static str) {
        self.state().transport = name;
    }

    /// The transport that attached last (empty before any did).
    pub fn transport(&self) -> &'static str {
        self.state().transport
    }

    /// How long ago this node created (or carried over) the session.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// The session's rate, SDP and candidate limit state.
    pub fn guard(&self) -> &crate::limits::SessionGuard {
        &self.guard
    }

    /// The server-assigned id.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// The room this session is in.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// Whether `token` is this session's secret (compared in constant time).
    pub fn token_matches(&self, token: &str) -> bool {
        let (a, b) = (self.token.as_bytes(), token.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The secret, for the `welcome`.
    pub fn token(&self) -> &str {
        &self.token
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another pusher panicked mid-push; the state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stamps the next `seq` on `msg` and buffers it. When the buffer is full the oldest message is dropped;
    /// if the client never got that one, it can never get it: the session is closed as a slow consumer.
    pub fn push(&self, msg: ServerMessage) -> Result<u64, Closed> {
        self.push_with(|_| msg)
    }

    /// Like [`push`](Self::push), with a message that depends on the `seq` it gets.
    pub fn push_with(&self, msg: impl FnOnce(u64) -> ServerMessage) -> Result<u64, Closed> {
        if self.kill.borrow().is_some() {
            return Err(Closed);
        }
        let mut st = self.state();
        let seq = st.next_seq;
        st.next_seq += 1;
        let mut text = ServerEnvelope { seq, msg: msg(seq) }.encode();
        // serde_json grows its buffer by doubling, so up to half of it is slack, kept as long as the message
        // stays buffered for resume (up to `capacity` of them per session): one realloc returns it.
        text.shrink_to_fit();
        self.append(st, Outgoing { seq, text })?;
        Ok(seq)
    }

    /// Buffers a message whose `seq` was stamped elsewhere (by the cluster, which numbers every session's
    /// messages): a `seq` already here is a duplicate and ignored; one past a missing `seq` is not taken, and
    /// the caller fills the gap first.
    pub fn accept_stamped(&self, seq: u64, text: String) -> Result<Stamped, Closed> {
        if self.kill.borrow().is_some() {
            return Err(Closed);
        }
        let mut st = self.state();
        let last = st.next_seq - 1;
        if seq <= last {
            return Ok(Stamped::Duplicate);
        }
        if seq > last + 1 {
            return Ok(Stamped::Gap { last });
        }
        st.next_seq = seq + 1;
        self.append(st, Outgoing { seq, text })?;
        Ok(Stamped::Appended)
    }

    /// The last `seq` buffered (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.state().next_seq - 1
    }

    /// The buffered messages, oldest first (what a cluster re-sync writes back).
    pub fn buffered(&self) -> Vec<Outgoing> {
        self.state().buf.iter().cloned().collect()
    }

    fn append(&self, mut st: std::sync::MutexGuard<'_, State>, out: Outgoing) -> Result<(), Closed> {
        let seq = out.seq;
        st.bytes += out.text.len();
        st.buf.push_back(out);
        let mut lost = false;
        while st.buf.len() > self.capacity || (st.bytes > self.byte_capacity && st.buf.len() > 1) {
            if let Some(old) = st.buf.pop_front() {
                st.bytes -= old.text.len();
                lost |= old.seq > st.handed_out;
            }
        }
        drop(st);
        self.last_seq.send_replace(seq);
        if lost {
            tracing::warn!(peer = %self.peer_id, room = %self.room, "buffer full of undelivered messages: closing slow consumer");
            self.close(CloseCode::SlowConsumer);
            return Err(Closed);
        }
        Ok(())
    }

    /// The buffered messages after `after`, in order; `Err` if some of them are no longer buffered.
    /// Marks them handed out.
    pub fn read_after(&self, after: u64) -> Result<Vec<Outgoing>, Gap> {
        let mut st = self.state();
        Self::check_gap(&st, after)?;
        let out: Vec<Outgoing> = st.buf.iter().filter(|o| o.seq > after).cloned().collect();
        if let Some(last) = out.last() {
            st.handed_out = st.handed_out.max(last.seq);
        }
        Ok(out)
    }

    fn check_gap(st: &State, after: u64) -> Result<(), Gap> {
        let last = st.next_seq - 1;
        let oldest = st.buf.front().map_or(st.next_seq, |o| o.seq);
        // A client cannot have seen a seq we never sent; and everything after `after` must still be here.
        if after > last || (after < last && after + 1 < oldest) {
            return Err(Gap { after, oldest });
        }
        Ok(())
    }

    /// Whether [`read_after`](Self::read_after)`(after)` would succeed.
    pub fn can_resume_from(&self, after: u64) -> Result<(), Gap> {
        Self::check_gap(&self.state(), after)
    }

    /// The last `seq` pushed, and a receiver that changes on every push.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last_seq.subscribe()
    }

    /// Makes a new connection the one serving this session; the previous one sees its generation superseded.
    pub fn attach(&self) -> (Generation, watch::Receiver<Generation>) {
        let mut st = self.state();
        st.detached_at = None;
        st.last_seen = Instant::now();
        drop(st);
        let mut generation = 0;
        self.attached.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        (generation, self.attached.subscribe())
    }

    /// The connection `generation` is gone without the client leaving: the resume window starts, unless a newer
    /// connection has already taken over.
    pub fn detach(&self, generation: Generation) {
        if *self.attached.borrow() == generation {
            self.state().detached_at = Some(Instant::now());
        }
    }

    /// Whether a client message numbered `cseq` is new (and records it); `None` (unnumbered) is always new.
    /// A message sent again after a reconnect that the server already had is not.
    pub fn accept_cseq(&self, cseq: Option<u64>) -> bool {
        let Some(c) = cseq else { return true };
        let mut st = self.state();
        if c <= st.last_cseq {
            return false;
        }
        st.last_cseq = c;
        true
    }

    /// The highest client sequence number received (0: none).
    pub fn received(&self) -> u64 {
        self.state().last_cseq
    }

    /// The client showed signs of life.
    pub fn touch(&self) {
        self.state().last_seen = Instant::now();
    }

    /// When the client was last heard from, and since when no connection serves it (if so).
    pub fn liveness(&self) -> (Instant, Option<Instant>) {
        let st = self.state();
        (st.last_seen, st.detached_at)
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

    /// A receiver that becomes `Some(code)` when the session must end.
    pub fn kill_signal(&self) -> watch::Receiver<Option<CloseCode>> {
        self.kill.subscribe()
    }

    /// The close code, if the session was told to close.
    pub fn close_code(&self) -> Option<CloseCode> {
        *self.kill.borrow()
    }
}

/// What [`Session::accept_stamped`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamped {
    /// Buffered.
    Appended,
    /// Already buffered (delivered twice: dropped).
    Duplicate,
    /// Messages after `last` are missing before this one: fill them first.
    Gap {
        /// The last `seq` buffered.
        last: u64,
    },
}

/// The session could not take a message: it has been told to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("session closed")]
pub struct Closed;

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ServerEnvelope;

    fn session(capacity: usize) -> Session {
        Session::new("p".into(), "r".into(), "secret".into(), capacity)
    }

    fn pong(s: &Session) -> Result<u64, Closed> {
        s.push(ServerMessage::Pong { id: None, received: None })
    }

    #[test]
    fn seq_is_gap_free_from_one() {
        let s = session(8);
        for id in 0..5 {
            s.push(ServerMessage::Pong { id: Some(id), received: None }).unwrap();
        }
        let got = s.read_after(0).unwrap();
        for (out, expect) in got.iter().zip(1..=5u64) {
            assert_eq!(out.seq, expect);
            assert_eq!(ServerEnvelope::decode(&out.text).unwrap().seq, expect);
        }
        assert_eq!(got.len(), 5);
        assert_eq!(s.read_after(3).unwrap().iter().map(|o| o.seq).collect::<Vec<_>>(), [4, 5]);
        assert!(s.read_after(5).unwrap().is_empty());
    }

    #[test]
    fn handed_out_messages_may_be_evicted_but_the_gap_is_then_reported() {
        let s = session(2);
        pong(&s).unwrap();
        pong(&s).unwrap();
        assert_eq!(s.read_after(0).unwrap().len(), 2); // both handed out
        pong(&s).unwrap(); // evicts seq 1, which was handed out: fine
        assert_eq!(s.close_code(), None);
        // A client that got seq 1 can resume; one that got nothing cannot.
        assert_eq!(s.read_after(1).unwrap().iter().map(|o| o.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(s.read_after(0), Err(Gap { after: 0, oldest: 2 }));
        // Nobody can claim to have seen a seq that was never sent.
        assert!(s.read_after(4).is_err());
    }

    #[test]
    fn evicting_an_undelivered_message_closes_a_slow_consumer() {
        let s = session(2);
        pong(&s).unwrap();
        pong(&s).unwrap();
        assert_eq!(pong(&s), Err(Closed));
        assert_eq!(s.close_code(), Some(CloseCode::SlowConsumer));
        assert_eq!(pong(&s), Err(Closed));
    }

    #[test]
    fn the_byte_bound_closes_a_slow_consumer_too() {
        let s = session(1000).with_outbox_bytes(200);
        let big = || s.push(ServerMessage::Pong { id: Some(1), received: Some(u64::MAX) });
        let one = big().unwrap();
        let len = s.read_after(0).unwrap()[0].text.len();
        assert_eq!(one, 1);
        // Handed-out messages are evicted silently; undelivered ones past the byte bound close the session.
        let mut pushed = 1;
        while big().is_ok() {
            pushed += 1;
            assert!(pushed * len < 200 + 2 * len, "more bytes kept than the bound allows");
        }
        assert_eq!(s.close_code(), Some(CloseCode::SlowConsumer));
    }

    #[test]
    fn first_close_code_wins() {
        let s = session(2);
        s.close(CloseCode::HeartbeatTimeout);
        s.close(CloseCode::Shutdown);
        assert_eq!(s.close_code(), Some(CloseCode::HeartbeatTimeout));
    }

    #[test]
    fn a_newer_attachment_supersedes_and_only_the_current_one_detaches() {
        let s = session(2);
        let (g1, rx) = s.attach();
        let (g2, _) = s.attach();
        assert_ne!(g1, g2);
        assert_eq!(*rx.borrow(), g2);
        s.detach(g1); // stale: ignored
        assert!(s.liveness().1.is_none());
        s.detach(g2);
        assert!(s.liveness().1.is_some());
        s.attach();
        assert!(s.liveness().1.is_none());
    }

    #[test]
    fn tokens_compare_exactly() {
        let s = session(2);
        assert!(s.token_matches("secret"));
        assert!(!s.token_matches("secreT"));
        assert!(!s.token_matches("secret2"));
        assert!(!s.token_matches(""));
    }
}
