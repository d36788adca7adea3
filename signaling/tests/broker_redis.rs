//! Cluster mode: several nodes on one real `redis-server` (started here on an ephemeral loopback port,
//! persistence off, stopped afterwards). Each test proves one promise of docs/architecture.md "Cluster".

mod common;

use common::{Client, TestServer, WAIT, connect, expect_close, recv_envelope};
use futures_util::SinkExt;
use protocol::{ClientMessage, ErrorCode, LeaveReason, ServerMessage, SignalData};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A `redis-server` of our own; killed on drop.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = Redis { port, child: None };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): install it (Debian: apt-get install redis-server; scripts/test does)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {} in time", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops it abruptly; nothing it held survives (no persistence).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Heartbeat 1 s + 0.5 s, so the presence TTL is 1.5 s.
async fn node(redis: &Redis, max_peers: usize) -> TestServer {
    let url = redis.url();
    TestServer::start_with(move |c| {
        c.cluster.redis_url = Some(url);
        c.max_peers = max_peers;
        c.heartbeat_interval_ms = 1000;
        c.heartbeat_timeout_ms = 500;
        c.ice.no_stun = true;
    })
    .await
}

async fn json<T: serde::de::DeserializeOwned>(res: reqwest::Response) -> T {
    let bytes = res.bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
}

fn signal(to: &str) -> ClientMessage {
    ClientMessage::Signal { to: to.into(), data: SignalData::EndOfCandidates }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_signal_and_relay_cross_nodes() {
    let redis = Redis::start();
    let (na, nb) = (node(&redis, 16).await, node(&redis, 16).await);
    let mut a = Client::join(&na, "room").await;
    let mut b = Client::join(&nb, "room").await;
    assert_eq!(b.welcome.peers, [a.id()], "welcome.peers lists the peer on the other node");
    assert_eq!(a.recv().await, ServerMessage::PeerJoined { peer_id: b.id() });

    a.send(&signal(&b.id())).await;
    assert_eq!(b.recv().await, ServerMessage::Signal { from: a.id(), data: SignalData::EndOfCandidates });
    b.send(&ClientMessage::Relay { to: None, data: serde_json::json!("hi") }).await;
    assert_eq!(a.recv().await, ServerMessage::Relay { from: b.id(), data: serde_json::json!("hi") });
    a.send(&signal("nobody")).await;
    a.expect_error(ErrorCode::UnknownPeer).await;
    a.assert_healthy().await;

    b.send(&ClientMessage::Leave).await;
    assert_eq!(a.recv().await, ServerMessage::PeerLeft { peer_id: b.id(), reason: LeaveReason::Left });
    let mut c = Client::join(&nb, "room").await;
    assert_eq!(c.welcome.peers, [a.id()], "the leaver is gone on every node");
    c.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_messages_cross_exactly_once_in_order() {
    let redis = Redis::start();
    // The per-session rate limit would (rightly) close a sender this fast: off, to measure the cluster only.
    let url = redis.url();
    let unlimited = move |c: &mut signaling::Config| {
        c.cluster.redis_url = Some(url.clone());
        c.limits = signaling::limits::LimitFlags::unlimited();
        c.ice.no_stun = true;
    };
    let (na, nb) = (TestServer::start_with(unlimited.clone()).await, TestServer::start_with(unlimited).await);
    let mut a = Client::join(&na, "flood").await;
    let mut b = Client::join(&nb, "flood").await;
    assert_eq!(a.recv().await, ServerMessage::PeerJoined { peer_id: b.id() });
    const N: u64 = 3000;
    let to = b.id();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            let msg = if i % 2 == 0 {
                ClientMessage::Relay { to: Some(to.clone()), data: serde_json::json!(i) }
            } else {
                ClientMessage::Relay { to: None, data: serde_json::json!(i) }
            };
            a.ws.feed(Message::text(msg.encode())).await.unwrap();
        }
        a.ws.flush().await.unwrap();
        a
    });
    // `recv` checks that seq is exactly the previous + 1: no gap, no duplicate.
    for i in 0..N {
        match b.recv().await {
            ServerMessage::Relay { data, .. } => assert_eq!(data, serde_json::json!(i), "out of order"),
            other => panic!("unexpected {other:?}"),
        }
    }
    b.expect_silence(Duration::from_millis(300)).await;
    let mut a = sender.await.unwrap();
    a.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_peers_holds_cluster_wide_under_concurrent_joins() {
    let redis = Redis::start();
    let nodes = [node(&redis, 4).await, node(&redis, 4).await, node(&redis, 4).await];
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let mut joins = Vec::new();
    for i in 0..15 {
        let addr = addrs[i % 3];
        joins.push(tokio::spawn(async move {
            let mut ws = connect(&TestServer::attach(addr), "full").await;
            let env = recv_envelope(&mut ws).await.expect("an answer");
            (matches!(env.msg, ServerMessage::Welcome(_)), env.msg, ws)
        }));
    }
    let mut admitted = Vec::new();
    for j in joins {
        let (ok, msg, ws) = j.await.unwrap();
        if ok {
            admitted.push(ws);
        } else {
            assert!(matches!(msg, ServerMessage::Error { code: ErrorCode::RoomFull, .. }), "{msg:?}");
        }
    }
    assert_eq!(admitted.len(), 4, "exactly --max-peers admitted across three nodes");
}

/// Joins with a WebSocket and returns the client and its session token.
async fn join_with_token(srv: &TestServer, room: &str) -> (Client, String) {
    let c = Client::join(srv, room).await;
    let token = c.welcome.session.token.clone();
    (c, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_on_another_node_with_every_missed_message() {
    let redis = Redis::start();
    let (na, nb) = (node(&redis, 16).await, node(&redis, 16).await);
    let (a, token) = join_with_token(&na, "resume").await;
    let a_id = a.id();
    let mut b = Client::join(&nb, "resume").await;
    drop(a); // the connection drops without a close frame: a resume window starts on node A
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        b.send(&signal(&a_id)).await;
    }
    // a saw seq 1 (welcome) only; peer-joined (2) and the five signals (3..7) are missed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let url = format!("{}?resume={token}&after=1", nb.ws_url("resume"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut got = Vec::new();
    loop {
        let env = recv_envelope(&mut ws).await.expect("replay");
        assert_eq!(env.seq, 2 + got.len() as u64, "gap-free from the client's cursor");
        let done = matches!(env.msg, ServerMessage::Resumed { .. });
        got.push(env.msg);
        if done {
            break;
        }
    }
    assert_eq!(got[0], ServerMessage::PeerJoined { peer_id: b.id() });
    assert_eq!(got[1..6], vec![ServerMessage::Signal { from: b.id(), data: SignalData::EndOfCandidates }; 5][..]);
    assert!(matches!(got[6], ServerMessage::Resumed { replayed: 6, .. }), "{:?}", got[6]);
    // Same peer id: b can still reach it, now on node B; and nobody saw it leave.
    b.send(&signal(&a_id)).await;
    let env = recv_envelope(&mut ws).await.unwrap();
    assert_eq!((env.seq, env.msg), (9, ServerMessage::Signal { from: b.id(), data: SignalData::EndOfCandidates }));
    b.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_and_poll_on_any_node() {
    let redis = Redis::start();
    let (na, nb) = (node(&redis, 16).await, node(&redis, 16).await);
    let http = reqwest::Client::new();
    // A polling client joins on node A.
    let res = http.get(na.http_url("/v1/rooms/any/poll")).send().await.unwrap();
    let body: protocol::PollResponse = json(res).await;
    let ServerMessage::Welcome(w) = &body.messages[0].msg else { panic!("{body:?}") };
    let (peer, token) = (w.peer_id.clone(), w.session.token.clone());
    let mut b = Client::join(&na, "any").await;
    // Its messages POSTed to node B, which does not hold the session, arrive in order.
    for i in 0..20 {
        let msg = ClientMessage::Relay { to: Some(b.id()), data: serde_json::json!(i) };
        let res = http
            .post(nb.http_url(&format!("/v1/sessions/{peer}")))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(msg.encode())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204, "{:?}", res.text().await);
    }
    for i in 0..20 {
        assert_eq!(b.recv().await, ServerMessage::Relay { from: peer.clone(), data: serde_json::json!(i) });
    }
    // A wrong token is refused there too.
    let res = http
        .post(nb.http_url(&format!("/v1/sessions/{peer}")))
        .bearer_auth("0123456789abcdef0123456789abcdef")
        .body("{\"type\":\"ping\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // A poll on node B gets what b sent, with the seqs node A would have given.
    b.send(&signal(&peer)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let res = http.get(nb.http_url("/v1/rooms/any/poll?after=1&wait_ms=2000")).bearer_auth(&token).send().await.unwrap();
    let body: protocol::PollResponse = json(res).await;
    let seqs: Vec<u64> = body.messages.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [2, 3], "{body:?}");
    assert_eq!(body.messages[0].msg, ServerMessage::PeerJoined { peer_id: b.id() });
    assert_eq!(body.messages[1].msg, ServerMessage::Signal { from: b.id(), data: SignalData::EndOfCandidates });
    // And the session goes on from there, on either node.
    let res = http.get(na.http_url("/v1/rooms/any/poll?after=3&wait_ms=0")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: protocol::PollResponse = json(res).await;
    assert!(body.messages.is_empty() && body.close.is_none(), "{body:?}");
}

/// The `signaling` binary as a cluster node.
struct NodeProc {
    child: Child,
    addr: SocketAddr,
}

impl NodeProc {
    fn start(redis: &Redis) -> NodeProc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_signaling"))
            .args(["--listen", "127.0.0.1:0", "--no-stun", "--redis-url", &redis.url()])
            .args(["--heartbeat-interval-ms", "1000", "--heartbeat-timeout-ms", "500"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("signaling binary runs");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        // Keep reading: the node prints more lines, and a closed pipe would kill it (EPIPE on println!).
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let addr = line.trim().rsplit("://").next().unwrap().parse().unwrap_or_else(|_| panic!("{line}"));
        NodeProc { child, addr }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_of_a_killed_node_leave_within_the_presence_ttl() {
    let redis = Redis::start();
    let mut doomed = NodeProc::start(&redis);
    let nb = node(&redis, 16).await;
    let a = Client::join(&TestServer::attach(doomed.addr), "dies").await;
    let mut b = Client::join(&nb, "dies").await;
    assert_eq!(b.welcome.peers, [a.id()]);
    // SIGKILL: no close frame, no leave, no goodbye to Redis.
    doomed.child.kill().unwrap();
    let killed = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let env = loop {
        let msg = tokio::time::timeout_at(deadline, recv_envelope(&mut b.ws)).await.expect("peer-left in time");
        if let Some(env) = msg
            && !matches!(env.msg, ServerMessage::Pong { .. })
        {
            break env;
        }
    };
    let took = killed.elapsed();
    assert_eq!(env.msg, ServerMessage::PeerLeft { peer_id: a.id(), reason: LeaveReason::Timeout });
    // TTL 1.5 s, plus one sweep period (TTL / 3) and the key's expiry resolution.
    assert!(took <= Duration::from_millis(1500 + 500 + 700), "peer-left after {took:?}");
    eprintln!("peer-left {took:?} after the kill (presence TTL 1.5 s)");
    b.expect_silence(Duration::from_millis(500)).await;
}

async fn health(srv: &TestServer) -> serde_json::Value {
    json(reqwest::get(srv.http_url("/healthz")).await.unwrap()).await
}

/// `GET /readyz`: status and body.
async fn ready(srv: &TestServer) -> (u16, serde_json::Value) {
    let r = reqwest::get(srv.http_url("/readyz")).await.unwrap();
    (r.status().as_u16(), json(r).await)
}

async fn wait_status(srv: &TestServer, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(srv).await["status"] != want {
        assert!(Instant::now() < deadline, "node never became {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_refuses_with_a_code_and_converges_when_back() {
    let mut redis = Redis::start();
    let (na, nb) = (node(&redis, 16).await, node(&redis, 16).await);
    let mut a = Client::join(&na, "outage").await;
    let mut c = Client::join(&na, "outage").await;
    let mut b = Client::join(&nb, "outage").await;
    assert_eq!(a.recv().await, ServerMessage::PeerJoined { peer_id: c.id() });
    assert_eq!(a.recv().await, ServerMessage::PeerJoined { peer_id: b.id() });
    assert_eq!(c.recv().await, ServerMessage::PeerJoined { peer_id: b.id() });

    assert_eq!(ready(&na).await, (200, serde_json::json!({"ready": true, "reasons": []})));
    redis.kill();
    wait_status(&na, "degraded").await;
    wait_status(&nb, "degraded").await;
    assert_eq!(ready(&na).await, (503, serde_json::json!({"ready": false, "reasons": ["cluster-unavailable"]})));
    // Joins need Redis: refused with the retryable code.
    let mut ws = connect(&na, "outage").await;
    let env = recv_envelope(&mut ws).await.unwrap();
    assert!(matches!(env.msg, ServerMessage::Error { code: ErrorCode::ClusterUnavailable, .. }), "{:?}", env.msg);
    assert_eq!(expect_close(&mut ws).await, 4005);
    // Peers held by the same node keep talking; a peer elsewhere is refused plainly.
    a.send(&signal(&c.id())).await;
    assert_eq!(c.recv().await, ServerMessage::Signal { from: a.id(), data: SignalData::EndOfCandidates });
    a.send(&signal(&b.id())).await;
    a.expect_error(ErrorCode::ClusterUnavailable).await;
    c.send(&ClientMessage::Leave).await;
    assert_eq!(a.recv().await, ServerMessage::PeerLeft { peer_id: c.id(), reason: LeaveReason::Left });

    // Back, empty (no persistence): the nodes re-register what they hold.
    redis.spawn();
    wait_status(&na, "ok").await;
    wait_status(&nb, "ok").await;
    assert_eq!(ready(&nb).await.0, 200);
    a.send(&signal(&b.id())).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    // b may first hear that c left (it did, while Redis was away): then the signal.
    loop {
        let msg = tokio::time::timeout_at(deadline, b.recv()).await.expect("the signal arrives");
        match msg {
            ServerMessage::Signal { from, .. } => {
                assert_eq!(from, a.id());
                break;
            }
            ServerMessage::PeerLeft { peer_id, .. } => assert_eq!(peer_id, c.id()),
            other => panic!("unexpected {other:?}"),
        }
    }
    b.send(&signal(&a.id())).await;
    assert_eq!(a.recv().await, ServerMessage::Signal { from: b.id(), data: SignalData::EndOfCandidates });
    // A newcomer sees exactly the live members: no ghost of c.
    let d = Client::join(&nb, "outage").await;
    let mut peers = d.welcome.peers.clone();
    peers.sort();
    let mut want = vec![a.id(), b.id()];
    want.sort();
    assert_eq!(peers, want);
}
