//! The limits on the wire (`signaling::limits`): message rate with strikes, node-wide session and room caps,
//! join attempts per address, SDP size, candidate count, the outbox byte bound, and hostile room names. Each
//! test starts a real server with the limit lowered so the scenario stays small and fast.

mod common;

use common::*;
use protocol::{ClientMessage, ErrorCode, IceCandidateInit, LeaveReason, ServerMessage, SignalData};
use serde_json::{Value, json};
use signaling::hub::{Hub, HubConfig, JoinError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// A plain HTTP/1.1 GET with `connection: close`: status and body.
async fn get(srv: &TestServer, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await.expect("response in time").unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{text}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Reads an SSE stream's raw text until its `close` event, and returns everything read.
async fn sse_until_close(srv: &TestServer, path: &str) -> String {
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes()).await.unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !text.contains("event: close") {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf)).await.expect("close event in time").unwrap();
        assert!(n > 0, "stream ended without a close event: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // The close event's data line follows in the same or the next read.
    let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await.map(|r| {
        if let Ok(n) = r {
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

fn relay(n: usize) -> ClientMessage {
    ClientMessage::Relay { to: None, data: json!(n) }
}

fn candidate(to: &str) -> ClientMessage {
    ClientMessage::Signal {
        to: to.into(),
        data: SignalData::Candidate {
            candidate: IceCandidateInit {
                candidate: "candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
                username_fragment: None,
            },
        },
    }
}

fn offer(to: &str, sdp_len: usize) -> ClientMessage {
    ClientMessage::Signal { to: to.into(), data: SignalData::Offer { sdp: "a".repeat(sdp_len) } }
}

async fn pair(srv: &TestServer, room: &str) -> (Client, Client) {
    let mut a = Client::join(srv, room).await;
    let b = Client::join(srv, room).await;
    assert_eq!(a.recv().await, ServerMessage::PeerJoined { peer_id: b.id() });
    (a, b)
}

#[tokio::test]
async fn a_flood_beyond_the_rate_gets_rate_limited_then_4004() {
    let srv = TestServer::start_with(|c| {
        c.limits.rate_per_sec = 1.0;
        c.limits.rate_burst = 5;
        c.limits.rate_strikes = 3;
    })
    .await;
    let (mut a, mut b) = pair(&srv, "r").await;
    for n in 0..6 {
        a.send(&relay(n)).await;
    }
    // The burst is delivered, in order; the sixth is refused and the session goes on.
    for n in 0..5 {
        assert_eq!(b.recv().await, ServerMessage::Relay { from: a.id(), data: json!(n) });
    }
    a.expect_error(ErrorCode::RateLimited).await;
    a.assert_healthy().await;
    for n in 6..10 {
        a.send(&relay(n)).await;
    }
    // Two more refusals make three strikes: the close. The writer stops a batch as soon as the session is told
    // to close, so those last errors may not make it out; the close code says what happened either way.
    let mut errors = 0;
    let close = loop {
        match tokio::time::timeout(WAIT, a.ws.next()).await.expect("frames in time") {
            Some(Ok(Message::Text(t))) => match protocol::ServerEnvelope::decode(&t).unwrap().msg {
                ServerMessage::Error { code: ErrorCode::RateLimited, .. } => errors += 1,
                other => panic!("{other:?}"),
            },
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert!(errors <= 2, "{errors} rate-limited errors");
    assert_eq!(close, Some(4004));
    // Next for b is the departure: none of the refused relays got through.
    assert_eq!(b.recv().await, ServerMessage::PeerLeft { peer_id: a.id(), reason: LeaveReason::Closed });
    b.assert_healthy().await;
}

#[tokio::test]
async fn pings_are_answered_even_with_an_empty_bucket() {
    let srv = TestServer::start_with(|c| {
        c.limits.rate_per_sec = 0.01;
        c.limits.rate_burst = 1;
        c.limits.rate_strikes = 100;
    })
    .await;
    let (mut a, _b) = pair(&srv, "r").await;
    a.send(&relay(0)).await;
    a.send(&relay(1)).await;
    a.expect_error(ErrorCode::RateLimited).await;
    for _ in 0..3 {
        a.assert_healthy().await;
    }
}

#[tokio::test]
async fn a_burst_within_the_limits_is_delivered_whole() {
    // Defaults: 50/s, burst 200.
    let srv = TestServer::start().await;
    let (mut a, mut b) = pair(&srv, "r").await;
    for n in 0..200 {
        a.send(&relay(n)).await;
    }
    for n in 0..200 {
        assert_eq!(b.recv().await, ServerMessage::Relay { from: a.id(), data: json!(n) });
    }
    a.assert_healthy().await;
    a.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn max_sessions_refuses_with_node_full_4003() {
    let srv = TestServer::start_with(|c| c.limits.max_sessions = 3).await;
    let (status, body) = get(&srv, "/readyz", &[]).await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()), (200, json!({"ready": true, "reasons": []})));
    let _held = [Client::join(&srv, "a").await, Client::join(&srv, "a").await, Client::join(&srv, "b").await];
    // Full: a load balancer is told to send new clients elsewhere, and why.
    let (status, body) = get(&srv, "/readyz", &[]).await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()), (503, json!({"ready": false, "reasons": ["max-sessions"]})));
    for room in ["a", "c"] {
        let mut ws = connect(&srv, room).await;
        let env = recv_envelope(&mut ws).await.expect("the refusal");
        assert!(matches!(env.msg, ServerMessage::Error { code: ErrorCode::NodeFull, .. }), "{:?}", env.msg);
        assert_eq!(expect_close(&mut ws).await, 4003);
    }
    // The refusal is retryable: 4003 is in the reconnect range.
    assert!(protocol::CloseCode::should_reconnect(4003));
}

#[tokio::test]
async fn max_rooms_refuses_a_new_room_but_not_an_existing_one() {
    let srv = TestServer::start_with(|c| c.limits.max_rooms = 2).await;
    let _r1 = Client::join(&srv, "r1").await;
    let _r2 = Client::join(&srv, "r2").await;
    let mut ws = connect(&srv, "r3").await;
    let env = recv_envelope(&mut ws).await.expect("the refusal");
    assert!(matches!(env.msg, ServerMessage::Error { code: ErrorCode::NodeFull, .. }), "{:?}", env.msg);
    assert_eq!(expect_close(&mut ws).await, 4003);
    let mut joined = Client::join(&srv, "r1").await;
    joined.assert_healthy().await;
    // Polling: 503 with the same error and close notice.
    let (status, body) = get(&srv, "/v1/rooms/r4/poll", &[]).await;
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["messages"][0]["code"], "node-full");
    assert_eq!(v["close"]["code"], 4003);
}

/// 20,000 rooms asked for by one client: the core holds `--max-rooms`, refuses the rest, and stays usable.
/// Through the core directly (the same `Hub::join` every transport calls), so 20,000 joins take milliseconds.
#[tokio::test]
async fn twenty_thousand_rooms_from_one_client_stop_at_max_rooms() {
    let hub = Hub::new(HubConfig {
        limits: protocol::Limits { max_message_bytes: 65_536, max_peers: 16 },
        heartbeat: protocol::Heartbeat { interval_ms: 10_000, timeout_ms: 5_000 },
        outbox: 256,
        resume_window: Duration::from_secs(30),
        ice_servers: Default::default(),
        node: signaling::limits::LimitFlags { max_rooms: 100, ..Default::default() },
        sse_gzip: true,
    });
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..20_000 {
        match hub.join(&format!("room-{i}")).await {
            Ok(s) => held.push(s),
            Err(JoinError::NodeFull("max-rooms")) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((held.len(), refused, hub.room_count()), (100, 19_900, 100));
    assert!(hub.join("room-0").await.is_ok(), "existing rooms still take peers");
}

/// The same cap over the wire, with the per-address join limit in front of it.
#[tokio::test]
async fn many_rooms_over_websocket_meet_the_join_rate_then_nothing_more() {
    let srv = TestServer::start_with(|c| {
        c.limits.join_rate_per_ip_per_min = 30;
        c.limits.max_rooms = 20;
    })
    .await;
    let mut codes = Vec::new();
    let mut held = Vec::new();
    for i in 0..40 {
        let mut ws = connect(&srv, &format!("r{i}")).await;
        match recv_envelope(&mut ws).await.expect("a first message").msg {
            ServerMessage::Welcome(_) => held.push(ws),
            ServerMessage::Error { code, .. } => codes.push((code, expect_close(&mut ws).await)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(held.len(), 20);
    assert_eq!(codes.iter().filter(|c| **c == (ErrorCode::NodeFull, 4003)).count(), 10);
    assert_eq!(codes.iter().filter(|c| **c == (ErrorCode::RateLimited, 4004)).count(), 10);
    let (_, body) = get(&srv, "/healthz", &[]).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["rooms"], 20);
}

#[tokio::test]
async fn join_attempts_per_address_are_limited_on_every_transport() {
    let srv = TestServer::start_with(|c| c.limits.join_rate_per_ip_per_min = 3).await;
    let _held = [Client::join(&srv, "r").await, Client::join(&srv, "r").await, Client::join(&srv, "r").await];
    // WebSocket: refused after the upgrade, so a browser can read why.
    let mut ws = connect(&srv, "r").await;
    let env = recv_envelope(&mut ws).await.expect("the refusal");
    assert!(matches!(env.msg, ServerMessage::Error { code: ErrorCode::RateLimited, .. }), "{:?}", env.msg);
    assert_eq!(expect_close(&mut ws).await, 4004);
    // Polling: 429.
    let (status, body) = get(&srv, "/v1/rooms/r/poll", &[]).await;
    assert_eq!(status, 429, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["messages"][0]["code"].clone(), v["close"]["code"].clone()), (json!("rate-limited"), json!(4004)));
    // SSE: always 200 (EventSource gives up on anything else), the refusal travels as events.
    let text = sse_until_close(&srv, "/v1/rooms/r/sse").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"code\":\"rate-limited\""), "{text}");
    assert!(text.contains("\"code\":4004"), "{text}");
    // Polls of a live session (with its token) are not joins: still answered with the budget spent.
    let auth = format!("Bearer {}", _held[0].welcome.session.token);
    let (status, body) = get(&srv, "/v1/rooms/r/poll?after=1&wait_ms=0", &[("authorization", &auth)]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn an_sdp_over_the_limit_is_refused_too_large() {
    let srv = TestServer::start_with(|c| c.limits.max_sdp_bytes = 2048).await;
    let (mut a, mut b) = pair(&srv, "r").await;
    a.send(&offer(&b.id(), 2049)).await;
    let message = a.expect_error(ErrorCode::TooLarge).await;
    assert!(message.contains("2049"), "{message}");
    a.send(&offer(&b.id(), 2048)).await;
    match b.recv().await {
        ServerMessage::Signal { data: SignalData::Offer { sdp }, .. } => assert_eq!(sdp.len(), 2048),
        other => panic!("{other:?}"),
    }
    a.assert_healthy().await;
}

#[tokio::test]
async fn candidates_beyond_the_limit_are_refused_until_a_new_offer() {
    let srv = TestServer::start_with(|c| c.limits.max_candidates = 3).await;
    let (mut a, mut b) = pair(&srv, "r").await;
    for _ in 0..4 {
        a.send(&candidate(&b.id())).await;
    }
    a.expect_error(ErrorCode::TooManyCandidates).await;
    for _ in 0..3 {
        assert!(matches!(b.recv().await, ServerMessage::Signal { data: SignalData::Candidate { .. }, .. }));
    }
    // An ICE restart is a new offer: a new count.
    a.send(&offer(&b.id(), 100)).await;
    a.send(&candidate(&b.id())).await;
    assert!(matches!(b.recv().await, ServerMessage::Signal { data: SignalData::Offer { .. }, .. }));
    assert!(matches!(b.recv().await, ServerMessage::Signal { data: SignalData::Candidate { .. }, .. }));
    b.expect_silence(Duration::from_millis(100)).await;
}

/// A polling session that stops polling, fed 3 KB relays with an 8 KiB byte bound: it ends as a slow consumer
/// after a handful of messages, far below the 256-message bound that was the only one before.
#[tokio::test]
async fn the_outbox_byte_bound_ends_a_slow_consumer() {
    let srv = TestServer::start_with(|c| {
        c.max_message_bytes = 4096;
        c.limits.outbox_bytes = 8192;
    })
    .await;
    let mut a = Client::join(&srv, "r").await;
    let (status, body) = get(&srv, "/v1/rooms/r/poll", &[]).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let b_id = v["messages"][0]["peer_id"].as_str().unwrap().to_owned();
    assert_eq!(a.recv().await, ServerMessage::PeerJoined { peer_id: b_id.clone() });
    for _ in 0..4 {
        a.send(&ClientMessage::Relay { to: Some(b_id.clone()), data: json!("x".repeat(3000)) }).await;
    }
    assert_eq!(a.recv().await, ServerMessage::PeerLeft { peer_id: b_id, reason: LeaveReason::SlowConsumer });
}

/// Room names are `[A-Za-z0-9_.-]{1,64}` and not `.`/`..`: CR/LF, NUL, right-to-left override, slashes
/// (path traversal), spaces and over-long names are refused with `bad-room` and 4500 before any session.
#[tokio::test]
async fn hostile_room_names_are_refused_with_bad_room() {
    let srv = TestServer::start().await;
    let long = "a".repeat(65);
    for room in ["a%0D%0Ab", "a%00b", "%E2%80%AEevil", "..%2F..%2Fetc", "%2E%2E", "a%20b", "%F0%9F%98%80", long.as_str()] {
        let mut ws = connect(&srv, room).await;
        let env = recv_envelope(&mut ws).await.expect("the refusal");
        assert!(matches!(env.msg, ServerMessage::Error { code: ErrorCode::BadRoom, .. }), "{room}: {:?}", env.msg);
        assert_eq!(expect_close(&mut ws).await, 4500, "{room}");
    }
    let (_, body) = get(&srv, "/healthz", &[]).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["sessions"], 0);
}

/// A `to` carrying CR/LF/NUL/RTL matches no peer: `unknown-peer`, with the id escaped in the message.
#[tokio::test]
async fn hostile_peer_ids_are_unknown_peers_and_escaped() {
    let srv = TestServer::start().await;
    let (mut a, _b) = pair(&srv, "r").await;
    a.send(&ClientMessage::Relay { to: Some("x\r\ny\0\u{202e}".into()), data: json!(1) }).await;
    let message = a.expect_error(ErrorCode::UnknownPeer).await;
    assert!(!message.contains(['\r', '\n', '\0', '\u{202e}']), "{message:?}");
}
