//! Transports: thin adapters that move protocol messages between a client connection and the session core.

pub mod ws;
