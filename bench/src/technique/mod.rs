//! The ways of moving messages that the benchmark compares: one module per technique, one table row per
//! technique × message size.
//!
//! To add a technique: write a module with a type implementing [`Technique`] whose `connect` returns a
//! [`Link`](crate::link::Link), and list it in a suite ([`p2p_suite`], [`relay_suite`]). The harness measures
//! setup, echo RTT, paced one-way latency, throughput and 1 → N fan-out identically for every technique.

pub mod p2p;
pub mod relay;
pub mod tcp;

use crate::link::{BoxFut, FanLink, Link};
use crate::server::ServerProc;
use std::sync::Arc;
use std::time::Duration;
use std::sync::atomic::{AtomicU64, Ordering};

/// What techniques share: the in-process signaling server and fresh room names.
#[derive(Debug)]
pub struct Env {
    /// `http://127.0.0.1:port` of the in-process signaling server.
    pub server_url: String,
    next_room: AtomicU64,
    /// Unique per process, so rooms never collide with another bench run on a shared server.
    run_id: u32,
}

impl Env {
    /// An environment around a running server.
    pub fn new(server_url: String) -> Arc<Env> {
        let run_id = std::process::id();
        Arc::new(Env { server_url, next_room: AtomicU64::new(0), run_id })
    }

    /// A room name never used before in this run.
    pub fn fresh_room(&self, prefix: &str) -> String {
        format!("{prefix}-{}-{}", self.run_id, self.next_room.fetch_add(1, Ordering::Relaxed))
    }
}

/// One way of carrying messages between two endpoints.
pub trait Technique: Send + Sync {
    /// Row name in the table, e.g. `p2p-reliable`.
    fn name(&self) -> &'static str;
    /// One sentence on what is measured, printed under the table.
    fn description(&self) -> &'static str;
    /// What the setup time of this technique spans.
    fn setup_means(&self) -> &'static str;
    /// Largest message this technique carries, if limited.
    fn max_message(&self) -> Option<usize> {
        None
    }
    /// How many transport frames one message of `size` bytes becomes (1 unless the technique chunks).
    fn frames(&self, _size: usize) -> usize {
        1
    }
    /// Messages may be dropped (the harness then reports loss instead of failing).
    fn lossy(&self) -> bool {
        false
    }
    /// The separate server process this technique goes through, whose cost the harness then reads.
    fn server(&self) -> Option<&ServerProc> {
        None
    }
    /// A fixed delay between deliveries (short polling): the harness scales its counts to it.
    fn poll_interval(&self) -> Option<Duration> {
        None
    }
    /// Builds a fresh connected pair.
    fn connect(&self) -> BoxFut<'_, anyhow::Result<Link>>;
    /// Builds one sender and `n` receivers. By default `n` separate pairs, the sender writing each message to
    /// every one of them; a technique with a multicast path (the server's room-wide relay) overrides it.
    fn connect_fanout(&self, n: usize) -> BoxFut<'_, anyhow::Result<FanLink>> {
        Box::pin(crate::link::fan_of_links(n, || self.connect()))
    }
    /// How the fan-out sender reaches its N receivers, in words (printed under the fan-out table).
    fn fanout_means(&self) -> &'static str {
        "N separate links; the sender writes each message to each of them in turn"
    }
}

/// Every technique the `p2p` subcommand measures, baseline first.
pub fn p2p_suite(env: &Arc<Env>) -> Vec<Box<dyn Technique>> {
    vec![
        Box::new(tcp::TcpLoopback),
        Box::new(p2p::P2p::reliable(env.clone())),
        Box::new(p2p::P2p::unreliable(env.clone())),
    ]
}

/// The server-relayed techniques (WebSocket, SSE, long and short polling) through `server`.
pub fn relay_suite(env: &Arc<Env>, server: &Arc<ServerProc>) -> Vec<Box<dyn Technique>> {
    relay::Relay::all(env, server).into_iter().map(|t| Box::new(t) as Box<dyn Technique>).collect()
}
