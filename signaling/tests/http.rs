//! The HTTP transports on the wire: SSE framing and headers, `POST` authorisation and errors, long and short
//! polling, resume through `Last-Event-ID`, and `--transports`. A raw HTTP/1.1 client over TCP, so the tests
//! see the exact bytes a browser or a proxy would.

mod common;

use common::*;
use protocol::{ClientMessage, ErrorCode, LeaveReason, PollResponse, ServerEnvelope, ServerMessage, Welcome};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One HTTP response, body fully read.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Response {
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads a status line and headers.
async fn read_head(r: &mut BufReader<TcpStream>) -> (u16, HashMap<String, String>) {
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status line {line:?}"));
    let mut headers = HashMap::new();
    loop {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    (status, headers)
}

/// Reads the next piece of a chunked body (`None` at its end).
async fn read_chunk(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut line = String::new();
    r.read_line(&mut line).await.ok()?;
    let size = usize::from_str_radix(line.trim(), 16).ok()?;
    let mut buf = vec![0; size + 2];
    r.read_exact(&mut buf).await.ok()?;
    buf.truncate(size);
    (size > 0).then_some(buf)
}

async fn send_request(srv: &TestServer, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    BufReader::new(s)
}

async fn request(srv: &TestServer, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut r = send_request(srv, method, path, headers, body).await;
    tokio::time::timeout(WAIT * 4, async {
        let (status, headers) = read_head(&mut r).await;
        let mut body = Vec::new();
        if headers.get("transfer-encoding").is_some_and(|v| v == "chunked") {
            while let Some(c) = read_chunk(&mut r).await {
                body.extend(c);
            }
        } else {
            r.read_to_end(&mut body).await.unwrap();
        }
        Response { status, headers, body }
    })
    .await
    .expect("a response in time")
}

/// One SSE event as it appeared on the wire.
#[derive(Debug, Clone, Default, PartialEq)]
struct Event {
    id: Option<String>,
    event: Option<String>,
    data: Vec<String>,
}

impl Event {
    fn envelope(&self) -> ServerEnvelope {
        ServerEnvelope::decode(&self.data.join("\n")).unwrap()
    }
}

/// An open event stream.
struct Sse {
    r: BufReader<TcpStream>,
    pending: String,
    headers: HashMap<String, String>,
    status: u16,
    /// Every raw line seen, comments and `retry:` included.
    lines: Vec<String>,
}

impl Sse {
    async fn open(srv: &TestServer, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut r = send_request(srv, "GET", path, headers, b"").await;
        let (status, headers) = tokio::time::timeout(WAIT, read_head(&mut r)).await.expect("headers in time");
        Sse { r, pending: String::new(), headers, status, lines: Vec::new() }
    }

    async fn next(&mut self) -> Event {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(end) = self.pending.find("\n\n") {
                    let block: String = self.pending.drain(..end + 2).collect();
                    let mut ev = Event::default();
                    for line in block.trim_end_matches('\n').split('\n') {
                        self.lines.push(line.to_owned());
                        if let Some(v) = line.strip_prefix("id: ") {
                            ev.id = Some(v.to_owned());
                        } else if let Some(v) = line.strip_prefix("event: ") {
                            ev.event = Some(v.to_owned());
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            ev.data.push(v.to_owned());
                        }
                    }
                    if !ev.data.is_empty() {
                        return ev;
                    }
                    continue;
                }
                let chunk = read_chunk(&mut self.r).await.expect("the stream goes on");
                self.pending.push_str(&String::from_utf8(chunk).expect("UTF-8"));
            }
        })
        .await
        .expect("an event in time")
    }

    async fn message(&mut self) -> (String, ServerMessage) {
        let ev = self.next().await;
        assert_eq!(ev.event, None, "{ev:?}");
        (ev.id.clone().unwrap_or_default(), ev.envelope().msg)
    }
}

fn welcome(msg: ServerMessage) -> Welcome {
    match msg {
        ServerMessage::Welcome(w) => w,
        other => panic!("expected welcome, got {other:?}"),
    }
}

async fn post(srv: &TestServer, w: &Welcome, body: &str) -> Response {
    let auth = format!("Bearer {}", w.session.token);
    request(srv, "POST", &w.session.url, &[("authorization", &auth), ("content-type", "application/json")], body.as_bytes()).await
}

#[tokio::test]
async fn sse_streams_with_the_right_headers_and_ids_and_posts_are_authorised() {
    let srv = TestServer::start().await;
    let mut s = Sse::open(&srv, "/v1/rooms/r/sse", &[]).await;
    assert_eq!(s.status, 200);
    assert!(s.headers["content-type"].starts_with("text/event-stream"), "{:?}", s.headers);
    assert_eq!(s.headers["x-accel-buffering"], "no");
    assert!(s.headers["cache-control"].contains("no-cache"));
    let (id, msg) = s.message().await;
    assert!(s.lines.iter().any(|l| l == "retry: 1000"), "{:?}", s.lines);
    let w = welcome(msg);
    assert_eq!(id, format!("{}-1", w.session.token));
    assert_eq!(w.session.url, format!("/v1/sessions/{}", w.peer_id));

    // POST: accepted, answered on the stream with the same seq discipline.
    let r = post(&srv, &w, r#"{"type":"ping","id":7,"cseq":1}"#).await;
    assert_eq!(r.status, 204);
    let (id, msg) = s.message().await;
    assert_eq!(id, format!("{}-2", w.session.token));
    assert_eq!(msg, ServerMessage::Pong { id: Some(7), received: Some(1) });
    // A copy of cseq 1 (a resend) is dropped; the next ping shows the server still has 1... then 2.
    post(&srv, &w, r#"{"type":"ping","id":8,"cseq":1}"#).await;
    post(&srv, &w, r#"{"type":"ping","id":9,"cseq":2}"#).await;
    assert_eq!(s.message().await.1, ServerMessage::Pong { id: Some(9), received: Some(2) });

    // Bad input: a stable code in the body, and on the stream like on a WebSocket.
    let r = post(&srv, &w, "{not json").await;
    assert_eq!((r.status, r.json::<Value>()["code"].clone()), (400, json!("bad-json")));
    assert!(matches!(s.message().await.1, ServerMessage::Error { code: ErrorCode::BadJson, .. }));
    let big = format!(r#"{{"type":"relay","data":"{}"}}"#, "x".repeat(70_000));
    let r = post(&srv, &w, &big).await;
    assert_eq!((r.status, r.json::<Value>()["code"].clone()), (413, json!("too-large")));
    assert!(matches!(s.message().await.1, ServerMessage::Error { code: ErrorCode::TooLarge, .. }));
    let huge = format!(r#"{{"type":"relay","data":"{}"}}"#, "x".repeat(300_000));
    let r = post(&srv, &w, &huge).await;
    assert_eq!((r.status, r.json::<Value>()["code"].clone()), (413, json!("too-large")), "above the hard cap");

    // Authorisation: no token, a wrong token, another session's URL, a gone session.
    let r = request(&srv, "POST", &w.session.url, &[], br#"{"type":"leave"}"#).await;
    assert_eq!((r.status, r.json::<Value>()["code"].clone()), (401, json!("unauthorized")));
    let r = request(&srv, "POST", &w.session.url, &[("authorization", "Bearer 00000000000000000000000000000000")], b"{}").await;
    assert_eq!((r.status, r.json::<Value>()["code"].clone()), (404, json!("session-expired")));
    let mut other = Sse::open(&srv, "/v1/rooms/r/sse", &[]).await;
    let w2 = welcome(other.message().await.1);
    let auth = format!("Bearer {}", w2.session.token);
    let r = request(&srv, "POST", &w.session.url, &[("authorization", &auth)], br#"{"type":"leave"}"#).await;
    assert_eq!(r.status, 401, "a token opens only its own session");

    // Leave: the stream ends with a close event, the others see peer-left at once.
    assert!(matches!(s.message().await.1, ServerMessage::PeerJoined { .. }));
    post(&srv, &w, r#"{"type":"leave"}"#).await;
    let close = s.next().await;
    assert_eq!(close.event.as_deref(), Some("close"));
    assert_eq!(serde_json::from_str::<Value>(&close.data[0]).unwrap()["code"], 1000);
    assert_eq!(other.message().await.1, ServerMessage::PeerLeft { peer_id: w.peer_id.clone(), reason: LeaveReason::Left });
    let r = post(&srv, &w, r#"{"type":"ping"}"#).await;
    assert_eq!(r.status, 404);
}

/// Form, multipart and text bodies (what a cross-site HTML form or `sendBeacon` sends without a preflight) are
/// not client messages: 415 `unsupported-media-type`, and nothing reaches the session.
#[tokio::test]
async fn posts_with_a_wrong_content_type_get_415_and_nothing_happens() {
    let srv = TestServer::start().await;
    let mut s = Sse::open(&srv, "/v1/rooms/r/sse", &[]).await;
    let w = welcome(s.message().await.1);
    let auth = format!("Bearer {}", w.session.token);
    for ct in ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain;charset=UTF-8", "application/jsonx", "json"] {
        let r = request(&srv, "POST", &w.session.url, &[("authorization", &auth), ("content-type", ct)], br#"{"type":"leave"}"#).await;
        assert_eq!((r.status, r.json::<Value>()["code"].clone()), (415, json!("unsupported-media-type")), "{ct}");
    }
    // Parameters and case do not matter; no Content-Type at all is a native client's bare body.
    let mut cseq = 0;
    for ct in [Some("application/json; charset=utf-8"), Some("Application/JSON"), None] {
        cseq += 1;
        let body = format!(r#"{{"type":"ping","id":{cseq},"cseq":{cseq}}}"#);
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(ct) = ct {
            headers.push(("content-type", ct));
        }
        let r = request(&srv, "POST", &w.session.url, &headers, body.as_bytes()).await;
        assert_eq!(r.status, 204, "{ct:?}");
        assert_eq!(s.message().await.1, ServerMessage::Pong { id: Some(cseq), received: Some(cseq) });
    }
}

#[tokio::test]
async fn payload_line_breaks_cross_sse_intact_and_cannot_forge_fields() {
    let srv = TestServer::start().await;
    let mut s = Sse::open(&srv, "/v1/rooms/r/sse", &[]).await;
    let w = welcome(s.message().await.1);
    let mut sender = Client::join(&srv, "r").await;
    assert!(matches!(s.message().await.1, ServerMessage::PeerJoined { .. }));
    // Everything a payload could use to break out of its `data:` line.
    let nasty = "one\ntwo\r\nthree\rfour\n\nevent: close\ndata: {\"code\":4500}\n\nid: forged-99\n\0end";
    sender.send(&ClientMessage::Relay { to: Some(w.peer_id.clone()), data: json!({"text": nasty, "n": [1, 2]}) }).await;
    let ev = s.next().await;
    assert_eq!(ev.event, None);
    assert_eq!(ev.id, Some(format!("{}-3", w.session.token)));
    match ev.envelope().msg {
        ServerMessage::Relay { data, .. } => assert_eq!(data, json!({"text": nasty, "n": [1, 2]})),
        other => panic!("{other:?}"),
    }
    // No line on the wire other than our own fields: nothing forged a close or an id.
    assert!(s.lines.iter().all(|l| l.starts_with("data: ") || l.starts_with("id: ") || l.starts_with("retry: ")), "{:?}", s.lines);
    assert_eq!(s.lines.iter().filter(|l| l.starts_with("id: ")).count(), 3);
}

#[tokio::test]
async fn hostile_room_names_and_event_ids_are_refused_without_breaking_the_stream() {
    let srv = TestServer::start().await;
    // A room name carrying CR/LF (percent-encoded: raw ones cannot be in a request line).
    for room in ["a%0D%0Aevent:%20close", "a%0Aid:%20x", "..", "a%00b"] {
        let mut s = Sse::open(&srv, &format!("/v1/rooms/{room}/sse"), &[]).await;
        assert_eq!(s.status, 200, "always 200 for EventSource");
        let err = s.next().await;
        assert_eq!((err.id.clone(), err.event.clone()), (None, None));
        assert!(matches!(err.envelope().msg, ServerMessage::Error { code: ErrorCode::BadRoom, .. }), "{room}");
        let close = s.next().await;
        assert_eq!(close.event.as_deref(), Some("close"));
        assert_eq!(serde_json::from_str::<Value>(&close.data[0]).unwrap()["code"], 4500);
        assert_eq!(s.lines.iter().filter(|l| l.starts_with("event: ")).count(), 1, "{:?}", s.lines);
    }
    // Hostile or malformed Last-Event-IDs and resume tokens never resume anything: a fresh session, said so.
    let hostile = ["abc", "abc-", "zz-1", "-5", "0123456789abcdef0123456789abcdef-", "x-1 evil"];
    for id in hostile {
        let mut s = Sse::open(&srv, "/v1/rooms/r/sse", &[("last-event-id", id)]).await;
        let (ev_id, msg) = s.message().await;
        let w = welcome(msg);
        assert_eq!(w.recovered, Some(false), "{id}");
        assert_eq!(ev_id, format!("{}-1", w.session.token));
    }
    let mut s = Sse::open(&srv, "/v1/rooms/r/sse?resume=abc%0D%0Aevent:%20close&after=1", &[]).await;
    let w = welcome(s.message().await.1);
    assert_eq!(w.recovered, Some(false));
    assert!(s.lines.iter().all(|l| l != "event: close"));
}

#[tokio::test]
async fn last_event_id_resumes_with_every_missed_message_once() {
    let srv = TestServer::start().await;
    let mut s = Sse::open(&srv, "/v1/rooms/r/sse", &[]).await;
    let w = welcome(s.message().await.1);
    let mut b = Client::join(&srv, "r").await;
    let (last_id, _) = s.message().await; // peer-joined
    for i in 0..3 {
        b.send(&ClientMessage::Relay { to: Some(w.peer_id.clone()), data: json!(i) }).await;
    }
    let (id0, _) = s.message().await;
    drop(s); // the connection drops after relay 0 was read; 1 and 2 are in flight or not sent yet
    for i in 3..5 {
        b.send(&ClientMessage::Relay { to: Some(w.peer_id.clone()), data: json!(i) }).await;
    }
    b.assert_healthy().await; // everything b sent has been handled
    assert_ne!(last_id, id0);
    // What a browser does by itself: the same URL with Last-Event-ID.
    let mut s = Sse::open(&srv, "/v1/rooms/r/sse", &[("last-event-id", &id0)]).await;
    let mut got = Vec::new();
    loop {
        match s.message().await.1 {
            ServerMessage::Relay { data, .. } => got.push(data),
            ServerMessage::Resumed { replayed, received } => {
                assert_eq!((replayed, received), (4, 0));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, [json!(1), json!(2), json!(3), json!(4)]);
    // The other peer never saw us leave.
    b.expect_silence(Duration::from_millis(100)).await;
}

async fn poll(srv: &TestServer, query: &str, token: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    request(srv, "GET", &format!("/v1/rooms/r/poll{query}"), &headers, b"").await
}

#[tokio::test]
async fn long_polls_wait_for_news_and_short_polls_do_not() {
    let srv = TestServer::start_with(|c| {
        c.heartbeat_interval_ms = 2000;
        c.heartbeat_timeout_ms = 1000;
    })
    .await;
    let joined = poll(&srv, "", None).await;
    assert_eq!(joined.headers["content-type"], "application/json");
    assert_eq!(joined.headers["cache-control"], "no-store");
    let first: PollResponse = joined.json();
    let ServerMessage::Welcome(w) = &first.messages[0].msg else { panic!("{first:?}") };
    let token = w.session.token.clone();

    // Short poll: nothing new, answered at once.
    let t = Instant::now();
    let r: PollResponse = poll(&srv, "?after=1&wait_ms=0", Some(&token)).await.json();
    assert!(r.messages.is_empty() && t.elapsed() < Duration::from_millis(500));

    // Long poll: held until a message comes.
    let mut b = Client::join(&srv, "r").await;
    let waiting = {
        let token = token.clone();
        let addr = srv.addr;
        tokio::spawn(async move {
            let srv = TestServer::attach(addr);
            let t = Instant::now();
            let r: PollResponse = poll(&srv, "?after=2", Some(&token)).await.json();
            (r, t.elapsed())
        })
    };
    // seq 2 is b's peer-joined; the poll asks for news after it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.send(&ClientMessage::Relay { to: None, data: json!("news") }).await;
    let (r, took) = waiting.await.unwrap();
    assert_eq!(r.messages.len(), 1);
    assert!(matches!(&r.messages[0].msg, ServerMessage::Relay { data, .. } if data == &json!("news")));
    assert!(took >= Duration::from_millis(250), "answered before the news: {took:?}");

    // A long poll with nothing new ends empty after wait_ms (capped at the heartbeat interval).
    let t = Instant::now();
    let r: PollResponse = poll(&srv, "?after=3&wait_ms=300", Some(&token)).await.json();
    assert!(r.messages.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(250));

    // A gone session is a 404 with a stable code, never a silent new session.
    let r = poll(&srv, "?after=3", Some("0123456789abcdef0123456789abcdef")).await;
    assert_eq!((r.status, r.json::<Value>()["code"].clone()), (404, json!("session-expired")));
    // Bad rooms are refused with a status, the error and the close.
    let r = request(&srv, "GET", "/v1/rooms/a%0Ab/poll", &[], b"").await;
    assert_eq!(r.status, 400);
    let body: PollResponse = r.json();
    assert_eq!(body.close.map(|c| c.code), Some(4500));
}

#[tokio::test]
async fn a_silent_polling_client_is_announced_after_interval_plus_timeout() {
    let srv = TestServer::start_with(|c| {
        c.heartbeat_interval_ms = 400;
        c.heartbeat_timeout_ms = 200;
    })
    .await;
    let mut a = Client::join(&srv, "r").await;
    let first: PollResponse = poll(&srv, "", None).await.json();
    let ServerMessage::Welcome(w) = &first.messages[0].msg else { panic!() };
    let ServerMessage::PeerJoined { peer_id } = a.recv().await else { panic!() };
    assert_eq!(peer_id, w.peer_id);
    let t = Instant::now();
    // The poller never polls again.
    assert_eq!(a.recv().await, ServerMessage::PeerLeft { peer_id, reason: LeaveReason::Timeout });
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test]
async fn disabled_transports_are_absent() {
    let srv = TestServer::start_with(|c| c.transports = vec![signaling::transport::Kind::Sse]).await;
    let r = request(&srv, "GET", "/v1/rooms/r/ws", &[("upgrade", "websocket"), ("connection", "upgrade")], b"").await;
    assert_eq!(r.status, 404);
    assert_eq!(poll(&srv, "", None).await.status, 404);
    let mut s = Sse::open(&srv, "/v1/rooms/r/sse", &[]).await;
    assert!(matches!(s.message().await.1, ServerMessage::Welcome(_)));
}
