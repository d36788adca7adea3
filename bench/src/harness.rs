//! The measurements, identical for every technique: setup time over fresh links, echo RTT, one-way throughput.

use crate::link::Link;
use crate::stats::{self, Spread};
use crate::sys;
use crate::technique::Technique;
use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How much to measure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    /// Fresh links (rooms) for the setup time.
    pub joins: usize,
    /// Untimed round trips first.
    pub rtt_warmup: usize,
    /// Timed round trips.
    pub rtt_rounds: usize,
    /// A round trip not answered within this is counted lost (ms).
    pub rtt_timeout_ms: u64,
    /// Untimed sending before the throughput window (s).
    pub tput_warmup_s: f64,
    /// The throughput window (s).
    pub tput_secs: f64,
    /// Message sizes in bytes (at least 8: the sequence number).
    pub sizes: Vec<usize>,
}

/// Echo round trips of one message size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rtt {
    /// Timed rounds answered.
    pub n: usize,
    /// Rounds that timed out (lost message or echo).
    pub lost: usize,
    /// Microseconds.
    pub p50_us: f64,
    /// Microseconds.
    pub p99_us: f64,
    /// Microseconds.
    pub min_us: f64,
    /// Microseconds.
    pub max_us: f64,
    /// One way, A's send → B's receive (same monotonic clock, both ends in this process), microseconds.
    #[serde(default)]
    pub one_way_p50_us: Option<f64>,
    /// Microseconds.
    #[serde(default)]
    pub one_way_p99_us: Option<f64>,
}

/// What the separate server process spent on a throughput phase (relayed techniques), per delivered message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerCost {
    /// Messages B received over the phase.
    pub delivered: u64,
    /// Server user + system CPU per delivered message (µs; the clock ticks every 10 ms, so short phases are coarse).
    pub cpu_us_per_msg: f64,
    /// Server CPU time / phase wall time.
    pub cpu_cores: f64,
    /// TCP payload bytes the server sent per delivered message (pushes, HTTP responses, heartbeats).
    pub bytes_out_per_msg: f64,
    /// TCP payload bytes the server received per delivered message (client messages, HTTP requests).
    #[serde(default)]
    pub bytes_in_per_msg: f64,
    /// HTTP requests the server routed per delivered message (POSTs, polls; a WebSocket counts once).
    pub requests_per_msg: f64,
}

/// One-way throughput of one message size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    /// Payload megabytes (10^6 B) per second received within the window.
    pub mb_per_s: f64,
    /// Messages per second received within the window.
    pub msg_per_s: f64,
    /// The window (s).
    pub window_s: f64,
    /// Messages `send` accepted over the whole phase (warm-up + window).
    pub sent: u64,
    /// Messages received over the whole phase, after draining.
    pub received: u64,
    /// From the sender's last `send` returning to the last message received (ms): what was still in flight.
    pub drain_ms: f64,
    /// 1 − received / sent, in percent.
    pub loss_pct: f64,
    /// Share of the sending phase spent inside `send` calls that took 1 ms or more (waiting for buffer space), %.
    pub send_stalled_pct: f64,
    /// The longest single `send` call (ms).
    pub send_max_ms: f64,
    /// Process CPU time during the window divided by the window: cores busy (both ends are in this process).
    pub cpu_cores: Option<f64>,
    /// Change in `Udp: RcvbufErrors` (/proc/net/snmp) over the phase: datagrams the kernel dropped.
    pub udp_rcvbuf_errors: Option<u64>,
    /// Server process cost, for techniques that go through one.
    #[serde(default)]
    pub server: Option<ServerCost>,
}

/// Connects `joins` fresh links and closes each; returns the setup times (ms).
pub async fn setup(tech: &dyn Technique, p: &Params) -> anyhow::Result<Spread> {
    let mut samples = Vec::with_capacity(p.joins);
    for _ in 0..p.joins {
        let link = tech.connect().await?;
        samples.push(link.setup);
        close(link).await;
    }
    Spread::of(&samples, 1e3).context("no joins measured")
}

async fn close(link: Link) {
    let Link { a_tx, a_rx, b_tx, b_rx, close, .. } = link;
    drop((a_tx, a_rx, b_tx, b_rx));
    close.await;
}

fn message(size: usize, seq: u64) -> Bytes {
    let mut m = BytesMut::zeroed(size);
    m[..8].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in m[8..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    m.freeze()
}

fn seq_of(m: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(m.get(..8)?.try_into().ok()?))
}

/// A sends a message with a sequence number, B echoes it whole, A waits for that number (skipping stale
/// echoes of rounds that timed out). Each round uses a fresh buffer, built before the clock starts. B notes
/// when each message reached it, which gives the one-way latency on the same clock.
pub async fn rtt(tech: &dyn Technique, size: usize, p: &Params) -> anyhow::Result<Rtt> {
    let Link { mut a_tx, mut a_rx, mut b_tx, mut b_rx, close, .. } = tech.connect().await?;
    // B notes when each message arrived, on the same clock as A's send.
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<(Option<u64>, Instant)>();
    let echo = tokio::spawn(async move {
        while let Some(m) = b_rx.recv().await {
            let _ = arrived_tx.send((seq_of(&m), Instant::now()));
            if b_tx.send(m).await.is_err() {
                break;
            }
        }
    });
    let timeout = Duration::from_millis(p.rtt_timeout_ms);
    let template = message(size, 0);
    let mut samples = Vec::with_capacity(p.rtt_rounds);
    let mut one_way = Vec::with_capacity(p.rtt_rounds);
    let mut lost = 0;
    let result: anyhow::Result<()> = async {
        // A technique that delivers on a poll timer would otherwise lock its echoes to the timer's phase: wait a
        // random part of an interval before each round, as an application's messages come at any time.
        let mut rng = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
        for seq in 0..(p.rtt_warmup + p.rtt_rounds) as u64 {
            if let Some(interval) = tech.poll_interval() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                tokio::time::sleep(interval.mul_f64((rng % 1000) as f64 / 1000.0)).await;
            }
            let mut m = BytesMut::from(&template[..]);
            m[..8].copy_from_slice(&seq.to_le_bytes());
            let m = m.freeze();
            let started = Instant::now();
            a_tx.send(m).await.context("send")?;
            let deadline = tokio::time::Instant::from_std(started + timeout);
            let answered = loop {
                match tokio::time::timeout_at(deadline, a_rx.recv()).await {
                    Ok(Some(echo)) if seq_of(&echo) == Some(seq) => {
                        if echo.len() != size {
                            bail!("echo of {} bytes, sent {size}", echo.len());
                        }
                        break Some(started.elapsed());
                    }
                    Ok(Some(_stale)) => continue,
                    Ok(None) => bail!("link closed during the RTT phase"),
                    Err(_) => break None,
                }
            };
            let mut reached_b = None;
            while let Ok((s, at)) = arrived.try_recv() {
                if s == Some(seq) {
                    reached_b = Some(at.saturating_duration_since(started));
                }
            }
            if seq >= p.rtt_warmup as u64 {
                match answered {
                    Some(d) => {
                        samples.push(d);
                        one_way.extend(reached_b);
                    }
                    None => lost += 1,
                }
            }
        }
        Ok(())
    }
    .await;
    echo.abort();
    let _ = echo.await;
    drop((a_tx, a_rx));
    close.await;
    result?;
    if !tech.lossy() && lost > 0 {
        tracing::warn!(technique = tech.name(), size, lost, "round trips timed out on a reliable technique");
    }
    let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    if us.is_empty() {
        bail!("no round trip answered ({lost} lost)");
    }
    let mut ow: Vec<f64> = one_way.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    ow.sort_by(f64::total_cmp);
    Ok(Rtt {
        n: us.len(),
        lost,
        p50_us: stats::percentile(&us, 50.0),
        p99_us: stats::percentile(&us, 99.0),
        min_us: us[0],
        max_us: us[us.len() - 1],
        one_way_p50_us: (!ow.is_empty()).then(|| stats::percentile(&ow, 50.0)),
        one_way_p99_us: (!ow.is_empty()).then(|| stats::percentile(&ow, 99.0)),
    })
}

/// A sends the same message as fast as `send` returns (its backpressure is the only pacing) for the warm-up
/// plus the window; B counts what arrives. Rates count payload received inside the window, by B's clock.
pub async fn throughput(tech: &dyn Technique, size: usize, p: &Params) -> anyhow::Result<Throughput> {
    let Link { mut a_tx, a_rx, b_tx, mut b_rx, close, .. } = tech.connect().await?;
    // Silence after the sender stops before the receiver gives up on the rest: lost messages never come, but a
    // reliable transport may stall on a retransmission timeout and still deliver everything.
    let drain_idle = if tech.lossy() { Duration::from_millis(500) } else { Duration::from_secs(10) };
    let msg = message(size, 0);
    let started = Instant::now();
    let t0 = started + Duration::from_secs_f64(p.tput_warmup_s);
    let t1 = t0 + Duration::from_secs_f64(p.tput_secs);
    let sent = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let udp_before = sys::udp_rcvbuf_errors();
    let server_before = match tech.server() {
        Some(s) => s.stats().await.map(|st| (Instant::now(), st)),
        None => None,
    };
    let receiver = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let (mut received, mut win_bytes, mut win_msgs) = (0u64, 0u64, 0u64);
            let mut last = Instant::now();
            loop {
                if *done_rx.borrow() && received >= sent.load(Ordering::Acquire) {
                    break;
                }
                tokio::select! {
                    m = b_rx.recv() => match m {
                        Some(m) => {
                            let now = Instant::now();
                            last = now;
                            received += 1;
                            if now >= t0 && now < t1 {
                                win_bytes += m.len() as u64;
                                win_msgs += 1;
                            }
                        }
                        None => break,
                    },
                    _ = done_rx.changed() => {}
                    _ = tokio::time::sleep(drain_idle) => {
                        if *done_rx.borrow() {
                            break;
                        }
                    }
                }
            }
            (received, win_bytes, win_msgs, last, b_rx)
        })
    };
    let mut cpu_t0 = None;
    let mut cpu_t1 = None;
    let (mut stalled, mut longest) = (Duration::ZERO, Duration::ZERO);
    let send_result: anyhow::Result<()> = async {
        loop {
            let now = Instant::now();
            if now >= t0 && cpu_t0.is_none() {
                cpu_t0 = Some((now, sys::process_cpu_secs()));
            }
            if now >= t1 {
                cpu_t1 = Some((now, sys::process_cpu_secs()));
                break;
            }
            a_tx.send(msg.clone()).await.context("send")?;
            sent.fetch_add(1, Ordering::Release);
            let took = now.elapsed();
            longest = longest.max(took);
            if took >= Duration::from_millis(1) {
                stalled += took;
            }
        }
        Ok(())
    }
    .await;
    let sender_done = Instant::now();
    let sending = sender_done - started;
    let _ = done_tx.send(true);
    let (received, win_bytes, win_msgs, last, b_rx) = receiver.await.context("receiver task")?;
    let udp_after = sys::udp_rcvbuf_errors();
    let server = match (tech.server(), server_before) {
        (Some(s), Some((w0, before))) => s.stats().await.map(|after| {
            let delivered = received.max(1) as f64;
            let cpu = after.cpu_s - before.cpu_s;
            ServerCost {
                delivered: received,
                cpu_us_per_msg: cpu * 1e6 / delivered,
                cpu_cores: cpu / w0.elapsed().as_secs_f64(),
                bytes_out_per_msg: after.tcp_out.saturating_sub(before.tcp_out) as f64 / delivered,
                bytes_in_per_msg: after.tcp_in.saturating_sub(before.tcp_in) as f64 / delivered,
                requests_per_msg: after.requests.saturating_sub(before.requests) as f64 / delivered,
            }
        }),
        _ => None,
    };
    drop((a_tx, a_rx, b_tx, b_rx));
    close.await;
    send_result?;
    let sent = sent.load(Ordering::Acquire);
    let window = p.tput_secs;
    let cpu_cores = match (cpu_t0, cpu_t1) {
        (Some((w0, Some(c0))), Some((w1, Some(c1)))) if w1 > w0 => Some((c1 - c0) / (w1 - w0).as_secs_f64()),
        _ => None,
    };
    if !tech.lossy() && received != sent {
        bail!("reliable technique delivered {received} of {sent} messages ({drain_idle:?} without any after the last)");
    }
    Ok(Throughput {
        mb_per_s: win_bytes as f64 / window / 1e6,
        msg_per_s: win_msgs as f64 / window,
        window_s: window,
        sent,
        received,
        send_stalled_pct: 100.0 * stalled.as_secs_f64() / sending.as_secs_f64(),
        send_max_ms: longest.as_secs_f64() * 1e3,
        drain_ms: last.saturating_duration_since(sender_done).as_secs_f64() * 1e3,
        loss_pct: if sent == 0 { 0.0 } else { 100.0 * (1.0 - received as f64 / sent as f64) },
        cpu_cores,
        udp_rcvbuf_errors: match (udp_before, udp_after) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        server,
    })
}
