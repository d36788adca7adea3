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

/// A receiver read and discarded on a task of its own, as an application reads every event it is sent: a
/// half nobody reads can stall its link (a signaling client whose event queue is full stops sending).
pub struct Drain {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Box<dyn MsgRx>>,
}

impl Drain {
    /// Starts reading `rx`.
    pub fn start(mut rx: Box<dyn MsgRx>) -> Drain {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    m = rx.recv() => if m.is_none() { break },
                }
            }
            rx
        });
        Drain { stop, task }
    }

    /// Stops reading and gives the receiver back (`None` if its task panicked).
    pub async fn finish(self) -> Option<Box<dyn MsgRx>> {
        let _ = self.stop.send(());
        self.task.await.ok()
    }
}

/// One sender and N receivers (1 → N fan-out): every message `tx` accepts reaches each receiver once.
pub struct FanLink {
    /// The sender. A technique that cannot multicast sends one copy per receiver inside `send`.
    pub tx: Box<dyn MsgTx>,
    /// The N receivers.
    pub rxs: Vec<Box<dyn MsgRx>>,
    /// From the first receiver's connect until all N were usable.
    pub setup: Duration,
    /// Releases whatever the link holds; run after `tx` and `rxs` have been dropped.
    pub close: BoxFut<'static, ()>,
}

/// Sends each message to every one of several 1 → 1 links in turn: how a sender without a multicast path
/// (a raw TCP server, a WebRTC peer with N connections) fans out.
pub struct EachTx(pub Vec<Box<dyn MsgTx>>);

impl MsgTx for EachTx {
    fn send(&mut self, msg: Bytes) -> BoxFut<'_, anyhow::Result<()>> {
        Box::pin(async move {
            for tx in &mut self.0 {
                tx.send(msg.clone()).await?;
            }
            Ok(())
        })
    }
}

/// A fan-out made of `n` 1 → 1 links of `connect`, connected one after the other; the unused halves (the
/// receivers' senders, the sender's receivers, the latter drained) stay alive until `close`.
pub async fn fan_of_links<F>(n: usize, mut connect: impl FnMut() -> F) -> anyhow::Result<FanLink>
where
    F: Future<Output = anyhow::Result<Link>>,
{
    let started = std::time::Instant::now();
    let (mut txs, mut rxs, mut keep, mut closes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let link = match connect().await {
            Ok(l) => l,
            Err(e) => {
                // Release what was built before failing.
                drop((txs, rxs, keep));
                for c in closes {
                    c.await;
                }
                return Err(e);
            }
        };
        txs.push(link.a_tx);
        rxs.push(link.b_rx);
        keep.push((Drain::start(link.a_rx), link.b_tx));
        closes.push(link.close);
    }
    let setup = started.elapsed();
    Ok(FanLink {
        tx: Box::new(EachTx(txs)),
        rxs,
        setup,
        close: Box::pin(async move {
            for (drain, b_tx) in keep {
                drop((drain.finish().await, b_tx));
            }
            for c in closes {
                c.await;
            }
        }),
    })
}
