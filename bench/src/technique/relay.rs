//! Server-relayed push: two signaling clients in a fresh room, each forced onto one transport, exchange
//! `relay` messages through the signaling server (a child process, see `crate::server`).
//!
//! Both ends use the real client, `peer::signaling::connect_with` (cseq numbering, resume, in-order POSTs).
//! A message's bytes travel as a base64 JSON string (`{"type":"relay","to":B,"data":"<base64>"}`): the 4/3
//! expansion, the JSON envelope and the encode/decode are part of what relaying costs.
//!
//! The client's send queue is unbounded and the server closes a session that falls `outbox` (256) messages
//! behind, so each direction keeps at most [`WINDOW`] messages in flight (sent, not yet received at the other
//! end): that is the backpressure an unpaced sender sees here.

use crate::link::{BoxFut, FanLink, Link, MsgRx, MsgTx};
use crate::server::ServerProc;
use crate::technique::{Env, Technique};
use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use peer::signaling::{SignalingEvent, SignalingOptions, SignalingSender, Transport, connect_with};
use protocol::{ClientMessage, ServerMessage};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};

/// Messages in flight per direction (half the server's default outbox of 256).
pub const WINDOW: usize = 128;
/// The first relay after a join, which ends the setup time.
const HELLO: &str = "hello";

/// One forced transport.
#[derive(Debug)]
pub struct Relay {
    env: Arc<Env>,
    server: Arc<ServerProc>,
    transport: Transport,
    interval: Duration,
    name: &'static str,
    description: &'static str,
}

impl Relay {
    /// Every relayed technique, fastest transport first.
    pub fn all(env: &Arc<Env>, server: &Arc<ServerProc>) -> Vec<Relay> {
        let one = |transport, interval_ms, name, description| Relay {
            env: env.clone(),
            server: server.clone(),
            transport,
            interval: Duration::from_millis(interval_ms),
            name,
            description,
        };
        vec![
            one(Transport::Ws, 1000, "relay-ws", "relay through the signaling server, both clients on WebSocket"),
            one(Transport::Sse, 1000, "relay-sse", "relay through the signaling server, SSE stream down + one POST per message up"),
            one(
                Transport::LongPoll,
                1000,
                "relay-longpoll",
                "relay through the signaling server, long polling down + one POST per message up",
            ),
            one(
                Transport::ShortPoll,
                1000,
                "relay-shortpoll-1s",
                "relay through the signaling server, a poll every 1 s (wait_ms=0) down + one POST per message up",
            ),
            one(
                Transport::ShortPoll,
                250,
                "relay-shortpoll-250ms",
                "relay through the signaling server, a poll every 250 ms (wait_ms=0) down + one POST per message up",
            ),
        ]
    }

    fn options(&self) -> SignalingOptions {
        SignalingOptions {
            transports: vec![self.transport],
            short_poll_interval: self.interval,
            ..SignalingOptions::default()
        }
    }

    /// The short-polling interval, if this technique polls on a timer.
    pub fn poll_interval(&self) -> Option<Duration> {
        (self.transport == Transport::ShortPoll).then_some(self.interval)
    }
}

impl Technique for Relay {
    fn name(&self) -> &'static str {
        self.name
    }
    fn description(&self) -> &'static str {
        self.description
    }
    fn setup_means(&self) -> &'static str {
        "second client's connect_with (join) → first relay from the first client, sent when it saw peer-joined, received"
    }
    fn server(&self) -> Option<&ServerProc> {
        Some(&self.server)
    }
    fn poll_interval(&self) -> Option<Duration> {
        Relay::poll_interval(self)
    }
    fn fanout_means(&self) -> &'static str {
        "one room of N + 1 clients; the sender sends each message once, as a relay without `to`, and the server pushes it to all N"
    }
    fn connect_fanout(&self, n: usize) -> BoxFut<'_, anyhow::Result<FanLink>> {
        Box::pin(async move {
            let room = self.env.fresh_room(self.name);
            let url = &self.server.url;
            let (_, a_tx, mut a_ev) = connect_with(url, &room, self.options()).await.context("sender joins")?;
            let started = Instant::now();
            let mut receivers = Vec::with_capacity(n);
            for i in 0..n {
                let (welcome, tx, ev) =
                    connect_with(url, &room, self.options()).await.with_context(|| format!("receiver {i} joins"))?;
                // A receiver's sender must stay alive: dropping a client's last handle makes it leave.
                receivers.push((welcome.peer_id, tx, ev));
            }
            let limit = Duration::from_secs(10 + n as u64 / 2) + self.interval * 4;
            let hello = async {
                let mut joined = std::collections::HashSet::new();
                while joined.len() < n {
                    match a_ev.recv().await {
                        Some(SignalingEvent::Message(ServerMessage::PeerJoined { peer_id })) => {
                            joined.insert(peer_id);
                        }
                        Some(SignalingEvent::Closed { code, .. }) => bail!("signaling closed ({code:?}) during setup"),
                        None => bail!("signaling ended during setup"),
                        _ => {}
                    }
                }
                a_tx.send(ClientMessage::Relay { to: None, data: HELLO.into() }).await?;
                for (_, _, ev) in &mut receivers {
                    wait_for(ev, |m| matches!(m, ServerMessage::Relay { data, .. } if data == HELLO)).await?;
                }
                Ok(())
            };
            tokio::time::timeout(limit, hello).await.context("first relay not delivered to all in time")??;
            let setup = started.elapsed();
            let windows: Vec<Arc<Semaphore>> = (0..n).map(|_| Arc::new(Semaphore::new(WINDOW))).collect();
            let mut rxs: Vec<Box<dyn MsgRx>> = Vec::with_capacity(n);
            let mut keep = Vec::with_capacity(n);
            for ((_, tx, events), window) in receivers.into_iter().zip(&windows) {
                rxs.push(Box::new(RelayRx { events, window: window.clone() }));
                keep.push(tx);
            }
            // The sender's own events must be drained or its client would block once its queue filled.
            let drain = tokio::spawn(async move { while a_ev.recv().await.is_some() {} });
            Ok(FanLink {
                tx: Box::new(RelayTx { tx: a_tx, to: None, windows }),
                rxs,
                setup,
                close: Box::pin(async move {
                    drop(keep);
                    drain.abort();
                }),
            })
        })
    }
    fn connect(&self) -> BoxFut<'_, anyhow::Result<Link>> {
        Box::pin(async move {
            let room = self.env.fresh_room(self.name);
            let url = &self.server.url;
            let (a_welcome, a_tx, mut a_ev) =
                connect_with(url, &room, self.options()).await.context("first client joins")?;
            let started = Instant::now();
            let (b_welcome, b_tx, mut b_ev) =
                connect_with(url, &room, self.options()).await.context("second client joins")?;
            let limit = Duration::from_secs(10) + self.interval * 4;
            let hello = async {
                // A hears of B the way an application would, then greets it; B waits for the greeting.
                wait_for(&mut a_ev, |m| matches!(m, ServerMessage::PeerJoined { peer_id } if *peer_id == b_welcome.peer_id))
                    .await?;
                a_tx.send(ClientMessage::Relay { to: Some(b_welcome.peer_id.clone()), data: HELLO.into() })
                    .await?;
                wait_for(&mut b_ev, |m| matches!(m, ServerMessage::Relay { data, .. } if data == HELLO)).await
            };
            tokio::time::timeout(limit, hello).await.context("first relay not delivered in time")??;
            let setup = started.elapsed();
            let (ab, ba) = (Arc::new(Semaphore::new(WINDOW)), Arc::new(Semaphore::new(WINDOW)));
            Ok(Link {
                a_tx: Box::new(RelayTx { tx: a_tx, to: Some(b_welcome.peer_id.clone()), windows: vec![ab.clone()] }),
                a_rx: Box::new(RelayRx { events: a_ev, window: ba.clone() }),
                b_tx: Box::new(RelayTx { tx: b_tx, to: Some(a_welcome.peer_id.clone()), windows: vec![ba] }),
                b_rx: Box::new(RelayRx { events: b_ev, window: ab }),
                setup,
                // Dropping each half's event receiver makes its client send `leave`.
                close: Box::pin(async {}),
            })
        })
    }
}

async fn wait_for(
    events: &mut mpsc::Receiver<SignalingEvent>,
    want: impl Fn(&ServerMessage) -> bool,
) -> anyhow::Result<()> {
    while let Some(ev) = events.recv().await {
        match ev {
            SignalingEvent::Message(m) if want(&m) => return Ok(()),
            SignalingEvent::Closed { code, .. } => bail!("signaling closed ({code:?}) during setup"),
            _ => {}
        }
    }
    bail!("signaling ended during setup")
}

/// Sends to one peer (`to`), or to the whole room (`to: None`, one message the server fans out); `windows`
/// holds one in-flight window per receiver.
struct RelayTx {
    tx: SignalingSender,
    to: Option<String>,
    windows: Vec<Arc<Semaphore>>,
}

impl MsgTx for RelayTx {
    fn send(&mut self, msg: Bytes) -> BoxFut<'_, anyhow::Result<()>> {
        Box::pin(async move {
            // Each receiving side gives its permit back; the slowest receiver paces the sender.
            for w in &self.windows {
                w.acquire().await.context("window closed")?.forget();
            }
            let data = serde_json::Value::String(B64.encode(&msg));
            Ok(self.tx.send(ClientMessage::Relay { to: self.to.clone(), data }).await?)
        })
    }
}

struct RelayRx {
    events: mpsc::Receiver<SignalingEvent>,
    window: Arc<Semaphore>,
}

impl MsgRx for RelayRx {
    fn recv(&mut self) -> BoxFut<'_, Option<Bytes>> {
        Box::pin(async move {
            loop {
                match self.events.recv().await? {
                    SignalingEvent::Message(ServerMessage::Relay { data: serde_json::Value::String(s), .. }) => {
                        self.window.add_permits(1);
                        match B64.decode(s.as_bytes()) {
                            Ok(b) => return Some(Bytes::from(b)),
                            Err(e) => tracing::warn!(error = %e, "relay that is not base64 ignored"),
                        }
                    }
                    SignalingEvent::Closed { .. } => return None,
                    SignalingEvent::Message(ServerMessage::PeerLeft { .. }) => return None,
                    SignalingEvent::Disconnected { code } => tracing::warn!(?code, "relay client disconnected; resuming"),
                    _ => {}
                }
            }
        })
    }
}
