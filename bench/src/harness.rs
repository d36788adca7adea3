//! The measurements, identical for every technique: setup time over fresh links; on one link per message size,
//! echo RTT, then paced one-way latency, then unpaced throughput; on one 1 → N link, paced latency and
//! throughput again.
//!
//! Phases that share a link tell their messages apart by a tag in the sequence number's top byte, so a
//! straggler of one phase (a lost round trip's late echo) is never counted by the next.

use crate::link::{FanLink, Link, MsgRx, MsgTx};
use crate::server::ServerStats;
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
    /// Messages per second of the paced (latency) workload.
    pub paced_rate: f64,
    /// How long the paced workload sends (s).
    pub paced_secs: f64,
    /// Untimed sending before the throughput window (s).
    pub tput_warmup_s: f64,
    /// The throughput window (s).
    pub tput_secs: f64,
    /// Message sizes in bytes (at least 8: the sequence number).
    pub sizes: Vec<usize>,
    /// Receivers of the 1 → N fan-out rows.
    pub fanout: Vec<usize>,
    /// Message size of the fan-out rows.
    pub fanout_size: usize,
    /// Whole passes over every technique; tables show the median across them.
    pub runs: usize,
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
}

/// One-way latency under a paced load: A sends at a fixed rate, each receiver notes each arrival.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Paced {
    /// Messages per second A was scheduled to send.
    pub rate: f64,
    /// Messages A sent.
    pub sent: u64,
    /// Deliveries expected (sent × receivers) and made.
    pub expected: u64,
    /// Deliveries made.
    pub delivered: u64,
    /// Sends that started 2 ms or more after their scheduled instant (backpressure held the sender).
    pub late_sends: u64,
    /// A's `send` call → arrival, over every delivery, microseconds.
    pub p50_us: f64,
    /// Microseconds.
    pub p90_us: f64,
    /// Microseconds.
    pub p99_us: f64,
    /// Microseconds.
    pub max_us: f64,
    /// Every delivery's latency in µs (for the CDF chart), in no particular order.
    pub samples_us: Vec<f32>,
    /// Server process cost over the phase, for techniques that go through one.
    pub server: Option<ServerCost>,
}

/// What the separate server process spent on a phase (relayed techniques), per delivered message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerCost {
    /// Deliveries over the phase (messages × receivers).
    pub delivered: u64,
    /// Server user + system CPU per delivery (µs; the clock ticks every 10 ms, so short phases are coarse).
    pub cpu_us_per_msg: f64,
    /// Server CPU time / phase wall time.
    pub cpu_cores: f64,
    /// TCP payload bytes the server sent per delivery (pushes, HTTP responses, heartbeats).
    pub bytes_out_per_msg: f64,
    /// TCP payload bytes the server received per delivery (client messages, HTTP requests).
    pub bytes_in_per_msg: f64,
    /// HTTP requests the server routed per delivery (POSTs, polls; a WebSocket counts once, at its upgrade).
    pub requests_per_msg: f64,
}

/// Unpaced throughput of one message size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    /// Payload megabytes (10^6 B) per second received within the window, summed over receivers.
    pub mb_per_s: f64,
    /// Messages per second received within the window, summed over receivers.
    pub msg_per_s: f64,
    /// The window (s).
    pub window_s: f64,
    /// Messages `send` accepted over the whole phase (warm-up + window).
    pub sent: u64,
    /// Deliveries over the whole phase, after draining (sent × receivers when nothing is lost).
    pub received: u64,
    /// From the sender's last `send` returning to the last delivery (ms): what was still in flight.
    pub drain_ms: f64,
    /// 1 − received / (sent × receivers), in percent.
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
    pub server: Option<ServerCost>,
}

/// Phase tags (top byte of a message's sequence number).
const TAG_RTT: u64 = 1 << 56;
const TAG_PACED: u64 = 2 << 56;
const TAG_TPUT: u64 = 3 << 56;
const TAG_MASK: u64 = 0xff << 56;

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

/// Drops every half, then runs the link's close.
pub async fn close(link: Link) {
    let Link { a_tx, a_rx, b_tx, b_rx, close, .. } = link;
    drop((a_tx, a_rx, b_tx, b_rx));
    close.await;
}

/// Drops the sender and receivers, then runs the fan-out's close.
pub async fn close_fan(fan: FanLink) {
    let FanLink { tx, rxs, close, .. } = fan;
    drop((tx, rxs));
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

fn tagged(m: &[u8], tag: u64) -> Option<u64> {
    seq_of(m).filter(|s| s & TAG_MASK == tag).map(|s| s & !TAG_MASK)
}

/// Waits a random part of `interval` (xorshift on `rng`): for a technique that delivers on a poll timer, so
/// round trips do not lock onto the timer's phase, as an application's messages come at any time.
async fn jitter(rng: &mut u64, interval: Duration) {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    tokio::time::sleep(interval.mul_f64((*rng % 1000) as f64 / 1000.0)).await;
}

fn seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
}

async fn server_stats(tech: &dyn Technique) -> Option<(Instant, ServerStats)> {
    match tech.server() {
        Some(s) => s.stats().await.map(|st| (Instant::now(), st)),
        None => None,
    }
}

async fn server_cost(tech: &dyn Technique, before: Option<(Instant, ServerStats)>, delivered: u64) -> Option<ServerCost> {
    let (w0, before) = before?;
    let after = tech.server()?.stats().await?;
    let per = delivered.max(1) as f64;
    let cpu = after.cpu_s - before.cpu_s;
    Some(ServerCost {
        delivered,
        cpu_us_per_msg: cpu * 1e6 / per,
        cpu_cores: cpu / w0.elapsed().as_secs_f64(),
        bytes_out_per_msg: after.tcp_out.saturating_sub(before.tcp_out) as f64 / per,
        bytes_in_per_msg: after.tcp_in.saturating_sub(before.tcp_in) as f64 / per,
        requests_per_msg: after.requests.saturating_sub(before.requests) as f64 / per,
    })
}

/// A sends a message with a sequence number, B echoes it whole, A waits for that number (skipping stale
/// echoes of rounds that timed out). Each round uses a fresh buffer, built before the clock starts.
pub async fn rtt(tech: &dyn Technique, link: &mut Link, size: usize, p: &Params) -> anyhow::Result<Rtt> {
    // B echoes on its own task until told to stop, then hands its halves back for the next phases.
    let (mut b_tx, mut b_rx) = (std::mem::replace(&mut link.b_tx, Box::new(Gone)), std::mem::replace(&mut link.b_rx, Box::new(Gone)));
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let echo = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                m = b_rx.recv() => match m {
                    Some(m) if tagged(&m, TAG_RTT).is_some() => {
                        if b_tx.send(m).await.is_err() {
                            break;
                        }
                    }
                    Some(_) => {}
                    None => break,
                },
            }
        }
        (b_tx, b_rx)
    });
    let timeout = Duration::from_millis(p.rtt_timeout_ms);
    let template = message(size, 0);
    let mut samples = Vec::with_capacity(p.rtt_rounds);
    let mut lost = 0;
    let mut rng = seed();
    let result: anyhow::Result<()> = async {
        for seq in 0..(p.rtt_warmup + p.rtt_rounds) as u64 {
            if let Some(interval) = tech.poll_interval() {
                jitter(&mut rng, interval).await;
            }
            let mut m = BytesMut::from(&template[..]);
            m[..8].copy_from_slice(&(TAG_RTT | seq).to_le_bytes());
            let m = m.freeze();
            let started = Instant::now();
            link.a_tx.send(m).await.context("send")?;
            let deadline = tokio::time::Instant::from_std(started + timeout);
            let answered = loop {
                match tokio::time::timeout_at(deadline, link.a_rx.recv()).await {
                    Ok(Some(echo)) if tagged(&echo, TAG_RTT) == Some(seq) => {
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
            if seq >= p.rtt_warmup as u64 {
                match answered {
                    Some(d) => samples.push(d),
                    None => lost += 1,
                }
            }
        }
        Ok(())
    }
    .await;
    let _ = stop_tx.send(());
    let (b_tx, b_rx) = echo.await.context("echo task")?;
    link.b_tx = b_tx;
    link.b_rx = b_rx;
    result?;
    if !tech.lossy() && lost > 0 {
        tracing::warn!(technique = tech.name(), size, lost, "round trips timed out on a reliable technique");
    }
    let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    if us.is_empty() {
        bail!("no round trip answered ({lost} lost)");
    }
    Ok(Rtt {
        n: us.len(),
        lost,
        p50_us: stats::percentile(&us, 50.0),
        p99_us: stats::percentile(&us, 99.0),
        min_us: us[0],
        max_us: us[us.len() - 1],
    })
}

/// A placeholder half while the real one is lent to a task.
pub struct Gone;

impl MsgTx for Gone {
    fn send(&mut self, _: Bytes) -> crate::link::BoxFut<'_, anyhow::Result<()>> {
        Box::pin(async { bail!("this half is in use by another phase") })
    }
}

impl MsgRx for Gone {
    fn recv(&mut self) -> crate::link::BoxFut<'_, Option<Bytes>> {
        Box::pin(async { None })
    }
}

/// How long receivers wait, after the sender's last message, for what is still in flight.
pub fn drain_limit(tech: &dyn Technique) -> Duration {
    // Lost messages never come, but a reliable transport may stall on a retransmission timeout and still
    // deliver everything; a polled one delivers on its next poll.
    let base = if tech.lossy() { Duration::from_millis(500) } else { Duration::from_secs(10) };
    base + tech.poll_interval().map_or(Duration::ZERO, |i| i * 4)
}

/// A sends `rate` messages per second for `paced_secs` (each at its scheduled instant, or as soon after as its
/// backpressure allows), every receiver notes each arrival. Latency = arrival − the instant A called `send` for
/// that message, so a send that waits for buffer space counts its wait. Not from the scheduled instant: tokio's
/// timer wakes up to ~1 ms late, which would swamp a 20 µs loopback latency. Sends that start ≥ 2 ms after
/// their schedule (held by the previous one's backpressure) are counted as late.
pub async fn paced(
    tech: &dyn Technique,
    tx: &mut Box<dyn MsgTx>,
    rxs: &mut Vec<Box<dyn MsgRx>>,
    size: usize,
    p: &Params,
) -> anyhow::Result<Paced> {
    if rxs.is_empty() {
        bail!("no receivers (lost to an earlier phase that hung)");
    }
    let count = ((p.paced_rate * p.paced_secs).round() as u64).max(1);
    let receivers = rxs.len() as u64;
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = std::mem::take(rxs)
        .into_iter()
        .map(|mut rx| {
            let mut done = done_rx.clone();
            tokio::spawn(async move {
                let mut arrivals: Vec<(u64, Instant)> = Vec::with_capacity(count as usize);
                while (arrivals.len() as u64) < count {
                    tokio::select! {
                        m = rx.recv() => match m {
                            Some(m) => {
                                let now = Instant::now();
                                if let Some(seq) = tagged(&m, TAG_PACED) {
                                    arrivals.push((seq, now));
                                }
                            }
                            None => break,
                        },
                        r = done.changed() => {
                            if r.is_err() || *done.borrow() {
                                break;
                            }
                        }
                    }
                }
                (rx, arrivals)
            })
        })
        .collect();
    let before = server_stats(tech).await;
    let template = message(size, 0);
    let period = Duration::from_secs_f64(1.0 / p.paced_rate);
    // The first message goes out a little after the start, so the schedule does not begin already late.
    let t0 = Instant::now() + Duration::from_millis(5);
    let mut late = 0;
    let mut sent = 0;
    let mut send_at: Vec<Instant> = Vec::with_capacity(count as usize);
    let send_result: anyhow::Result<()> = async {
        for i in 0..count {
            let at = t0 + period * i as u32;
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            let mut m = BytesMut::from(&template[..]);
            m[..8].copy_from_slice(&(TAG_PACED | i).to_le_bytes());
            let m = m.freeze();
            let now = Instant::now();
            if now.saturating_duration_since(at) >= Duration::from_millis(2) {
                late += 1;
            }
            send_at.push(now);
            tx.send(m).await.context("send")?;
            sent += 1;
        }
        Ok(())
    }
    .await;
    // Every receiver has everything, or the drain limit passed.
    let deadline = tokio::time::Instant::now() + drain_limit(tech);
    let mut results = Vec::with_capacity(tasks.len());
    for mut task in tasks {
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(r) => results.push(r.context("receiver task")?),
            Err(_) => {
                let _ = done_tx.send(true);
                results.push(task.await.context("receiver task")?);
            }
        }
    }
    let _ = done_tx.send(true);
    let mut delivered = 0u64;
    let mut lat: Vec<f64> = Vec::new();
    for (rx, arrivals) in results {
        rxs.push(rx);
        delivered += arrivals.len() as u64;
        for (seq, at) in arrivals {
            if let Some(sent_at) = send_at.get(seq as usize) {
                lat.push(at.saturating_duration_since(*sent_at).as_secs_f64() * 1e6);
            }
        }
    }
    let server = server_cost(tech, before, delivered).await;
    send_result?;
    let expected = sent * receivers;
    if !tech.lossy() && delivered != expected {
        bail!("reliable technique delivered {delivered} of {expected} paced messages");
    }
    lat.sort_by(f64::total_cmp);
    if lat.is_empty() {
        bail!("no paced message arrived ({sent} sent)");
    }
    Ok(Paced {
        rate: p.paced_rate,
        sent,
        expected,
        delivered,
        late_sends: late,
        p50_us: stats::percentile(&lat, 50.0),
        p90_us: stats::percentile(&lat, 90.0),
        p99_us: stats::percentile(&lat, 99.0),
        max_us: lat[lat.len() - 1],
        samples_us: lat.iter().map(|&v| v as f32).collect(),
        server,
    })
}

/// A sends the same message as fast as `send` returns (its backpressure is the only pacing) for the warm-up
/// plus the window; every receiver counts what arrives. Rates count payload received inside the window, by the
/// receivers' clock, summed over receivers.
pub async fn throughput(
    tech: &dyn Technique,
    tx: &mut Box<dyn MsgTx>,
    rxs: &mut Vec<Box<dyn MsgRx>>,
    size: usize,
    p: &Params,
) -> anyhow::Result<Throughput> {
    if rxs.is_empty() {
        bail!("no receivers (lost to an earlier phase that hung)");
    }
    let drain_idle = drain_limit(tech);
    let msg = message(size, TAG_TPUT);
    let started = Instant::now();
    let t0 = started + Duration::from_secs_f64(p.tput_warmup_s);
    let t1 = t0 + Duration::from_secs_f64(p.tput_secs);
    let sent = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let udp_before = sys::udp_rcvbuf_errors();
    let before = server_stats(tech).await;
    let receivers: Vec<_> = std::mem::take(rxs)
        .into_iter()
        .map(|mut rx| {
            let sent = sent.clone();
            let mut done = done_rx.clone();
            tokio::spawn(async move {
                let (mut received, mut win_bytes, mut win_msgs) = (0u64, 0u64, 0u64);
                let mut last = Instant::now();
                loop {
                    if *done.borrow() && received >= sent.load(Ordering::Acquire) {
                        break;
                    }
                    tokio::select! {
                        m = rx.recv() => match m {
                            Some(m) => {
                                if tagged(&m, TAG_TPUT).is_none() {
                                    continue;
                                }
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
                        _ = done.changed() => {}
                        _ = tokio::time::sleep(drain_idle) => {
                            if *done.borrow() {
                                break;
                            }
                        }
                    }
                }
                (received, win_bytes, win_msgs, last, rx)
            })
        })
        .collect();
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
            tx.send(msg.clone()).await.context("send")?;
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
    let n = receivers.len() as u64;
    let (mut received, mut win_bytes, mut win_msgs, mut last, mut all_got_all) = (0, 0, 0, sender_done, true);
    for r in receivers {
        let (got, wb, wm, l, rx) = r.await.context("receiver task")?;
        all_got_all &= got == sent.load(Ordering::Acquire);
        received += got;
        win_bytes += wb;
        win_msgs += wm;
        last = last.max(l);
        rxs.push(rx);
    }
    let udp_after = sys::udp_rcvbuf_errors();
    let server = server_cost(tech, before, received).await;
    send_result?;
    let sent = sent.load(Ordering::Acquire);
    let window = p.tput_secs;
    let cpu_cores = match (cpu_t0, cpu_t1) {
        (Some((w0, Some(c0))), Some((w1, Some(c1)))) if w1 > w0 => Some((c1 - c0) / (w1 - w0).as_secs_f64()),
        _ => None,
    };
    if !tech.lossy() && !all_got_all {
        bail!(
            "reliable technique delivered {received} of {} messages ({drain_idle:?} without any after the last)",
            sent * n
        );
    }
    let expected = sent * n;
    Ok(Throughput {
        mb_per_s: win_bytes as f64 / window / 1e6,
        msg_per_s: win_msgs as f64 / window,
        window_s: window,
        sent,
        received,
        send_stalled_pct: 100.0 * stalled.as_secs_f64() / sending.as_secs_f64(),
        send_max_ms: longest.as_secs_f64() * 1e3,
        drain_ms: last.saturating_duration_since(sender_done).as_secs_f64() * 1e3,
        loss_pct: if expected == 0 { 0.0 } else { 100.0 * (1.0 - received as f64 / expected as f64) },
        cpu_cores,
        udp_rcvbuf_errors: match (udp_before, udp_after) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        server,
    })
}
