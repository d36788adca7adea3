//! Hostile clients at the TCP/HTTP edge, against a real server on 127.0.0.1:0: slowloris, idle sockets,
//! connection floods from one address, the node-wide cap, a trusted proxy's exemption.

mod common;

use signaling::{Config, Server};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use futures_util::StreamExt;

struct Running {
    addr: SocketAddr,
    conns: Arc<signaling::edge::limits::ConnLimits>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(tweak: impl FnOnce(&mut Config)) -> Running {
    let mut cfg = Config::with_listen("127.0.0.1:0".parse().unwrap());
    tweak(&mut cfg);
    let server = Server::bind(cfg).await.expect("server binds");
    let addr = server.local_addr();
    let conns = server.connections();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Running { addr, conns, _stop: stop }
}

/// Reads until EOF, an error or `limit`; returns what was read and whether the connection ended.
async fn read_to_end_within(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

async fn get_healthz(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let (body, ended) = read_to_end_within(&mut s, Duration::from_secs(5)).await;
    assert!(ended, "healthz response did not end");
    String::from_utf8_lossy(&body).into_owned()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_at_the_header_timeout() {
    let srv = start(|c| c.edge.header_read_timeout_ms = 1500).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let mut closed_after = None;
    for i in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if s.write_all(format!("x-slow-{i}: y\r\n").as_bytes()).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            assert!(!matches!(r, Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200")), "slow request was served");
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("a one-line-per-second request was never cut off");
    assert!(closed_after >= Duration::from_millis(1400), "closed too early: {closed_after:?}");
    assert!(closed_after < Duration::from_millis(3500), "closed too late: {closed_after:?}");
    assert!(get_healthz(srv.addr).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_keep_alive_connection_idle_between_requests_is_closed() {
    let srv = start(|c| c.edge.header_read_timeout_ms = 500).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let (body, ended) = read_to_end_within(&mut s, Duration::from_secs(3)).await;
    assert!(String::from_utf8_lossy(&body).starts_with("HTTP/1.1 200"));
    assert!(ended, "idle keep-alive connection still open after 3 s");
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn five_hundred_silent_connections_are_closed_after_the_idle_timeout() {
    let srv = start(|c| {
        c.edge.idle_timeout_ms = 500;
        c.edge.max_connections_per_ip = 1000;
    })
    .await;
    let mut socks = Vec::new();
    for _ in 0..500 {
        socks.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    let started = Instant::now();
    let results = futures_util::future::join_all(socks.iter_mut().map(|s| read_to_end_within(s, Duration::from_secs(5)))).await;
    let still_open = results.iter().filter(|(_, ended)| !ended).count();
    assert_eq!(still_open, 0, "{still_open} silent connections outlived the idle timeout");
    assert!(results.iter().all(|(b, _)| b.is_empty()), "a silent connection got bytes");
    assert!(started.elapsed() < Duration::from_secs(4), "closing took {:?}", started.elapsed());
    wait_until("all slots back", || srv.conns.total() == 0).await;
    assert!(get_healthz(srv.addr).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_stalled_http2_preface_is_closed_after_the_idle_timeout() {
    let srv = start(|c| c.edge.idle_timeout_ms = 500).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let (_, ended) = read_to_end_within(&mut s, Duration::from_secs(3)).await;
    assert!(ended, "a half preface held the connection");
}

#[tokio::test]
async fn over_the_per_ip_cap_a_connection_gets_429_and_slots_free_up() {
    let srv = start(|c| c.edge.max_connections_per_ip = 50).await;
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    wait_until("50 held", || srv.conns.total() == 50).await;
    let refused = get_healthz(srv.addr).await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(refused.contains(r#""code":"too-many-connections""#), "{refused}");
    assert_eq!(srv.conns.total(), 50, "a refused connection kept a slot");
    held.truncate(40);
    wait_until("slots given back", || srv.conns.total() == 40).await;
    assert!(get_healthz(srv.addr).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn over_the_node_cap_a_connection_gets_503() {
    let srv = start(|c| c.edge.max_connections = 20).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    wait_until("20 held", || srv.conns.total() == 20).await;
    let refused = get_healthz(srv.addr).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains(r#""code":"too-many-connections""#), "{refused}");
    drop(held);
    wait_until("slots given back", || srv.conns.total() == 0).await;
    assert!(get_healthz(srv.addr).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_trusted_proxy_is_exempt_from_the_per_ip_cap() {
    let srv = start(|c| {
        c.edge.max_connections_per_ip = 5;
        c.edge.trusted_proxy = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    wait_until("10 held", || srv.conns.total() == 10).await;
    assert!(get_healthz(srv.addr).await.starts_with("HTTP/1.1 200"));
}

/// 5,000 connections from one address against the default cap (256): exactly the cap is held, every other
/// connection is answered or closed at once, and the server keeps serving.
#[tokio::test]
async fn five_thousand_connections_from_one_ip_hold_only_the_cap() {
    let srv = start(|c| c.edge.idle_timeout_ms = 60_000).await;
    let cap = Config::with_listen("127.0.0.1:0".parse().unwrap()).edge.max_connections_per_ip;
    let started = Instant::now();
    let mut socks = Vec::with_capacity(5000);
    for _ in 0..5000 {
        socks.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    let results = futures_util::future::join_all(socks.iter_mut().map(|s| read_to_end_within(s, Duration::from_secs(2)))).await;
    let held = results.iter().filter(|(_, ended)| !ended).count();
    let answered_429 = results.iter().filter(|(b, _)| b.starts_with(b"HTTP/1.1 429")).count();
    println!("5000 connects + reads: {:?}; held {held}, answered 429: {answered_429}", started.elapsed());
    assert_eq!(held, cap, "connections held open");
    assert_eq!(srv.conns.total(), cap);
    assert!(answered_429 > 0, "no refused connection got its 429");
    drop(socks);
    wait_until("all slots back", || srv.conns.total() == 0).await;
    assert!(get_healthz(srv.addr).await.starts_with("HTTP/1.1 200"));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

/// An SSE client that stops reading: its session ends as a slow consumer, but hyper still holds what it had
/// taken for the socket, and the connection slot, for as long as the client keeps the socket open. The
/// write-stall timeout ends such a connection.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_at_the_write_stall_timeout() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let srv = start(|c| {
        c.edge.write_stall_timeout_ms = 500;
        // Far beyond the test: a keep-alive wait must not be what closes the connection.
        c.edge.header_read_timeout_ms = 60_000;
        c.limits.rate_per_sec = 1e6;
        c.limits.rate_burst = 1_000_000;
    })
    .await;
    // A tiny receive window, so the server's writes stall after a few KB.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut sse = sock.connect(srv.addr).await.unwrap();
    sse.write_all(b"GET /v1/rooms/stall/sse HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut head = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), sse.read(&mut head)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).contains("\"welcome\""), "{}", String::from_utf8_lossy(&head[..n]));
    let (mut partner, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/rooms/stall/ws", srv.addr)).await.unwrap();
    let welcome = common::recv_envelope(&mut partner).await.expect("the partner's welcome");
    let protocol::ServerMessage::Welcome(w) = welcome.msg else { panic!("{:?}", welcome.msg) };
    let target = w.peers[0].clone();
    let relay = protocol::ClientMessage::Relay { to: Some(target), data: serde_json::json!("z".repeat(60_000)) }.encode();
    // Flood until the stalled stream's session is gone (peer-left slow-consumer), bounded.
    let mut gone = false;
    for _ in 0..2000 {
        partner.send(Message::text(relay.clone())).await.unwrap();
        let msg = match tokio::time::timeout(Duration::from_millis(1), partner.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => protocol::ServerEnvelope::decode(&t).unwrap().msg,
            _ => continue,
        };
        if let protocol::ServerMessage::PeerLeft { reason, .. } = msg {
            assert_eq!(reason, protocol::LeaveReason::SlowConsumer);
            gone = true;
            break;
        }
    }
    assert!(gone, "the stalled stream was never closed as a slow consumer");
    // Still not reading: the connection itself must go, leaving only the partner's.
    let stalled_at = Instant::now();
    wait_until("the stalled connection closed", || srv.conns.total() == 1).await;
    println!("stalled SSE connection closed {:?} after its session ended", stalled_at.elapsed());
    drop(sse);
}

/// A request target with no path: a bare word or a host (which hyper reads as authority-form), `host:port`
/// (CONNECT's form), `*`. warp's routing assumes every path starts with `/` and panicked on such a request (an
/// earlier fuzz run found it); the edge answers `400 bad-message` before the request reaches warp, and the
/// connection and the server go on.
#[tokio::test]
async fn a_request_target_without_a_path_gets_400_bad_message() {
    let srv = start(|_| {}).await;
    for request in [
        "GET ET HTTP/1.1\r\nhost: x\r\n\r\n",
        "GET example.com HTTP/1.1\r\nhost: example.com\r\n\r\n",
        "POST example.com:80 HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}",
        "CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n",
        "HEAD ET HTTP/1.0\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        // The same connection then asks for /healthz: a refused target does not end it.
        let follow = "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        s.write_all(format!("{request}{follow}").as_bytes()).await.unwrap();
        let (got, ended) = read_to_end_within(&mut s, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(ended, "{request:?}: no end: {text}");
        let version = if request.contains("HTTP/1.0") { "HTTP/1.0" } else { "HTTP/1.1" };
        assert!(text.starts_with(&format!("{version} 400 Bad Request\r\n")), "{request:?}: {text}");
        let head_end = text.find("\r\n\r\n").unwrap() + 4;
        let head = text[..head_end].to_ascii_lowercase();
        assert!(head.contains("content-type: application/json"), "{request:?}: {text}");
        if !request.starts_with("HEAD") {
            let body_len: usize = head.split("content-length: ").nth(1).and_then(|l| l.split("\r\n").next()).unwrap().parse().unwrap();
            let err: protocol::HttpError = serde_json::from_str(&text[head_end..head_end + body_len]).unwrap();
            assert_eq!(err.code, protocol::ErrorCode::BadMessage, "{request:?}");
            if !request.contains("HTTP/1.0") {
                assert!(text[head_end + body_len..].starts_with("HTTP/1.1 200 OK"), "{request:?}: no /healthz after: {text}");
            }
        }
    }
    assert!(get_healthz(srv.addr).await.contains("200 OK"));
}

/// A request head that promises a body and then sends only part of it (`Content-Length: 100`, one byte) is past
/// the header timeout; the body-read timeout ends it: a route that reads the body answers `408 request-timeout`
/// and the connection closes, a route that ignores the body does not keep the connection waiting for the rest.
/// A body that trickles in but finishes in time is served as usual. Over HTTP/2 the stalled stream is answered
/// the same way.
#[tokio::test]
async fn a_request_body_that_never_finishes_is_cut_off_at_the_body_read_timeout() {
    let srv = start(|c| {
        c.edge.header_read_timeout_ms = 500;
        c.edge.body_read_timeout_ms = 1500;
    })
    .await;
    for (name, head) in [
        ("post", "POST /v1/sessions/nobody HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"),
        ("get", "GET /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"),
    ] {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let started = Instant::now();
        s.write_all(head.as_bytes()).await.unwrap();
        let (got, ended) = read_to_end_within(&mut s, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&got);
        let after = started.elapsed();
        assert!(ended, "{name}: still open after 5 s: {text}");
        assert!(after < Duration::from_millis(3500), "{name}: closed too late: {after:?}");
        if name == "post" {
            assert!(after >= Duration::from_millis(1400), "{name}: closed before the body timeout: {after:?}");
            assert!(text.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{name}: {text}");
            assert!(text.to_ascii_lowercase().contains("connection: close"), "{name}: {text}");
            assert!(text.contains("\"code\":\"request-timeout\""), "{name}: {text}");
        }
    }
    wait_until("the cut-off connections' slots come back", || srv.conns.total() == 0).await;

    // In time, though in pieces: the POST reaches the route (401 unauthorized: it has no session token).
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST /v1/sessions/nobody HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 15\r\n\r\n{\"type\":").await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.write_all(b"\"ping\"}").await.unwrap();
    let (got, ended) = read_to_end_within(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(ended && text.starts_with("HTTP/1.1 401"), "slow but complete body: {text}");
    assert!(text.contains("\"code\":\"unauthorized\""), "{text}");

    // HTTP/2 (prior knowledge): a stream whose DATA never ends.
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let chunks = futures_util::stream::once(async { Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{")) })
        .chain(futures_util::stream::pending());
    let started = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        client
            .post(format!("http://{}/v1/sessions/nobody", srv.addr))
            .header("content-type", "application/json")
            .header("content-length", "100")
            .body(reqwest::Body::wrap_stream(chunks))
            .send(),
    )
    .await
    .expect("h2 answer within 5 s")
    .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 408);
    assert!(started.elapsed() >= Duration::from_millis(1400), "{:?}", started.elapsed());
    assert!(resp.text().await.unwrap().contains("request-timeout"));
    assert!(get_healthz(srv.addr).await.starts_with("HTTP/1.1 200"));
}
