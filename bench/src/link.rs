//! What every technique provides: a connected pair of endpoints A and B that carry binary messages.
//!
//! The measurements (`harness`) only see these traits, so a new way of moving bytes (a WebSocket relay
//! through the server, SSE, long polling, ...) becomes a new table row by implementing them once.

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed, sendable future (keeps the traits dyn-compatible without extra dependencies).
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The sending half of one endpoint.
pub trait MsgTx: Send + 'static {
    /// Sends one whole message; waits while the transport applies backpressure.
    fn send(&mut self, msg: Bytes) -> BoxFut<'_, anyhow::Result<()>>;
}

/// The receiving half of one endpoint. `recv` must be cancel-safe: the harness wraps it in timeouts.
pub trait MsgRx: Send + 'static {
    /// The next whole message, or `None` once the link is gone.
    fn recv(&mut self) -> BoxFut<'_, Option<Bytes>>;
}

/// A connected pair: A is the measuring side, B the echoing / counting side.
pub struct Link {
    /// A's sender (to B).
    pub a_tx: Box<dyn MsgTx>,
    /// A's receiver (from B).
    pub a_rx: Box<dyn MsgRx>,
    /// B's sender (to A).
    pub b_tx: Box<dyn MsgTx>,
    /// B's receiver (from A).
    pub b_rx: Box<dyn MsgRx>,
    /// How long this link took to become usable, as the technique defines it (see `Technique::setup_means`).
    pub setup: Duration,
    /// Releases whatever the link holds; run after every half has been dropped.
    pub close: BoxFut<'static, ()>,
}
