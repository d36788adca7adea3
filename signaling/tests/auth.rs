//! Join tokens and the origin allowlist on the wire: every way a token can be missing, forged, stale or for
//! the wrong room is refused with its code and 4503; the ways a good one travels (query, Bearer, first
//! WebSocket message) work; resumes need no join token but cannot be used to get around one; origins and
//! CORS; and the token never reaches the log.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use futures_util::SinkExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use protocol::{ClientMessage, ErrorCode, PollResponse, Secret, ServerMessage};
use serde_json::{Value, json};
use signaling::auth::Claims;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A file in a fresh temp dir, deleted with the dir at process exit is not needed: names are unique.
fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("signaling-auth-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn rand_suffix() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

fn room_claims(room: &str) -> Claims {
    Claims { room: Some(room.into()), exp: now() + 600, ..Claims::default() }
}

fn hs256(claims: &Claims, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
}

struct EdKeys {
    private_pem: String,
    public_pem: String,
}

fn ed_keys() -> EdKeys {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    EdKeys { private_pem: kp.serialize_pem(), public_pem: kp.public_key_pem() }
}

fn eddsa(claims: &Claims, keys: &EdKeys) -> String {
    let key = EncodingKey::from_ed_pem(keys.private_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &key).unwrap()
}

/// `alg: none`, no signature: what a forger sends hoping the server trusts the header.
fn alg_none(claims: &Claims) -> String {
    let header = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = B64.encode(serde_json::to_vec(claims).unwrap());
    format!("{header}.{body}.")
}

async fn hs_server() -> TestServer {
    let path = temp_file("secret", &[SECRET, b"\n"].concat());
    TestServer::start_with(|cfg| {
        cfg.auth.auth_secret_file = Some(path);
        cfg.auth.auth_timeout_ms = 300;
    })
    .await
}

async fn ed_server(keys: &EdKeys) -> TestServer {
    let path = temp_file("pub.pem", keys.public_pem.as_bytes());
    TestServer::start_with(|cfg| cfg.auth.auth_public_key = Some(path)).await
}

async fn ws(srv: &TestServer, room: &str, query: &str) -> Ws {
    let url = format!("{}?{query}", srv.ws_url(room));
    tokio_tungstenite::connect_async(url).await.expect("upgrade").0
}

/// The refusal a client sees: the `error` code, then the close code.
async fn refused(ws: &mut Ws) -> (ErrorCode, u16) {
    let env = recv_envelope(ws).await.expect("an error before the close");
    let ServerMessage::Error { code, message } = env.msg else { panic!("expected error, got {:?}", env.msg) };
    assert!(!message.contains("eyJ"), "the message echoes a token: {message}");
    (code, expect_close(ws).await)
}

async fn welcomed(ws: &mut Ws) -> protocol::Welcome {
    match recv_envelope(ws).await.expect("welcome").msg {
        ServerMessage::Welcome(w) => w,
        other => panic!("expected welcome, got {other:?}"),
    }
}

// ---- raw HTTP, to see exact statuses and headers ----

#[derive(Debug)]
struct Response {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn request(srv: &TestServer, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-length: {}\r\n", srv.addr, body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut r = BufReader::new(s);
    tokio::time::timeout(WAIT, async {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
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
        let mut body = Vec::new();
        if headers.get("transfer-encoding").is_some_and(|v| v == "chunked") {
            // An SSE stream: read until its close event (a refusal) or its welcome (it would go on).
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap() == 0 {
                    break;
                }
                let Ok(size) = usize::from_str_radix(line.trim(), 16) else { break };
                if size == 0 {
                    break;
                }
                let mut buf = vec![0; size + 2];
                r.read_exact(&mut buf).await.unwrap();
                body.extend(&buf[..size]);
                let seen = String::from_utf8_lossy(&body);
                if seen.contains("event: close") || seen.contains("\"type\":\"welcome\"") {
                    break;
                }
            }
        } else {
            r.read_to_end(&mut body).await.unwrap();
        }
        Response { status, headers, body }
    })
    .await
    .expect("a response in time")
}

/// The `error` code and close code of a refused SSE join (always `200 text/event-stream`).
fn sse_refusal(res: &Response) -> (String, u16) {
    assert_eq!(res.status, 200);
    let text = String::from_utf8_lossy(&res.body).into_owned();
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.len(), 2, "{text}");
    let err: Value = serde_json::from_str(data[0]).unwrap();
    let close: Value = serde_json::from_str(data[1]).unwrap();
    (err["code"].as_str().unwrap().to_owned(), close["code"].as_u64().unwrap() as u16)
}

// ---- tokens ----

#[tokio::test]
async fn no_token_when_required_is_refused_on_every_transport() {
    let srv = hs_server().await;
    // WebSocket: waits --auth-timeout-ms (300 ms here) for an `auth` message, then refuses.
    let mut c = connect(&srv, "r").await;
    let started = std::time::Instant::now();
    assert_eq!(refused(&mut c).await, (ErrorCode::Unauthorized, 4503));
    assert!(started.elapsed() >= Duration::from_millis(250), "closed before the auth timeout");
    let sse = request(&srv, "GET", "/v1/rooms/r/sse", &[], b"").await;
    assert_eq!(sse_refusal(&sse), ("unauthorized".into(), 4503));
    let poll = request(&srv, "GET", "/v1/rooms/r/poll", &[], b"").await;
    assert_eq!(poll.status, 401);
    let body: PollResponse = serde_json::from_slice(&poll.body).unwrap();
    assert!(matches!(&body.messages[0].msg, ServerMessage::Error { code: ErrorCode::Unauthorized, .. }));
    assert_eq!(body.close.unwrap().code, 4503);
    assert_eq!(sessions(&srv).await, 0);
}

#[tokio::test]
async fn bad_tokens_are_refused_with_their_code_and_4503() {
    let keys = ed_keys();
    let other = ed_keys();
    let hs = hs_server().await;
    let ed = ed_server(&keys).await;
    let exp_past = Claims { exp: now() - 3600, ..room_claims("r") };
    let nbf_future = Claims { nbf: Some(now() + 3600), ..room_claims("r") };
    let no_room = Claims { exp: now() + 600, ..Claims::default() };
    let both = Claims { room_prefix: Some("r".into()), ..room_claims("r") };
    let bad_name = Claims { name: Some("a\nb".into()), ..room_claims("r") };
    let cases: Vec<(&str, &TestServer, String, ErrorCode)> = vec![
        ("expired", &hs, hs256(&exp_past, SECRET), ErrorCode::TokenExpired),
        ("not yet valid", &hs, hs256(&nbf_future, SECRET), ErrorCode::Unauthorized),
        ("alg none (hs config)", &hs, alg_none(&room_claims("r")), ErrorCode::Unauthorized),
        ("alg none (eddsa config)", &ed, alg_none(&room_claims("r")), ErrorCode::Unauthorized),
        // The classic confusion: the public key's PEM used as an HMAC secret.
        ("hs256 against eddsa", &ed, hs256(&room_claims("r"), keys.public_pem.as_bytes()), ErrorCode::Unauthorized),
        ("eddsa against hs256", &hs, eddsa(&room_claims("r"), &keys), ErrorCode::Unauthorized),
        ("wrong hs key", &hs, hs256(&room_claims("r"), b"another-secret-another-secret-xx"), ErrorCode::Unauthorized),
        ("wrong ed key", &ed, eddsa(&room_claims("r"), &other), ErrorCode::Unauthorized),
        ("wrong room", &hs, hs256(&room_claims("other"), SECRET), ErrorCode::Unauthorized),
        ("prefix mismatch", &hs, hs256(&Claims { room: None, room_prefix: Some("team-".into()), ..room_claims("") }, SECRET), ErrorCode::Unauthorized),
        ("no room claim", &hs, hs256(&no_room, SECRET), ErrorCode::Unauthorized),
        ("room and prefix", &hs, hs256(&both, SECRET), ErrorCode::Unauthorized),
        ("control char in name", &hs, hs256(&bad_name, SECRET), ErrorCode::Unauthorized),
        ("malformed", &hs, "not.a.jwt".into(), ErrorCode::Unauthorized),
        ("garbage", &hs, "%00%ff".into(), ErrorCode::Unauthorized),
    ];
    for (what, srv, token, code) in cases {
        let mut c = ws(srv, "r", &format!("token={token}")).await;
        assert_eq!(refused(&mut c).await, (code, 4503), "{what}");
    }
    // Also with exp missing altogether (hand-built, since Claims always has one).
    let no_exp = hs_with_raw_claims(&json!({"room": "r"}));
    let mut c = ws(&hs, "r", &format!("token={no_exp}")).await;
    assert_eq!(refused(&mut c).await, (ErrorCode::Unauthorized, 4503), "no exp");
    assert_eq!(sessions(&hs).await + sessions(&ed).await, 0);
}

fn hs_with_raw_claims(claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET).unwrap()).unwrap()
}

#[tokio::test]
async fn good_tokens_join_by_query_bearer_first_message_sse_and_poll() {
    let keys = ed_keys();
    let hs = hs_server().await;
    let ed = ed_server(&keys).await;
    let t = hs256(&room_claims("r"), SECRET);
    welcomed(&mut ws(&hs, "r", &format!("token={t}")).await).await;
    welcomed(&mut ws(&ed, "r", &format!("token={}", eddsa(&room_claims("r"), &keys))).await).await;
    // room_prefix covers every room starting with it.
    let prefix = hs256(&Claims { room: None, room_prefix: Some("team-".into()), ..room_claims("") }, SECRET);
    welcomed(&mut ws(&hs, "team-a", &format!("token={prefix}")).await).await;
    // A not-yet-valid token within the leeway (default 30 s) passes.
    let soon = hs256(&Claims { nbf: Some(now() + 5), ..room_claims("r") }, SECRET);
    welcomed(&mut ws(&hs, "r", &format!("token={soon}")).await).await;
    // Authorization: Bearer on the upgrade (native clients).
    let mut req = hs.ws_url("r").into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    welcomed(&mut tokio_tungstenite::connect_async(req).await.unwrap().0).await;
    // The first message.
    let mut c = connect(&hs, "r").await;
    c.send(Message::text(ClientMessage::Auth { token: Secret(t.clone()) }.encode())).await.unwrap();
    welcomed(&mut c).await;
    // SSE and poll with ?token=.
    let sse = request(&hs, "GET", &format!("/v1/rooms/r/sse?token={t}"), &[], b"").await;
    assert_eq!(sse.status, 200);
    assert!(String::from_utf8_lossy(&sse.body).contains("\"type\":\"welcome\""), "{:?}", String::from_utf8_lossy(&sse.body));
    let poll = request(&hs, "GET", &format!("/v1/rooms/r/poll?token={t}"), &[], b"").await;
    assert_eq!(poll.status, 200, "{}", String::from_utf8_lossy(&poll.body));
}

#[tokio::test]
async fn a_first_message_that_is_not_auth_is_closed_4503() {
    let srv = hs_server().await;
    let mut c = connect(&srv, "r").await;
    c.send(Message::text(ClientMessage::Ping { id: Some(1) }.encode())).await.unwrap();
    assert_eq!(refused(&mut c).await, (ErrorCode::Unauthorized, 4503));
    let mut c = connect(&srv, "r").await;
    c.send(Message::binary(b"x".to_vec())).await.unwrap();
    assert_eq!(refused(&mut c).await, (ErrorCode::Unauthorized, 4503));
    // An auth message carrying a bad token.
    let mut c = connect(&srv, "r").await;
    c.send(Message::text(ClientMessage::Auth { token: Secret("x.y.z".into()) }.encode())).await.unwrap();
    assert_eq!(refused(&mut c).await, (ErrorCode::Unauthorized, 4503));
}

#[tokio::test]
async fn silence_past_the_auth_timeout_is_closed_4503() {
    let srv = hs_server().await;
    let mut c = connect(&srv, "r").await;
    // Pings do not count as authenticating.
    c.send(Message::Ping(vec![1].into())).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(refused(&mut c).await, (ErrorCode::Unauthorized, 4503));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn max_peers_in_a_token_caps_the_room_for_its_holder_only() {
    let srv = hs_server().await;
    let capped = hs256(&Claims { max_peers: Some(2), ..room_claims("r") }, SECRET);
    let open = hs256(&room_claims("r"), SECRET);
    let _a = welcomed(&mut ws(&srv, "r", &format!("token={capped}")).await).await;
    let _b = welcomed(&mut ws(&srv, "r", &format!("token={capped}")).await).await;
    let mut third = ws(&srv, "r", &format!("token={capped}")).await;
    assert_eq!(refused(&mut third).await, (ErrorCode::RoomFull, 4501));
    // Someone without the cap still gets in; a cap above --max-peers never raises it.
    let mut keep = vec![ws(&srv, "r", &format!("token={open}")).await];
    welcomed(&mut keep[0]).await;
    let srv2 = TestServer::start_with(|cfg| {
        cfg.auth.auth_secret_file = Some(temp_file("s", SECRET));
        cfg.max_peers = 2;
    })
    .await;
    let big = hs256(&Claims { max_peers: Some(100), ..room_claims("r") }, SECRET);
    for _ in 0..2 {
        let mut c = ws(&srv2, "r", &format!("token={big}")).await;
        welcomed(&mut c).await;
        keep.push(c);
    }
    let mut over = ws(&srv2, "r", &format!("token={big}")).await;
    assert_eq!(refused(&mut over).await, (ErrorCode::RoomFull, 4501));
    let zero = hs256(&Claims { max_peers: Some(0), ..room_claims("r") }, SECRET);
    assert_eq!(refused(&mut ws(&srv, "r", &format!("token={zero}")).await).await, (ErrorCode::Unauthorized, 4503));
}

#[tokio::test]
async fn resume_needs_only_the_session_token_but_a_failed_one_is_a_join() {
    let srv = hs_server().await;
    let t = hs256(&room_claims("r"), SECRET);
    let mut c = ws(&srv, "r", &format!("token={t}")).await;
    let w = welcomed(&mut c).await;
    // Drop without a close frame: the resume window starts.
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut back = ws(&srv, "r", &format!("resume={}&after=1", w.session.token)).await;
    let env = recv_envelope(&mut back).await.unwrap();
    assert!(matches!(env.msg, ServerMessage::Resumed { .. }), "{env:?}");
    // An unknown session token would become a fresh session: without a join token that is refused.
    let mut forged = ws(&srv, "r", &format!("resume={}&after=1", "0".repeat(32))).await;
    assert_eq!(refused(&mut forged).await, (ErrorCode::Unauthorized, 4503));
    let poll = request(&srv, "GET", &format!("/v1/rooms/r/poll?resume={}&after=1", "0".repeat(32)), &[], b"").await;
    assert_eq!(poll.status, 401);
    // With a join token, a failed resume joins afresh (recovered: false).
    let mut fresh = ws(&srv, "r", &format!("resume={}&after=1&token={t}", "0".repeat(32))).await;
    assert_eq!(welcomed(&mut fresh).await.recovered, Some(false));
}

#[tokio::test]
async fn without_a_key_tokens_are_not_required_and_ignored() {
    let srv = TestServer::start().await;
    welcomed(&mut connect(&srv, "r").await).await;
    welcomed(&mut ws(&srv, "r", "token=garbage").await).await;
    let mut c = connect(&srv, "r").await;
    welcomed(&mut c).await;
    // An `auth` message to a server without auth is ignored, not an error.
    c.send(Message::text(ClientMessage::Auth { token: Secret("x".into()) }.encode())).await.unwrap();
    c.send(Message::text(ClientMessage::Ping { id: Some(9) }.encode())).await.unwrap();
    let env = recv_envelope(&mut c).await.unwrap();
    assert_eq!(env.msg, ServerMessage::Pong { id: Some(9), received: None });
}

#[tokio::test]
async fn impossible_auth_settings_are_refused_at_start() {
    let keys = ed_keys();
    let secret = temp_file("s", SECRET);
    let public = temp_file("p.pem", keys.public_pem.as_bytes());
    let short = temp_file("short", b"only-31-bytes-of-secret-here!!!\n");
    let not_a_key = temp_file("x.pem", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
    let start = |f: &dyn Fn(&mut signaling::Config)| {
        let mut cfg = signaling::Config::with_listen("127.0.0.1:0".parse().unwrap());
        f(&mut cfg);
        cfg
    };
    let both = start(&|c| {
        c.auth.auth_secret_file = Some(secret.clone());
        c.auth.auth_public_key = Some(public.clone());
    });
    let e = signaling::Server::bind(both).await.unwrap_err().to_string();
    assert!(e.contains("not both"), "{e}");
    let e = signaling::Server::bind(start(&|c| c.auth.auth_secret_file = Some(short.clone()))).await.unwrap_err();
    assert!(e.to_string().contains("at least 32"), "{e}");
    let e = signaling::Server::bind(start(&|c| c.auth.auth_public_key = Some(not_a_key.clone()))).await.unwrap_err();
    assert!(e.to_string().contains("not a usable"), "{e}");
    let e = signaling::Server::bind(start(&|c| c.auth.auth_secret_file = Some("/nonexistent/s".into()))).await.unwrap_err();
    assert!(e.to_string().contains("cannot read"), "{e}");
    // The two keys are also refused by the flag parser.
    let parsed = <signaling::Config as clap::Parser>::try_parse_from([
        "signaling",
        "--auth-secret-file",
        "a",
        "--auth-public-key",
        "b",
    ]);
    assert!(parsed.is_err());
}

// ---- origins and CORS ----

async fn ws_with_origin(srv: &TestServer, room: &str, origin: &str) -> Result<Ws, (u16, Value)> {
    let mut req = srv.ws_url(room).into_client_request().unwrap();
    req.headers_mut().insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            let body = res.body().clone().unwrap_or_default();
            Err((res.status().as_u16(), serde_json::from_slice(&body).unwrap_or(Value::Null)))
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn bad_origins_get_403_on_ws_and_sse_and_good_ones_pass() {
    let srv = TestServer::start().await;
    let (status, body) = ws_with_origin(&srv, "r", "https://evil.example").await.unwrap_err();
    assert_eq!((status, body["code"].as_str()), (403, Some("bad-origin")));
    let sse = request(&srv, "GET", "/v1/rooms/r/sse", &[("origin", "https://evil.example")], b"").await;
    assert_eq!((sse.status, sse.json()["code"].as_str()), (403, Some("bad-origin")));
    assert_eq!(sessions(&srv).await, 0);
    // No Origin (native clients), the server's own origin, and loopback origins pass.
    welcomed(&mut connect(&srv, "r").await).await;
    welcomed(&mut ws_with_origin(&srv, "r", &format!("http://{}", srv.addr)).await.unwrap()).await;
    welcomed(&mut ws_with_origin(&srv, "r", "http://localhost:5173").await.unwrap()).await;
    let sse = request(&srv, "GET", "/v1/rooms/r/sse", &[("origin", &format!("http://{}", srv.addr))], b"").await;
    assert!(String::from_utf8_lossy(&sse.body).contains("welcome"));
}

#[tokio::test]
async fn allowed_origin_passes_that_origin_only() {
    let srv = TestServer::start_with(|cfg| cfg.auth.origin.allowed_origin = vec!["https://app.example".into()]).await;
    welcomed(&mut ws_with_origin(&srv, "r", "https://app.example").await.unwrap()).await;
    for bad in ["https://other.example", "http://app.example", "http://localhost:3000", "null"] {
        let (status, body) = ws_with_origin(&srv, "r", bad).await.unwrap_err();
        assert_eq!((status, body["code"].as_str()), (403, Some("bad-origin")), "{bad}");
    }
    // Its own pages still work.
    welcomed(&mut ws_with_origin(&srv, "r", &format!("http://{}", srv.addr)).await.unwrap()).await;
}

#[tokio::test]
async fn cors_on_post_poll_and_preflight_follows_the_allowlist() {
    let srv = TestServer::start_with(|cfg| cfg.auth.origin.allowed_origin = vec!["https://app.example".into()]).await;
    let app = [("origin", "https://app.example")];
    let pre = request(&srv, "OPTIONS", "/v1/sessions/x", &[app[0], ("access-control-request-method", "POST")], b"").await;
    assert_eq!(pre.status, 204);
    assert_eq!(pre.headers["access-control-allow-origin"], "https://app.example");
    assert_eq!(pre.headers["access-control-allow-headers"], "authorization, content-type");
    assert_eq!(pre.headers["access-control-allow-methods"], "GET, POST, OPTIONS");
    assert_eq!(pre.headers["vary"], "Origin");
    let pre = request(&srv, "OPTIONS", "/v1/rooms/r/poll", &app, b"").await;
    assert_eq!(pre.status, 204);
    let bad = request(&srv, "OPTIONS", "/v1/rooms/r/poll", &[("origin", "https://evil.example")], b"").await;
    assert_eq!((bad.status, bad.json()["code"].as_str()), (403, Some("bad-origin")));
    assert!(!bad.headers.contains_key("access-control-allow-origin"));

    let poll = request(&srv, "GET", "/v1/rooms/r/poll", &app, b"").await;
    assert_eq!(poll.status, 200);
    assert_eq!(poll.headers["access-control-allow-origin"], "https://app.example");
    assert_eq!(poll.headers["vary"], "Origin");
    let w: PollResponse = serde_json::from_slice(&poll.body).unwrap();
    let ServerMessage::Welcome(w) = &w.messages[0].msg else { panic!() };
    let auth = format!("Bearer {}", w.session.token);
    let ping = ClientMessage::Ping { id: Some(1) }.encode();
    let post = request(&srv, "POST", &w.session.url, &[app[0], ("authorization", &auth)], ping.as_bytes()).await;
    assert_eq!(post.status, 204);
    assert_eq!(post.headers["access-control-allow-origin"], "https://app.example");
    let post = request(&srv, "POST", &w.session.url, &[("origin", "https://evil.example"), ("authorization", &auth)], ping.as_bytes()).await;
    assert_eq!((post.status, post.json()["code"].as_str()), (403, Some("bad-origin")));
    let poll = request(&srv, "GET", "/v1/rooms/r/poll", &[("origin", "https://evil.example")], b"").await;
    assert_eq!(poll.status, 403);
    // Same-origin and native requests get no CORS grant (they need none), only Vary.
    let native = request(&srv, "GET", "/v1/rooms/r/poll", &[], b"").await;
    assert_eq!(native.status, 200);
    assert!(!native.headers.contains_key("access-control-allow-origin"));
}

// ---- logs ----

/// Runs the real binary with RUST_LOG=debug, sends the token every way it can travel (and in a Referer, as a
/// browser would for the demo page `/?token=…`), and checks stderr never shows it.
#[tokio::test]
async fn the_token_never_reaches_the_log() {
    use std::process::{Command, Stdio};
    let secret = temp_file("s", SECRET);
    let bin = env!("CARGO_BIN_EXE_signaling");
    // Minted by the `token` subcommand: it prints the token alone on stdout.
    let out = Command::new(bin)
        .args(["token", "--room", "r", "--ttl", "10m", "--name", "Ada"])
        .arg("--auth-secret-file")
        .arg(&secret)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let signature = token.rsplit('.').next().unwrap().to_owned();

    let mut child = tokio::process::Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--auth-timeout-ms", "200"])
        .arg("--auth-secret-file")
        .arg(&secret)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(WAIT, stdout.read_line(&mut line)).await.unwrap().unwrap();
    let addr: std::net::SocketAddr = line.trim().rsplit("http://").next().unwrap().parse().unwrap();
    let srv = TestServer::attach(addr);

    welcomed(&mut ws(&srv, "r", &format!("token={token}")).await).await;
    let mut wrong_room = ws(&srv, "other", &format!("token={token}")).await;
    assert_eq!(refused(&mut wrong_room).await, (ErrorCode::Unauthorized, 4503));
    let mut first = connect(&srv, "r").await;
    first.send(Message::text(ClientMessage::Auth { token: Secret(token.clone()) }.encode())).await.unwrap();
    welcomed(&mut first).await;
    let tampered = format!("{token}x");
    let mut bad = ws(&srv, "r", &format!("token={tampered}")).await;
    assert_eq!(refused(&mut bad).await, (ErrorCode::Unauthorized, 4503));
    let referer = format!("http://{addr}/?token={token}#room=r");
    let sse = request(&srv, "GET", &format!("/v1/rooms/r/sse?token={token}"), &[("referer", &referer)], b"").await;
    assert_eq!(sse.status, 200);
    let poll = request(&srv, "GET", &format!("/v1/rooms/r/poll?token={token}"), &[("referer", &referer)], b"").await;
    assert_eq!(poll.status, 200);
    request(&srv, "GET", &format!("/?token={token}"), &[("referer", &referer)], b"").await;
    let bad_origin = request(&srv, "GET", &format!("/v1/rooms/r/sse?token={token}"), &[("origin", "https://evil.example")], b"").await;
    assert_eq!(bad_origin.status, 403);
    drop((first, wrong_room, bad));
    tokio::time::sleep(Duration::from_millis(300)).await;

    child.start_kill().unwrap();
    let mut stderr = String::new();
    let mut err = child.stderr.take().unwrap();
    tokio::time::timeout(WAIT, err.read_to_string(&mut stderr)).await.unwrap().unwrap();
    let _ = child.wait().await;
    // The log is not empty: it saw the requests (so this test would see a leak).
    assert!(stderr.contains("/v1/rooms/r/sse") && stderr.contains("joined"), "log too quiet:\n{stderr}");
    assert!(stderr.contains("disallowed origin") && stderr.contains("evil.example"), "{stderr}");
    assert!(!stderr.contains(&token), "the token is in the log:\n{stderr}");
    assert!(!stderr.contains(&signature), "the token's signature is in the log:\n{stderr}");
}

/// Live sessions, from `/healthz`.
async fn sessions(srv: &TestServer) -> u64 {
    request(srv, "GET", "/healthz", &[], b"").await.json()["sessions"].as_u64().unwrap()
}

// ---- the minting recipes in docs/security.md ----

/// The JS recipe in docs/security.md, taken from the page itself (between its markers) and run with Node, so the
/// page cannot drift from what the server accepts.
#[tokio::test]
async fn the_js_minting_recipe_in_security_md_is_accepted() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md")).unwrap();
    let start = page.find("<!-- js-mint-begin -->").expect("begin marker");
    let end = page.find("<!-- js-mint-end -->").expect("end marker");
    let block = &page[start..end];
    let code = block.split("```js").nth(1).and_then(|b| b.split("```").next()).expect("a js block");
    let script = temp_file(
        "mint.mjs",
        format!("{code}\nconsole.log(joinToken(process.argv[2], process.argv[3], 600));\n").as_bytes(),
    );
    let secret = std::str::from_utf8(SECRET).unwrap();
    let out = std::process::Command::new("node").arg(&script).arg(secret).arg("r").output().expect("node runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let srv = hs_server().await;
    welcomed(&mut ws(&srv, "r", &format!("token={token}")).await).await;
    // And only for its room.
    let mut c = ws(&srv, "other", &format!("token={token}")).await;
    assert_eq!(refused(&mut c).await, (ErrorCode::Unauthorized, 4503));
}

/// The Rust recipe in docs/security.md, verbatim.
#[tokio::test]
async fn the_rust_minting_recipe_in_security_md_is_accepted() {
    use jsonwebtoken::encode;
    fn join_token(secret: &[u8], room: &str, ttl_secs: u64) -> jsonwebtoken::errors::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = serde_json::json!({ "room": room, "exp": now + ttl_secs });
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret)?)
    }
    let token = join_token(SECRET, "r", 600).unwrap();
    let srv = hs_server().await;
    welcomed(&mut ws(&srv, "r", &format!("token={token}")).await).await;
}

/// TURN credentials are relay bandwidth: on a server that requires join tokens, `GET /v1/ice` answers only a
/// live session (its own token as Bearer), never an anonymous caller.
#[tokio::test]
async fn ice_servers_need_a_live_session_when_tokens_are_required() {
    let srv = hs_server().await;
    let anonymous = request(&srv, "GET", "/v1/ice?peer_id=x", &[], b"").await;
    assert_eq!((anonymous.status, anonymous.json()["code"].clone()), (401, json!("unauthorized")));
    let guessed = request(&srv, "GET", "/v1/ice", &[("authorization", "Bearer 00000000000000000000000000000000")], b"").await;
    assert_eq!(guessed.status, 401);
    // A join token is not a session: it would let anyone with a link mint relays after leaving.
    let t = hs256(&room_claims("r"), SECRET);
    let with_join_token = request(&srv, "GET", "/v1/ice", &[("authorization", &format!("Bearer {t}"))], b"").await;
    assert_eq!(with_join_token.status, 401);
    let w = welcomed(&mut ws(&srv, "r", &format!("token={t}")).await).await;
    let admitted = request(&srv, "GET", "/v1/ice", &[("authorization", &format!("Bearer {}", w.session.token))], b"").await;
    assert_eq!(admitted.status, 200, "{}", String::from_utf8_lossy(&admitted.body));
    assert!(admitted.json()["ice_servers"].is_array());
    // An open server (the default) keeps answering anyone, as before.
    let open = TestServer::start().await;
    assert_eq!(request(&open, "GET", "/v1/ice", &[], b"").await.status, 200);
}
