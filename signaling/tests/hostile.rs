//! Hostile input against a real server on an ephemeral loopback port: what a scanner or an abusive client
//! sends, and what it must get back. Each test is a row (or a few) of the table in `docs/security.md`;
//! the rows proven elsewhere (ws.rs, http.rs, ice.rs, …) are cited there by name.

mod common;

use common::*;
use protocol::{ClientMessage, ErrorCode, ServerMessage};
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Sends `raw` bytes as they are and reads the whole answer (until the server closes or 3 s pass).
async fn raw_http(srv: &TestServer, raw: &[u8]) -> String {
    let mut tcp = TcpStream::connect(srv.addr).await.expect("connect");
    tcp.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in `answer`.
fn status(answer: &str) -> u16 {
    answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// A WebSocket join to `room_path` (already percent-encoded) is refused with `bad-room` and closed with 4500.
async fn expect_bad_room(srv: &TestServer, room_path: &str) {
    let mut ws = connect(srv, room_path).await;
    let env = recv_envelope(&mut ws).await.expect("an error before the close");
    assert!(matches!(env.msg, ServerMessage::Error { code: ErrorCode::BadRoom, .. }), "{room_path}: {:?}", env.msg);
    assert_eq!(expect_close(&mut ws).await, 4500, "{room_path}");
}

#[tokio::test]
async fn room_names_with_control_bidi_or_traversal_characters_are_refused() {
    let srv = TestServer::start().await;
    for room in [
        "a%00b",           // NUL
        "a%0Ab",           // LF alone
        "a%09b",           // tab
        "abc%E2%80%AEgpj", // RIGHT-TO-LEFT OVERRIDE: "abcjpg" that displays reversed
        "%E2%80%8Bdemo",   // zero-width space: a look-alike of "demo"
        "dem%D0%BE",       // Cyrillic o: a homoglyph of "demo"
        "..%2F..%2Fetc%2Fpasswd",
        "..%5C..%5Cwindows",
        "%2E%2E",
        ".",
        "%7E",
        "a%3Bb",
        "%FF%FE",          // not UTF-8 once decoded
    ] {
        expect_bad_room(&srv, room).await;
    }
    // The refusals hurt nobody: a real room still works.
    let mut ok = Client::join(&srv, "demo").await;
    ok.assert_healthy().await;
}

#[tokio::test]
async fn peer_ids_with_control_or_bidi_characters_reach_nobody() {
    let srv = TestServer::start().await;
    let mut a = Client::join(&srv, "r").await;
    let mut b = Client::join(&srv, "r").await;
    a.recv().await; // peer-joined
    let real = b.id();
    for to in [
        format!("{real}\r\n"),
        format!("{real}\u{0}"),
        format!("\u{202e}{real}"),
        format!(" {real}"),
        real.to_uppercase(),
        "../".repeat(20),
        "x".repeat(10_000),
        String::new(),
    ] {
        if to == real {
            continue; // ids are already upper-case-free on some builds; that case would be a real send
        }
        a.send(&ClientMessage::Signal { to: to.clone(), data: protocol::SignalData::EndOfCandidates }).await;
        a.expect_error(ErrorCode::UnknownPeer).await;
        a.send(&ClientMessage::Relay { to: Some(to), data: json!("hi") }).await;
        a.expect_error(ErrorCode::UnknownPeer).await;
    }
    b.expect_silence(Duration::from_millis(200)).await;
    a.assert_healthy().await;
}

#[tokio::test]
async fn odd_json_gets_a_stable_code_and_the_session_goes_on() {
    let srv = TestServer::start().await;
    let mut a = Client::join(&srv, "r").await;
    let mut b = Client::join(&srv, "r").await;
    a.recv().await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_relay = format!(r#"{{"type":"relay","data":{}}}"#, deep);
    let deep_object = format!(r#"{{"type":"relay","data":{}1{}}}"#, r#"{"a":"#.repeat(5_000), "}".repeat(5_000));
    let cases: Vec<(String, ErrorCode)> = vec![
        (String::new(), ErrorCode::BadJson),
        ("   ".into(), ErrorCode::BadJson),
        ("null".into(), ErrorCode::BadJson),
        ("\"ping\"".into(), ErrorCode::BadJson),
        ("\u{feff}{\"type\":\"ping\"}".into(), ErrorCode::BadJson),
        (deep.clone(), ErrorCode::BadJson),
        (deep_relay, ErrorCode::BadJson),
        (deep_object, ErrorCode::BadJson),
        (r#"{"type":"ping","id":1e400}"#.into(), ErrorCode::BadJson),
        (r#"{"type":"ping","id":-1}"#.into(), ErrorCode::BadMessage),
        (r#"{"type":"ping","id":18446744073709551616}"#.into(), ErrorCode::BadMessage),
        (r#"{"type":7}"#.into(), ErrorCode::UnknownType),
        (r#"{"type":null}"#.into(), ErrorCode::UnknownType),
        (r#"{"type":"PING"}"#.into(), ErrorCode::UnknownType),
        (r#"{"type":"ping\u0000"}"#.into(), ErrorCode::UnknownType),
        (r#"{"type":"signal","to":null,"data":{"kind":"end-of-candidates"}}"#.into(), ErrorCode::BadMessage),
        (r#"{"type":"signal","to":"x","data":"offer"}"#.into(), ErrorCode::BadMessage),
        (r#"{"type":"signal","to":"x","data":{"kind":"offer"}}"#.into(), ErrorCode::BadMessage),
        (r#"{"type":"signal","to":"x","data":{"kind":"offer","sdp":7}}"#.into(), ErrorCode::BadMessage),
        (r#"{"type":"ping","cseq":"one"}"#.into(), ErrorCode::BadMessage),
        ("{\"type\":\"ping\"}{\"type\":\"ping\"}".into(), ErrorCode::BadJson),
    ];
    for (text, code) in cases {
        a.send_raw(Message::text(text.clone())).await;
        match a.recv().await {
            ServerMessage::Error { code: got, .. } => {
                let shown: String = text.chars().take(60).collect();
                assert_eq!(got, code, "{shown}");
            }
            other => panic!("{}: expected error {code}, got {other:?}", text.chars().take(60).collect::<String>()),
        }
    }
    b.expect_silence(Duration::from_millis(200)).await;
    a.assert_healthy().await;
}

#[tokio::test]
async fn a_signal_to_oneself_reaches_nobody() {
    let srv = TestServer::start().await;
    let mut a = Client::join(&srv, "r").await;
    let mut b = Client::join(&srv, "r").await;
    a.recv().await;
    a.send(&ClientMessage::Relay { to: Some(a.id()), data: json!("echo?") }).await;
    a.expect_error(ErrorCode::UnknownPeer).await;
    b.expect_silence(Duration::from_millis(200)).await;
    a.assert_healthy().await;
}

/// The `resume` token of a session, from its welcome.
fn token_of(c: &Client) -> String {
    c.welcome.session.token.clone()
}

/// A connection that asked to resume `token` in `room`, and the welcome it got (fresh or recovered).
async fn resume(srv: &TestServer, room: &str, token: &str, after: u64) -> (Ws, protocol::Welcome) {
    let url = format!("ws://{}/v1/rooms/{room}/ws?resume={}&after={after}", srv.addr, urlencode(token));
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("connect");
    let env = recv_envelope(&mut ws).await.expect("an answer to the resume");
    let ServerMessage::Welcome(welcome) = env.msg else { panic!("expected welcome, got {:?}", env.msg) };
    (ws, welcome)
}

#[tokio::test]
async fn guessed_resume_secrets_get_a_fresh_session_and_take_over_nothing() {
    let srv = TestServer::start().await;
    let mut a = Client::join(&srv, "r").await;
    let mut b = Client::join(&srv, "r").await;
    a.recv().await;
    let real = token_of(&a);
    let mut guesses = vec![
        "0".repeat(32),
        "f".repeat(32),
        real[..31].to_string(),
        format!("{real}0"),
        real.to_uppercase(),
        "../../../../etc/passwd".into(),
        "%00".into(),
    ];
    // One hex digit off: as close to the real secret as a guess can be.
    let last = real.chars().last().unwrap();
    guesses.push(format!("{}{}", &real[..31], if last == '0' { '1' } else { '0' }));
    for guess in guesses {
        if guess == real {
            continue;
        }
        let (ws, w) = resume(&srv, "r", &guess, 5).await;
        assert_ne!(w.peer_id, a.id(), "{guess} took over a's session");
        assert_eq!(w.recovered, Some(false), "{guess}");
        drop(ws);
    }
    // `a` never lost its session: still answering (past the newcomers' joins and leaves), and `b` never
    // saw `a` leave.
    a.send(&ClientMessage::Ping { id: Some(77) }).await;
    loop {
        match a.recv().await {
            ServerMessage::Pong { id: Some(77), .. } => break,
            ServerMessage::PeerJoined { .. } | ServerMessage::PeerLeft { .. } => continue,
            other => panic!("the real session got {other:?}"),
        }
    }
    let a_id = a.id();
    while let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(Duration::from_millis(300), futures_util::StreamExt::next(&mut b.ws)).await {
        let env = protocol::ServerEnvelope::decode(&t).unwrap();
        if let ServerMessage::PeerLeft { peer_id, .. } = env.msg {
            assert_ne!(peer_id, a_id, "a guess ended the real session");
        }
    }
}

#[tokio::test]
async fn a_resume_secret_opens_only_its_own_room_and_not_after_the_session_ended() {
    let srv = TestServer::start_with(|c| c.resume_window_ms = 300).await;
    let a = Client::join(&srv, "alpha").await;
    let mut watcher = Client::join(&srv, "alpha").await;
    let token = token_of(&a);
    // The secret of a session in `alpha` used on `beta`: a new session there, `alpha`'s is untouched.
    let (_cross, w) = resume(&srv, "beta", &token, 1).await;
    assert_ne!(w.peer_id, a.id());
    assert_eq!(w.room, "beta");
    assert_eq!(w.recovered, Some(false));
    watcher.expect_silence(Duration::from_millis(100)).await;
    // Replayed after the session ended (left, window over): nothing to take over.
    let a_id = a.id();
    drop(a);
    match watcher.recv().await {
        ServerMessage::PeerLeft { peer_id, .. } => assert_eq!(peer_id, a_id),
        other => panic!("expected peer-left, got {other:?}"),
    }
    let (_replay, w) = resume(&srv, "alpha", &token, 1).await;
    assert_ne!(w.peer_id, a_id, "a dead session's secret was honoured");
    assert_eq!(w.recovered, Some(false));
}

/// Percent-encodes everything but unreserved characters.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[tokio::test]
async fn path_traversal_never_reaches_a_file_outside_the_demo() {
    let dir = std::env::temp_dir().join(format!("hostile-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "demo").unwrap();
    let root = dir.clone();
    for srv in [TestServer::start().await, TestServer::start_with(move |c| c.web_root = Some(root)).await] {
        for path in [
            "/../../../../etc/passwd",
            "/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
            "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "/....//....//etc/passwd",
            "//etc/passwd",
            "/%00index.html",
            "/index.html%00.png",
            "/..\\..\\etc\\passwd",
        ] {
            let answer = raw_http(&srv, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await;
            assert!(!answer.contains("root:"), "{path} served /etc/passwd");
            let code = status(&answer);
            assert!(code == 404 || code == 400, "{path}: {code}");
        }
        let answer = raw_http(&srv, b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert_eq!(status(&answer), 200);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn malformed_http_is_refused_and_the_server_keeps_serving() {
    let srv = TestServer::start().await;
    let huge_path = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(200_000));
    let many_headers = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n", "X-A: b\r\n".repeat(500));
    let huge_header = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(500_000));
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("garbage", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n".to_vec(), &[400, 0]),
        ("no version", b"GET /healthz\r\n\r\n".to_vec(), &[400, 0]),
        ("bad version", b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(), &[400, 505, 0]),
        ("NUL in header", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_vec(), &[400, 0]),
        ("bare LF header folding", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".to_vec(), &[400, 0]),
        ("huge path", huge_path.into_bytes(), &[400, 414, 431, 0]),
        ("500 headers", many_headers.into_bytes(), &[400, 431, 0]),
        ("500 KB header", huge_header.into_bytes(), &[400, 431, 0]),
        (
            "CL and TE together (smuggling)",
            b"POST /v1/sessions/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /evil HTTP/1.1\r\n\r\n".to_vec(),
            &[400, 401, 411],
        ),
        (
            "two Content-Lengths",
            b"POST /v1/sessions/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde".to_vec(),
            &[400],
        ),
        ("negative Content-Length", b"POST /v1/sessions/x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(), &[400]),
        ("bad chunk size", b"POST /v1/sessions/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(), &[400, 401, 411, 0]),
        ("unknown method", b"BREW /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), &[404, 405]),
        ("websocket upgrade without key", b"GET /v1/rooms/r/ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(), &[400, 404, 426]),
        ("websocket route without upgrade", b"GET /v1/rooms/r/ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), &[400, 404, 426]),
    ];
    for (name, raw, allowed) in cases {
        let answer = raw_http(&srv, &raw).await;
        // 0: the server closed without an answer, which is a clean refusal too.
        let code = if answer.is_empty() { 0 } else { status(&answer) };
        assert!(allowed.contains(&code), "{name}: got {code}: {}", answer.chars().take(200).collect::<String>());
        assert!(!answer.contains("/evil"), "{name}: a smuggled request was answered");
    }
    let answer = raw_http(&srv, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status(&answer), 200, "still serving after the garbage");
}
