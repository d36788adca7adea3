//! Transports: thin adapters that move protocol messages between a client connection and the session core.
//!
//! Streaming transports (WebSocket, SSE) drain a session through one [`Feed`]; polling reads the same
//! buffer per request. Whatever carries them, clients get the same envelopes with the same `seq`.

pub mod gzip;
pub mod http;
pub mod sse;
pub mod ws;

use crate::hub::{Hub, Resumed};
use crate::session::{Generation, Outgoing, Session};
use protocol::CloseCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The transports a server can offer (`--transports`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Kind {
    /// `GET /v1/rooms/{room}/ws`.
    Ws,
    /// `GET /v1/rooms/{room}/sse` plus `POST` to the session URL.
    Sse,
    /// `GET /v1/rooms/{room}/poll` (long polling, or short polling with `wait_ms=0`) plus `POST`.
    Longpoll,
}

impl Kind {
    /// The name `--transports` and the logs use.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ws => "ws",
            Kind::Sse => "sse",
            Kind::Longpoll => "longpoll",
        }
    }
}

/// How a connection asked to start: a fresh join, or a resume of the session holding `token` from the
/// client's last `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// A new session.
    Join,
    /// Continue a session.
    Resume {
        /// The session secret.
        token: String,
        /// The last `seq` the client processed.
        after: u64,
    },
    /// Refused before it reached the core (too many joins from the client's address): every transport
    /// answers it as it answers any refused join.
    Refused(crate::hub::JoinError),
}

impl Start {
    /// Joins (if `admit` lets it) or resumes on `hub`; returns the session and the `seq` after which its
    /// client needs messages. A resume needs no join token; the fresh session that replaces a failed one does.
    /// `kind` is the transport asking, which the session's log lines name.
    pub async fn run(
        &self,
        hub: &Hub,
        room: &str,
        admit: &crate::auth::Admit,
        kind: Kind,
    ) -> Result<(Arc<Session>, u64), crate::hub::JoinError> {
        match self {
            Start::Join => {
                // The room name is checked first, so a bad room says `bad-room` whatever the token.
                protocol::validate_room(room).map_err(crate::hub::JoinError::BadRoom)?;
                let grant = admit.as_ref().map_err(|e| crate::hub::JoinError::Unauthorized(e.clone()))?;
                Ok((hub.join_granted(room, grant, kind.name()).await?, 0))
            }
            Start::Resume { token, after } => match hub.resume_or_join(room, token, *after, admit, kind.name()).await? {
                Resumed::Same(s) => Ok((s, *after)),
                Resumed::Fresh(s) => Ok((s, 0)),
            },
            Start::Refused(e) => Err(e.clone()),
        }
    }
}

/// What a streaming transport must do next.
#[derive(Debug)]
pub enum Next {
    /// Send these, in order.
    Messages(Vec<Outgoing>),
    /// Nothing to send for a heartbeat interval: send a heartbeat (WebSocket ping, SSE comment).
    Heartbeat,
    /// Close with this code: the session ended, another connection took it over, or the client fell so far
    /// behind that messages were lost (slow consumer).
    Close(CloseCode),
}

/// One streaming connection's view of its session: a cursor into the buffer, heartbeat ticks, and the
/// signals that end it.
#[derive(Debug)]
pub struct Feed {
    session: Arc<Session>,
    cursor: u64,
    generation: Generation,
    seq: watch::Receiver<u64>,
    attached: watch::Receiver<Generation>,
    kill: watch::Receiver<Option<CloseCode>>,
    heartbeat: tokio::time::Interval,
}

impl Feed {
    /// Attaches a new connection to `session`, delivering messages after `after`.
    pub fn attach(session: Arc<Session>, after: u64, heartbeat: Duration) -> Self {
        let seq = session.subscribe();
        let kill = session.kill_signal();
        let (generation, attached) = session.attach();
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Feed { session, cursor: after, generation, seq, attached, kill, heartbeat }
    }

    /// The session.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// This connection's attachment.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Waits for the next thing to do. Messages come before a close, except for a slow consumer (which
    /// would not read them) and a superseded connection (the new one delivers them).
    pub async fn next(&mut self) -> Next {
        loop {
            if *self.attached.borrow() != self.generation {
                return Next::Close(CloseCode::Superseded);
            }
            let killed = *self.kill.borrow_and_update();
            if killed == Some(CloseCode::SlowConsumer) {
                return Next::Close(CloseCode::SlowConsumer);
            }
            self.seq.borrow_and_update();
            match self.session.read_after(self.cursor) {
                Ok(batch) if !batch.is_empty() => {
                    self.cursor = batch[batch.len() - 1].seq;
                    self.heartbeat.reset();
                    return Next::Messages(batch);
                }
                Ok(_) => {}
                Err(_) => return Next::Close(CloseCode::SlowConsumer),
            }
            if let Some(code) = killed {
                return Next::Close(code);
            }
            tokio::select! {
                _ = self.seq.changed() => {}
                _ = self.kill.changed() => {}
                _ = self.attached.changed() => {}
                _ = self.heartbeat.tick() => return Next::Heartbeat,
            }
        }
    }

    /// Resolves once the connection must stop whatever it is doing (session killed, or superseded): for
    /// cancelling a send to a client that does not read.
    pub async fn interrupted(&mut self) {
        loop {
            if *self.attached.borrow() != self.generation || self.kill.borrow().is_some() {
                return;
            }
            tokio::select! {
                _ = self.kill.changed() => {}
                _ = self.attached.changed() => {}
            }
        }
    }

    /// The connection ended without the client leaving: start the resume window (if this connection is
    /// still the current one).
    pub fn detach(&self) {
        self.session.detach(self.generation);
    }
}
