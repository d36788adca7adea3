//! The WebSocket transport against a real server on an ephemeral loopback port.

mod common;

use common::*;
use futures_util::StreamExt;
use protocol::{ClientMessage, ErrorCode, IceCandidateInit, LeaveReason, ServerMessage, SignalData};
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn offer(sdp: &str) -> SignalData {
    SignalData::Offer { sdp: sdp.into() }
}

#[tokio::test]
async fn join_announces_presence_both_ways() {
    let srv = TestServer::start().await;
    let mut a = Client::join(&srv, "room1").await;
    assert!(a.welcome.peers.is_empty());
    assert_eq!(a.welcome.room, "room1");
    assert_eq!(a.welcome.protocol, 1);
    assert_eq!(a.welcome.limits.max_message_bytes, 65_536);
    let b = Client::join(&srv, "room1").await;
    assert_eq!(b.welcome.peers, vec![a.id()]);
    assert_eq!(a.recv().await, ServerMessage::PeerJoined { peer_id: b.id() });
    let c = Client::join(&srv, "room1").await;
    assert_eq!(c.welcome.peers, vec![a.id(), b.id()], "oldest first");
    assert_ne!(a.id(), b.id());
}

#[tokio::test]
async fn signals_are_routed_within_the_room_with_from_stamped() {
    let srv = TestServer::start().await;
    let mut a = Client::join(&srv, "r").await;
    let mut b = Client::join(&srv, "r").await;
    a.recv().await; // peer-joined
    let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n";
    a.send(&ClientMessage::Signal { to: b.id(), data: offer(sdp) }).await;
    assert_eq!(b.recv().await, ServerMessage::Signal { from: a.id(), data: offer(sdp) });
    let cand = SignalData::Candidate {
        candidate: IceCandidateInit {
            candidate: "candidate:1 1 udp 2122260223 127.0.0.1 40000 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: Some("uf".into()),
        },
    };
    b.send(&ClientMessage::Signal { to: a.id(), data: cand.clone() }).await;
    assert_eq!(a.recv().await, ServerMessage::Signal { from: b.id(), data: cand });
    // A forged `from` is ignored: the server stamps the real sender.
    b.send_raw(Message::text(format!(
        r#"{{"type":"signal","to":"{}","from":"forged","data":{{"kind":"end-of-candidates"}}}}"#,
        a.id()
    )))
    .await;
    assert_eq!(a.recv().await, ServerMessage::Signal { from: b.id(), data: SignalData::EndOfCandidates });
}

#[tokio::test]
async fn relay_goes_to_one_peer_or_to_everyone_else() {
    let srv = TestServer::start().await;
    let mut a = Client::join(&srv, "r").await;
    let mut b = Client::join(&srv, "r").await;
    let mut c = Client::join(&srv, "r").await;
    a.recv().await;
    a.recv().await;
    b.recv().await;
    let data = json!({"n": 1, "text": "héllo\nworld", "nested": [1, {"x": null}]});
    a.send(&ClientMessage::Relay { to: None, data: data.clone() }).await;
    assert_eq!(b.recv().await, ServerMessage::Relay { from: a.id(), data: data.clone() });
    assert_eq!(c.recv().await, ServerMessage::Relay { from: a.id(), data: data.clone() });
    c.send(&ClientMessage::Relay { to: Some(b.id()), data: json!(42) }).await;
    assert_eq!(b.recv().await, ServerMessage::Relay { from: c.id(), data: json!(42) });
    // The sender never gets its own broadcast, and `a` got nothing from the directed relay.
    a.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn no_signalling_across_rooms() {
    let srv = TestServer::start().await;
    let mut a = Client::join(&srv, "alpha").await;
    let mut b = Client::join(&srv, "beta").await;
    a.send(&ClientMessage::Signal { to: b.id(), data: offer("v=0") }).await;
    a.expect_error(ErrorCode::UnknownPeer).await;
    a.send(&ClientMessage::Relay { to: Some(b.id()), data: json!("hi") }).await;
    a.expect_error(ErrorCode::UnknownPeer).await;
    a.send(&ClientMessage::Signal { to: a.id(), data: offer("v=0") }).await;
    a.expect_error(ErrorCode::UnknownPeer).await;
    b.expect_silence(Duration::from_millis(200)).await;
    a.assert_healthy().await;
}

#[tokio::test]
async fn oversized_messages_are_refused_and_the_session_goes_on() {
    let srv = TestServer::start_with(|c| c.max_message_bytes = 4096).await;
    let mut a = Client::join(&srv, "r").await;
    let mut b = Client::join(&srv, "r").await;
    a.recv().await;
    let big = ClientMessage::Relay { to: None, data: json!("x".repeat(5000)) };
    a.send(&big).await;
    let msg = a.expect_error(ErrorCode::TooLarge).await;
    assert!(msg.contains("4096"), "{msg}");
    b.expect_silence(Duration::from_millis(100)).await;
    a.assert_healthy().await;
    // Above the transport's hard cap the connection is dropped with 1009; the server stays healthy.
    a.send_raw(Message::text("x".repeat(4096 * 4 + 1))).await;
    assert_eq!(a.expect_close().await, 1009);
    assert!(matches!(b.recv().await, ServerMessage::PeerLeft { reason: LeaveReason::Closed, .. }));
    let mut c = Client::join(&srv, "r").await;
    c.assert_healthy().await;
}

#[tokio::test]
async fn malformed_input_gets_stable_codes() {
    let srv = TestServer::start().await;
    let mut a = Client::join(&srv, "r").await;
    let b = Client::join(&srv, "r").await;
    a.recv().await;
    let cases: Vec<(Message, ErrorCode)> = vec![
        (Message::text("{not json"), ErrorCode::BadJson),
        (Message::text("[1,2,3]"), ErrorCode::BadJson),
        (Message::binary(vec![1u8, 2, 3]), ErrorCode::BadJson),
        (Message::text(r#"{"no":"type"}"#), ErrorCode::UnknownType),
        (Message::text(r#"{"type":"welcome"}"#), ErrorCode::UnknownType),
        (Message::text(r#"{"type":"teleport","to":"x"}"#), ErrorCode::UnknownType),
        (Message::text(format!(r#"{{"type":"signal","to":"{}","data":{{"kind":"rollback"}}}}"#, b.id())), ErrorCode::BadMessage),
        (Message::text(r#"{"type":"signal","to":7,"data":{"kind":"end-of-candidates"}}"#), ErrorCode::BadMessage),
        (Message::text(r#"{"type":"relay"}"#), ErrorCode::BadMessage),
        (Message::text(r#"{"type":"ping","id":"seven"}"#), ErrorCode::BadMessage),
    ];
    for (frame, code) in cases {
        a.send_raw(frame).await;
        a.expect_error(code).await;
    }
    a.assert_healthy().await;
}

#[tokio::test]
async fn invalid_room_names_are_refused_with_a_code() {
    let srv = TestServer::start().await;
    let long = "x".repeat(65);
    for room in ["a%20b", "a%0D%0Ab", long.as_str(), "..", "caf%C3%A9"] {
        let mut ws = connect(&srv, room).await;
        let env = recv_envelope(&mut ws).await.expect("an error before the close");
        assert_eq!(env.seq, 1);
        assert!(matches!(env.msg, ServerMessage::Error { code: ErrorCode::BadRoom, .. }), "{room}: {:?}", env.msg);
        assert_eq!(expect_close(&mut ws).await, 4500, "{room}");
    }
    // A room path with extra segments is not a room at all.
    let resp = tokio_tungstenite::connect_async(srv.ws_url("a/b")).await;
    assert!(resp.is_err());
    let mut ok = Client::join(&srv, "fine_room-1.2").await;
    ok.assert_healthy().await;
}

#[tokio::test]
async fn a_full_room_refuses_with_a_code() {
    let srv = TestServer::start_with(|c| c.max_peers = 2).await;
    let _a = Client::join(&srv, "r").await;
    let _b = Client::join(&srv, "r").await;
    let mut ws = connect(&srv, "r").await;
    let env = recv_envelope(&mut ws).await.unwrap();
    assert!(matches!(env.msg, ServerMessage::Error { code: ErrorCode::RoomFull, .. }));
    assert_eq!(expect_close(&mut ws).await, 4501);
}

#[tokio::test]
async fn peer_left_on_close_and_on_leave() {
    let srv = TestServer::start_with(|c| c.resume_window_ms = 400).await;
    let mut a = Client::join(&srv, "r").await;
    let mut b = Client::join(&srv, "r").await;
    let c = Client::join(&srv, "r").await;
    let mut d = Client::join(&srv, "r").await;
    for _ in 0..3 {
        a.recv().await;
    }
    for _ in 0..2 {
        b.recv().await;
    }
    // Abrupt end (process killed, network gone: no close frame): the session may still be resumed, so the
    // others hear of it only when the resume window has passed.
    let c_id = c.id();
    drop(c);
    a.expect_silence(Duration::from_millis(250)).await;
    assert_eq!(a.recv().await, ServerMessage::PeerLeft { peer_id: c_id.clone(), reason: LeaveReason::Closed });
    assert_eq!(b.recv().await, ServerMessage::PeerLeft { peer_id: c_id, reason: LeaveReason::Closed });
    // A close frame 1000/1001 (tab closed) means gone for good: announced at once.
    let d_id = d.id();
    d.send_raw(Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 1001.into(),
        reason: "going away".into(),
    })))
    .await;
    let started = std::time::Instant::now();
    assert_eq!(a.recv().await, ServerMessage::PeerLeft { peer_id: d_id.clone(), reason: LeaveReason::Closed });
    assert!(started.elapsed() < Duration::from_millis(300), "a clean close waited for the resume window");
    assert_eq!(b.recv().await, ServerMessage::PeerLeft { peer_id: d_id, reason: LeaveReason::Closed });
    // Explicit leave: the leaver gets a normal close.
    b.send(&ClientMessage::Leave).await;
    assert_eq!(b.expect_close().await, 1000);
    assert_eq!(a.recv().await, ServerMessage::PeerLeft { peer_id: b.id(), reason: LeaveReason::Left });
    a.send(&ClientMessage::Signal { to: b.id(), data: offer("v=0") }).await;
    a.expect_error(ErrorCode::UnknownPeer).await;
}

#[tokio::test]
async fn a_silent_peer_is_announced_within_the_heartbeat_timeout() {
    let srv = TestServer::start_with(|c| {
        c.heartbeat_interval_ms = 300;
        c.heartbeat_timeout_ms = 200;
    })
    .await;
    let mut a = Client::join(&srv, "r").await;
    // `b` is never read again, so its client library never answers the server's pings: a frozen peer.
    let b = Client::join(&srv, "r").await;
    a.recv().await;
    let started = tokio::time::Instant::now();
    // `a` keeps itself alive by reading (its library answers pings) while it waits.
    let msg = a.recv().await;
    let waited = started.elapsed();
    assert_eq!(msg, ServerMessage::PeerLeft { peer_id: b.id(), reason: LeaveReason::Timeout });
    assert!(waited >= Duration::from_millis(400), "announced too early: {waited:?}");
    // The bound is interval + timeout after b's last frame; allow scheduling slack on a loaded machine.
    assert!(waited < Duration::from_millis(500 + 1500), "announced too late: {waited:?}");
    drop(b);
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_its_code_and_memory_stays_bounded() {
    let srv = TestServer::start_with(|c| c.outbox = 16).await;
    let mut a = Client::join(&srv, "r").await;
    let mut b = Client::join(&srv, "r").await;
    a.recv().await;
    // b stops reading. 60 KB relays fill the TCP buffers, then b's 16-message queue.
    let chunk = json!("y".repeat(60_000));
    let mut announced = None;
    for i in 0..2000 {
        a.send(&ClientMessage::Relay { to: Some(b.id()), data: chunk.clone() }).await;
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(Duration::from_millis(1), a.ws.next()).await {
            announced = Some((i, protocol::ServerEnvelope::decode(&t).unwrap().msg));
            break;
        }
    }
    let (sent, msg) = announced.expect("b announced as left before 2000 × 60 KB were sent");
    assert_eq!(msg, ServerMessage::PeerLeft { peer_id: b.id(), reason: LeaveReason::SlowConsumer });
    assert!(sent < 2000);
    // b finds, after whatever was already in flight, the close code telling it to reconnect.
    assert_eq!(b.expect_close().await, 4002);
}

#[tokio::test]
async fn shutdown_closes_sessions_with_reconnect_code() {
    let srv = TestServer::start().await;
    let mut a = Client::join(&srv, "r").await;
    let addr = srv.addr;
    let stopping = tokio::spawn(srv.shutdown());
    assert_eq!(a.expect_close().await, 4000);
    stopping.await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener closed after shutdown");
}

#[tokio::test]
async fn seq_is_gap_free_under_concurrent_senders() {
    let srv = TestServer::start().await;
    let mut target = Client::join(&srv, "r").await;
    let mut senders = Vec::new();
    for _ in 0..4 {
        senders.push(Client::join(&srv, "r").await);
        target.recv().await;
    }
    let to = target.id();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut s| {
            let to = to.clone();
            tokio::spawn(async move {
                for n in 0..50 {
                    s.send(&ClientMessage::Relay { to: Some(to.clone()), data: json!(n) }).await;
                }
                s
            })
        })
        .collect();
    let mut per_sender = std::collections::HashMap::<String, Vec<i64>>::new();
    for _ in 0..200 {
        // `recv` asserts seq = previous + 1 on every message.
        let ServerMessage::Relay { from, data } = target.recv().await else { panic!("expected relay") };
        per_sender.entry(from).or_default().push(data.as_i64().unwrap());
    }
    for (_, got) in per_sender {
        assert_eq!(got, (0..50).collect::<Vec<_>>(), "each sender's messages arrive in order, exactly once");
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn healthz_and_web_demo_are_served() {
    let srv = TestServer::start().await;
    let (status, headers, body) = http_get(&srv, "/healthz").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""status":"ok""#), "{body}");
    assert!(headers.to_ascii_lowercase().contains("application/json"));
    let (status, headers, body) = http_get(&srv, "/").await;
    assert_eq!(status, 200);
    assert!(headers.to_ascii_lowercase().contains("content-type: text/html"), "{headers}");
    assert!(body.contains("<html") || body.contains("<!doctype") || body.contains("<!DOCTYPE"), "{body}");
    let (status, headers, _) = http_get(&srv, "/js/app.js").await;
    assert_eq!(status, 200);
    assert!(headers.to_ascii_lowercase().contains("javascript"), "{headers}");
    let (status, _, _) = http_get(&srv, "/no/such/file").await;
    assert_eq!(status, 404);
}

/// A minimal HTTP/1.1 GET, so the test needs no HTTP client dependency.
async fn http_get(srv: &TestServer, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}
