//! Direct data channels between two native `peer::Peer`s that met through the in-process signaling server.
//!
//! Each link is a fresh room: A joins, then B joins and (as the later joiner) creates the channel and offers.
//! Everything is loopback-only (`bind = 127.0.0.1`), both peers live in this process.

use crate::link::{BoxFut, Link, MsgRx, MsgTx};
use crate::technique::{Env, Technique};
use anyhow::{Context, bail};
use bytes::Bytes;
use peer::{ChannelOptions, Event, Payload, Peer, PeerConfig};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a join may take before the run fails (the spike saw ~600 ms without the vendor fix).
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
const LABEL: &str = "bench";

/// A direct data channel, reliable or not.
#[derive(Debug)]
pub struct P2p {
    env: Arc<Env>,
    channel: ChannelOptions,
    name: &'static str,
    description: &'static str,
}

impl P2p {
    /// Ordered, reliable channel: messages above one frame are chunked by `peer::framing`.
    pub fn reliable(env: Arc<Env>) -> Self {
        P2p {
            env,
            channel: ChannelOptions::reliable(LABEL),
            name: "p2p-reliable",
            description: "peer::Peer data channel, ordered + reliable (SCTP over DTLS over UDP, loopback)",
        }
    }

    /// Unordered channel with `max_retransmits = 0`: messages may be lost, so loss is reported.
    pub fn unreliable(env: Arc<Env>) -> Self {
        P2p {
            env,
            channel: ChannelOptions::unreliable(LABEL),
            name: "p2p-unreliable",
            description: "peer::Peer data channel, unordered, max_retransmits 0 (loss reported)",
        }
    }

    fn config(&self, room: &str) -> PeerConfig {
        let mut cfg = PeerConfig::new(&self.env.server_url, room);
        cfg.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
        cfg.channels = vec![self.channel.clone()];
        cfg
    }
}

impl Technique for P2p {
    fn name(&self) -> &'static str {
        self.name
    }
    fn description(&self) -> &'static str {
        self.description
    }
    fn setup_means(&self) -> &'static str {
        "second peer's Peer::connect (signaling join) → ChannelOpen on both sides"
    }
    fn max_message(&self) -> Option<usize> {
        // Only ordered reliable channels chunk; elsewhere a binary message must fit one frame (header byte).
        if self.channel.ordered && self.channel.max_retransmits.is_none() && self.channel.max_packet_lifetime_ms.is_none() {
            None
        } else {
            Some(peer::framing::MAX_FRAME - 1)
        }
    }
    fn frames(&self, size: usize) -> usize {
        peer::framing::frame_count(size, false)
    }
    fn lossy(&self) -> bool {
        self.channel.max_retransmits.is_some() || self.channel.max_packet_lifetime_ms.is_some()
    }
    fn fanout_means(&self) -> &'static str {
        "N peer connections, each in a room of its own (`peer` meshes every pair in a room, and N receivers need \
         not talk to each other), the sender writing each message to each channel in turn: the sender's uplink carries N copies"
    }
    fn connect(&self) -> BoxFut<'_, anyhow::Result<Link>> {
        Box::pin(async move {
            let room = self.env.fresh_room(self.name);
            let (a, mut a_ev) = Peer::connect(self.config(&room)).await.context("first peer joins")?;
            let started = Instant::now();
            let (b, mut b_ev) = Peer::connect(self.config(&room)).await.context("second peer joins")?;
            let opened = async {
                let (a_open, b_open) = tokio::join!(wait_open(&mut a_ev), wait_open(&mut b_ev));
                Ok::<_, anyhow::Error>((a_open?, b_open?))
            };
            let (b_id_seen_by_a, a_id_seen_by_b) =
                tokio::time::timeout(JOIN_TIMEOUT, opened).await.context("channel did not open in time")??;
            let setup = started.elapsed();
            debug_assert_eq!(b_id_seen_by_a, b.id());
            debug_assert_eq!(a_id_seen_by_b, a.id());
            let (a, b) = (Arc::new(a), Arc::new(b));
            let close = {
                let (a, b) = (a.clone(), b.clone());
                Box::pin(async move {
                    tokio::join!(close_peer(a), close_peer(b));
                })
            };
            Ok(Link {
                a_tx: Box::new(PeerTx { peer: a.clone(), to: b.id().to_owned() }),
                a_rx: Box::new(PeerRx { events: a_ev }),
                b_tx: Box::new(PeerTx { peer: b.clone(), to: a.id().to_owned() }),
                b_rx: Box::new(PeerRx { events: b_ev }),
                setup,
                close,
            })
        })
    }
}

/// Waits for our channel to open; returns the remote peer's id.
async fn wait_open(events: &mut mpsc::Receiver<Event>) -> anyhow::Result<String> {
    while let Some(ev) = events.recv().await {
        match ev {
            Event::ChannelOpen { peer, label } if label == LABEL => return Ok(peer),
            Event::Error(e) => tracing::warn!(error = %e, "peer error during setup"),
            _ => {}
        }
    }
    bail!("event stream ended before the channel opened")
}

async fn close_peer(p: Arc<Peer>) {
    // The halves are dropped by now; if something still holds a clone, dropping ours ends the actor anyway.
    if let Ok(p) = Arc::try_unwrap(p) {
        p.close().await;
    }
}

struct PeerTx {
    peer: Arc<Peer>,
    to: String,
}

impl MsgTx for PeerTx {
    fn send(&mut self, msg: Bytes) -> BoxFut<'_, anyhow::Result<()>> {
        Box::pin(async move { Ok(self.peer.send(&self.to, LABEL, Payload::Binary(msg)).await?) })
    }
}

struct PeerRx {
    events: mpsc::Receiver<Event>,
}

impl MsgRx for PeerRx {
    fn recv(&mut self) -> BoxFut<'_, Option<Bytes>> {
        Box::pin(async move {
            loop {
                match self.events.recv().await? {
                    Event::Message { payload: Payload::Binary(b), .. } => return Some(b),
                    Event::Message { payload: Payload::Text(t), .. } => return Some(Bytes::from(t)),
                    Event::ChannelClosed { .. } | Event::PeerLeft { .. } => return None,
                    Event::Error(e) => tracing::warn!(error = %e, "peer error"),
                    _ => {}
                }
            }
        })
    }
}
