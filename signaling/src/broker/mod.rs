//! The broker boundary: where the session core ([`crate::hub::Hub`]) publishes to a room, delivers to a
//! session, keeps presence and counts. Transports never see it, so they cannot tell which one runs.
//!
//! An enum rather than a `dyn` trait: the local broker is the default and the fast path, and a match on a
//! two-variant enum costs nothing next to a virtual call returning a boxed future on every message.

pub mod local;

pub use local::LocalBroker;

/// The broker a hub runs on.
#[derive(Debug)]
pub enum AnyBroker {
    /// This process only (the default).
    Local(LocalBroker),
}

impl Default for AnyBroker {
    fn default() -> Self {
        AnyBroker::Local(LocalBroker::default())
    }
}
