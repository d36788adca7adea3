//! Signaling that survives what real networks do, with native clients and the real `signaling` binary:
//! WebSockets blocked (SSE + POST, long polling), connections cut mid-exchange (resume: nothing lost,
//! duplicated or reordered), a server killed and restarted (P2P keeps flowing; clients come back by
//! themselves), a frozen peer (announced as left within the heartbeat limits).
//!
//! Run inside a loopback-only network namespace (see `docs/testing.md`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use e2e::{SignalingServer, require_loopback_only_network};
use peer::signaling::{self, SignalingEvent, SignalingOptions, Transport};
use peer::{Event, Payload, Peer, PeerConfig};
use protocol::{ClientMessage, IceCandidateInit, LeaveReason, ServerMessage, SignalData};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

fn config(server: &str, room: &str, transports: &[Transport]) -> PeerConfig {
    let mut cfg = PeerConfig::new(server, room);
    cfg.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    cfg.signaling.transports = transports.to_vec();
    cfg
}

/// Waits for the first event `pick` accepts, failing after `limit`.
async fn next_event<T>(events: &mut mpsc::Receiver<Event>, what: &str, limit: Duration, mut pick: impl FnMut(&Event) -> Option<T>) -> Result<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .with_context(|| format!("timed out after {limit:?} waiting for {what}"))?
            .with_context(|| format!("event stream ended while waiting for {what}"))?;
        if let Some(v) = pick(&ev) {
            return Ok(v);
        }
    }
}

async fn channel_open(events: &mut mpsc::Receiver<Event>, limit: Duration) -> Result<String> {
    next_event(events, "a channel to open", limit, |e| match e {
        Event::ChannelOpen { peer, .. } => Some(peer.clone()),
        _ => None,
    })
    .await
}

async fn message(events: &mut mpsc::Receiver<Event>) -> Result<Payload> {
    next_event(events, "a message", WAIT, |e| match e {
        Event::Message { payload, .. } => Some(payload.clone()),
        _ => None,
    })
    .await
}

/// Two native peers connect their data channel with the server offering only `server_transports`, and say
/// which signaling transport they ended up on.
async fn pair_over(server_transports: &str, expect: Transport) -> Result<()> {
    let server = SignalingServer::start(&["--transports", server_transports])?;
    // Default client options: WebSocket first, then SSE, then long polling.
    let all = SignalingOptions::default().transports;
    let (a, mut a_ev) = Peer::connect(config(server.url(), "fallback", &all)).await?;
    let (b, mut b_ev) = Peer::connect(config(server.url(), "fallback", &all)).await?;
    ensure!(a.transport() == expect && b.transport() == expect, "on {} and {}, expected {expect}", a.transport(), b.transport());
    ensure!(channel_open(&mut a_ev, WAIT).await? == b.id());
    ensure!(channel_open(&mut b_ev, WAIT).await? == a.id());
    a.send(&b.id(), "chat", Payload::Text("over the data channel".into())).await?;
    ensure!(message(&mut b_ev).await? == Payload::Text("over the data channel".into()));
    b.send(&a.id(), "chat", Payload::Binary(vec![7u8; 200_000].into())).await?;
    ensure!(message(&mut a_ev).await? == Payload::Binary(vec![7u8; 200_000].into()));
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_peers_connect_through_sse_when_websockets_are_blocked() -> Result<()> {
    require_loopback_only_network()?;
    pair_over("sse,longpoll", Transport::Sse).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_peers_connect_through_long_polling_when_only_that_is_left() -> Result<()> {
    require_loopback_only_network()?;
    pair_over("longpoll", Transport::LongPoll).await
}

/// A TCP proxy whose connections the test can cut at any moment: the network drop in the middle of an exchange.
struct CutProxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let list = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                list.lock().unwrap_or_else(|p| p.into_inner()).push(task);
            }
        });
        Ok(CutProxy { addr, conns, accept })
    }

    /// Drops every open connection, both ways, whatever is in flight.
    fn cut(&self) -> usize {
        let mut list = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let n = list.iter().filter(|t| !t.is_finished()).count();
        for t in list.drain(..) {
            t.abort();
        }
        n
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

fn numbered(i: usize) -> SignalData {
    SignalData::Candidate {
        candidate: IceCandidateInit {
            candidate: format!("candidate:{i} 1 udp 1 127.0.0.1 {} typ host", 10_000 + i),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        },
    }
}

fn number_of(data: &SignalData) -> Option<usize> {
    match data {
        SignalData::Candidate { candidate } => candidate.candidate.strip_prefix("candidate:")?.split(' ').next()?.parse().ok(),
        _ => None,
    }
}

/// What one side of a scripted exchange saw.
#[derive(Debug, Default)]
struct Seen {
    numbers: Vec<usize>,
    resumed: usize,
    new_sessions: usize,
}

/// Receives until `n` numbered signals arrived (or the deadline passes). Hands the receiver back: dropping it
/// would leave the room while the other side may still be sending.
async fn collect(mut rx: mpsc::Receiver<SignalingEvent>, n: usize) -> (Seen, mpsc::Receiver<SignalingEvent>) {
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.numbers.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(SignalingEvent::Message(ServerMessage::Signal { data, .. }))) => {
                seen.numbers.extend(number_of(&data));
            }
            Ok(Some(SignalingEvent::Reconnected { resumed: true, .. })) => seen.resumed += 1,
            Ok(Some(SignalingEvent::NewSession(_))) => seen.new_sessions += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    (seen, rx)
}

/// The property behind every other test here: a connection cut in the middle of an exchange resumes and the
/// exchange completes with every signal delivered once, in order — over 100 runs on all three transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_resume_with_nothing_lost_duplicated_or_reordered() -> Result<()> {
    require_loopback_only_network()?;
    // 200 joins and ~100 resumes from one address in seconds is exactly what the per-address join limit refuses
    // (120 a minute by default); this test is about resume, so it lifts that limit.
    let server = SignalingServer::start(&[
        "--heartbeat-interval-ms",
        "2000",
        "--heartbeat-timeout-ms",
        "1000",
        "--join-rate-per-ip-per-min",
        "100000",
    ])?;
    let upstream: SocketAddr = server.url().trim_start_matches("http://").parse()?;
    let proxy = CutProxy::start(upstream).await?;
    const RUNS: usize = 100;
    const N: usize = 40;
    // For chasing a failure: TEST_LOG=peer=debug shows the clients' reconnects, CUT_TRANSPORT=sse runs one
    // transport only (the server's log is in target/e2e-artifacts; RUST_LOG=signaling=debug makes it verbose).
    let log_filter = std::env::var("TEST_LOG").unwrap_or_else(|_| "off".into());
    let _ = tracing_subscriber::fmt().with_env_filter(log_filter).with_test_writer().try_init();
    let transports: Vec<Transport> = match std::env::var("CUT_TRANSPORT") {
        Ok(t) => vec![t.parse()?],
        Err(_) => vec![Transport::Ws, Transport::Sse, Transport::LongPoll],
    };
    let (mut cuts, mut resumes) = (0, 0);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let started = Instant::now();
    for run in 0..RUNS {
        let t = transports[run % transports.len()];
        let opts = SignalingOptions { transports: vec![t], ..SignalingOptions::default() };
        let room = format!("cut-{run}");
        let (wa, sa, ra) = signaling::connect_with(&proxy.url(), &room, opts.clone()).await?;
        let (wb, sb, rb) = signaling::connect_with(&proxy.url(), &room, opts).await?;
        let (ida, idb) = (wa.peer_id.clone(), wb.peer_id.clone());
        let got_a = tokio::spawn(collect(ra, N));
        let got_b = tokio::spawn(collect(rb, N));
        // Both sides send N signals, yielding between them, while the connections are cut once or twice at
        // pseudo-random moments: mid-send, mid-delivery, mid-resume.
        let send = |s: signaling::SignalingSender, to: String| async move {
            for i in 0..N {
                s.send(ClientMessage::Signal { to: to.clone(), data: numbered(i) }).await?;
                if i % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            anyhow::Ok(())
        };
        let senders = tokio::spawn(async move { tokio::try_join!(send(sa, idb), send(sb, ida)) });
        for _ in 0..(1 + run % 2) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            tokio::time::sleep(Duration::from_micros(rng % 15_000)).await;
            cuts += proxy.cut();
        }
        senders.await??;
        let ((a, _ra), (b, _rb)) = (got_a.await?, got_b.await?);
        for (side, seen) in [("a", &a), ("b", &b)] {
            let expected: Vec<usize> = (0..N).collect();
            ensure!(
                seen.numbers == expected,
                "run {run} over {t}: {side} received {:?} (expected 0..{N} once each, in order)",
                seen.numbers
            );
            ensure!(seen.new_sessions == 0, "run {run} over {t}: {side} lost its session instead of resuming");
            resumes += seen.resumed;
        }
    }
    eprintln!(
        "{RUNS} runs, {N} signals each way per run: {cuts} connections cut, {resumes} resumes, 0 lost, 0 duplicated, \
         0 reordered, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The cuts must have hit live connections and forced resumes, or this test proved nothing.
    ensure!(resumes >= RUNS / 2, "only {resumes} resumes in {RUNS} runs: the cuts missed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_outlives_a_killed_server_and_clients_come_back_by_themselves() -> Result<()> {
    require_loopback_only_network()?;
    let server = SignalingServer::start(&[])?;
    let listen = format!("127.0.0.1:{}", server.port()?);
    let all = SignalingOptions::default().transports;
    let (a, mut a_ev) = Peer::connect(config(server.url(), "restart", &all)).await?;
    let (b, mut b_ev) = Peer::connect(config(server.url(), "restart", &all)).await?;
    let (old_a, old_b) = (a.id(), b.id());
    channel_open(&mut a_ev, WAIT).await?;
    channel_open(&mut b_ev, WAIT).await?;

    drop(server); // SIGKILL: no close frames, no goodbye
    next_event(&mut a_ev, "a to notice the server is gone", WAIT, |e| {
        matches!(e, Event::SignalingDisconnected { .. }).then_some(())
    })
    .await?;
    // The data channel does not need the server.
    for i in 0..20 {
        a.send(&old_b, "chat", Payload::Text(format!("p2p {i}"))).await?;
    }
    for i in 0..20 {
        ensure!(message(&mut b_ev).await? == Payload::Text(format!("p2p {i}")), "message {i} over the data channel");
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted_at = Instant::now();
    let _server = SignalingServer::start_at(&listen, &[])?;
    // The new server knows nothing of the old sessions: both come back as new sessions, by themselves, within
    // the backoff cap (20 s) plus a connect, and renegotiate under their new ids.
    let cap = Duration::from_secs(25);
    let new_a = next_event(&mut a_ev, "a's new session", cap, |e| match e {
        Event::NewSession { id } => Some(id.clone()),
        _ => None,
    })
    .await?;
    let new_b = next_event(&mut b_ev, "b's new session", cap, |e| match e {
        Event::NewSession { id } => Some(id.clone()),
        _ => None,
    })
    .await?;
    let back = restarted_at.elapsed();
    ensure!(new_a != old_a && new_b != old_b, "new sessions have new ids");
    ensure!(channel_open(&mut a_ev, WAIT).await? == new_b);
    ensure!(channel_open(&mut b_ev, WAIT).await? == new_a);
    eprintln!("both clients back {:.2} s after the restart (backoff cap 20 s)", back.as_secs_f64());
    a.send(&new_b, "chat", Payload::Text("after the restart".into())).await?;
    ensure!(message(&mut b_ev).await? == Payload::Text("after the restart".into()));
    a.close().await;
    b.close().await;
    Ok(())
}

/// `target/debug/peer`, next to the test executable's profile directory.
fn peer_binary() -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().and_then(|d| d.parent()).context("target/<profile>/deps")?.join("peer");
    if !bin.is_file() {
        bail!("{} does not exist: run `cargo build -p peer` first", bin.display());
    }
    Ok(bin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_is_announced_as_left_within_interval_plus_timeout() -> Result<()> {
    require_loopback_only_network()?;
    let (interval, timeout) = (1000u64, 500u64);
    let server = SignalingServer::start(&[
        "--heartbeat-interval-ms",
        &interval.to_string(),
        "--heartbeat-timeout-ms",
        &timeout.to_string(),
    ])?;
    let (a, mut a_ev) = Peer::connect(config(server.url(), "frozen", &[Transport::Ws])).await?;
    let mut child = std::process::Command::new(peer_binary()?)
        .args(["--server", server.url(), "--room", "frozen", "--bind", "127.0.0.1", "chat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let frozen = next_event(&mut a_ev, "the CLI peer to join", WAIT, |e| match e {
        Event::PeerJoined(p) => Some(p.clone()),
        _ => None,
    })
    .await?;
    channel_open(&mut a_ev, WAIT).await?;
    let pid = child.id() as libc::pid_t;
    // SIGSTOP: the process is still there, its sockets open, but it answers nothing.
    ensure!(unsafe { libc::kill(pid, libc::SIGSTOP) } == 0, "SIGSTOP");
    let stopped = Instant::now();
    let left = next_event(&mut a_ev, "the frozen peer to be announced", WAIT, |e| match e {
        Event::PeerLeft { peer, reason } if *peer == frozen => Some(*reason),
        _ => None,
    })
    .await;
    let took = stopped.elapsed();
    unsafe {
        libc::kill(pid, libc::SIGCONT);
    }
    let _ = child.kill();
    let _ = child.wait();
    ensure!(left? == LeaveReason::Timeout, "announced with reason timeout");
    let limit = Duration::from_millis(interval + timeout);
    eprintln!("frozen peer announced as left {:.0} ms after SIGSTOP (limit {limit:?})", took.as_secs_f64() * 1000.0);
    // interval + timeout, plus one reaper tick (100 ms) and scheduling slack on a loaded 2-core machine.
    ensure!(took <= limit + Duration::from_millis(400), "took {took:?}, limit {limit:?}");
    a.close().await;
    Ok(())
}
