//! The entry points that the `cargo fuzz` targets (`fuzz/fuzz_targets/`) and the replay test
//! (`signaling/tests/fuzz_replay.rs`, on stable, in the normal test command) share: each takes arbitrary bytes,
//! drives one real part of the server with them and panics when an invariant breaks, so a finding is the same
//! failure under libFuzzer and under `cargo test`.
//!
//! - [`decode`]: client frames through `ClientEnvelope::decode` as the transports call it, then into a real
//!   session core (two peers in a room) as the transports hand them on.
//! - [`http_filter`]: HTTP requests straight into the real warp routes (SSE open, `POST` to a session, long and
//!   short polls, and every other route), as the edge hands them over.
//! - [`http_edge`]: raw bytes through the real edge (hyper's HTTP/1 or HTTP/2 connection and the edge's own
//!   checks) in front of the same routes, over an in-memory stream, so no socket is needed per input.
//! - [`stun`]: datagrams through the STUN responder's per-datagram decision, and its per-source rate limit.
//!
//! The invariants: no panic (in the caller or in any task it spawned), no 500 (no 5xx at all but the
//! documented 503 and hyper's 505), every exchange over within [`DEADLINE`], every refusal's code one of those
//! listed in `docs/protocol.md`, and everything the server queued for a client decodes as a server envelope
//! with a gap-free `seq`.
//!
//! HTTP and decode inputs may carry four 32-byte placeholders ([`PEER_A`], [`TOKEN_A`], [`PEER_B`],
//! [`TOKEN_B`]), replaced before use by the ids and session tokens of two sessions joined for each input, so a
//! mutated request can reach a live session. Each input gets a fresh session core: a finding replays alone.

use crate::client_addr::{ClientIp, PeerAddr};
use crate::hub::{Flow, Hub};
use crate::session::Session;
use crate::transport::{Kind, Start};
use crate::{Config, edge, routes, web};
use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::{BodyExt, Full};
use protocol::{ClientEnvelope, CloseNotice, ErrorCode, HttpError, PollResponse, ServerEnvelope, ServerMessage};
use std::cell::Cell;
use std::future::Future;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Once, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warp::http;

/// Placeholder for the first session's peer id.
pub const PEER_A: &str = "@PA____________________________@";
/// Placeholder for the first session's token (`Authorization: Bearer …`, `resume=…`, `Last-Event-ID`).
pub const TOKEN_A: &str = "@TA____________________________@";
/// Placeholder for the second session's peer id (a `to` that reaches a real peer).
pub const PEER_B: &str = "@PB____________________________@";
/// Placeholder for the second session's token.
pub const TOKEN_B: &str = "@TB____________________________@";

/// The longest one input may take, in real time, before it counts as a hang. Generous, because the machine
/// running the replay test may be loaded; every wait inside an input is milliseconds (see [`config`]).
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The room both sessions are in.
const ROOM: &str = "fuzz";

/// The TCP peer the edge is told it serves.
const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)), 40000);

/// Requests taken from one input by [`http_filter`].
const MAX_REQUESTS: usize = 16;

/// Frames taken from one input by [`decode`].
const MAX_FRAMES: usize = 64;

/// Bytes of a streaming response (SSE, an upgraded socket) read before the client goes away.
const STREAM_BYTES: usize = 256 * 1024;

/// Statuses an answer may have: the routes' own, warp's rejections (404, 405, 400 for a bad query or header,
/// 411, 413, 415) and hyper's refusals of a malformed request (400, 414, 417, 431, 505). A 500, or any 5xx but
/// the documented 503 and 505 (HTTP version not supported), is a finding.
const STATUSES: [u16; 19] = [101, 200, 204, 304, 400, 401, 403, 404, 405, 409, 411, 413, 414, 415, 417, 429, 431, 503, 505];

/// Client frames through the decoder, then into a session core as the WebSocket and `POST` transports hand
/// them on. Frames are separated by NUL bytes (never valid in a JSON text, so nothing is lost). Asserts that
/// every failure has one of the decoder's four documented codes, that a frame over the limit is `too-large`,
/// that a decoded envelope survives encode → decode unchanged, that refusals by the core carry documented
/// codes, and that what both peers were sent decodes with a gap-free `seq`.
pub fn decode(data: &[u8]) {
    let world = RUNTIME.with(|rt| rt.block_on(World::new()));
    let data = world.substitute(data);
    let max = config().max_message_bytes;
    for frame in data.split(|b| *b == 0).take(MAX_FRAMES) {
        // Not UTF-8: tungstenite refuses such a text frame itself, and `POST` answers `bad-json` before decoding.
        let Ok(text) = std::str::from_utf8(frame) else { continue };
        for limit in [64, max] {
            match ClientEnvelope::decode(text, limit) {
                Ok(env) => {
                    assert!(text.len() <= limit, "a {}-byte frame passed a {limit}-byte limit", text.len());
                    let again = ClientEnvelope::decode(&env.encode(), usize::MAX)
                        .unwrap_or_else(|e| panic!("a decoded envelope does not decode again once encoded: {e}"));
                    assert_eq!(again, env, "encode → decode changed the envelope");
                }
                Err(e) => {
                    let code = e.code();
                    assert!(
                        matches!(code, ErrorCode::BadJson | ErrorCode::UnknownType | ErrorCode::BadMessage | ErrorCode::TooLarge),
                        "decoder refused with {code}"
                    );
                    assert_eq!(text.len() > limit, code == ErrorCode::TooLarge, "too-large iff over the limit ({e})");
                    assert_documented(code, "decode");
                }
            }
        }
        match ClientEnvelope::decode(text, max) {
            Ok(env) => match world.hub.handle_envelope(&world.a, env) {
                Flow::Refused(code) => assert_documented(code, "a message refused by the session core"),
                Flow::Leave => break,
                Flow::Continue => {}
            },
            Err(e) => world.hub.refuse(&world.a, e.code(), e.to_string()),
        }
    }
    world.check_outboxes();
}

/// HTTP/1 requests (several may follow each other, like a pipelined connection) parsed out of `data` and handed
/// to the real routes exactly as the edge hands them over (the peer address in the extensions, the edge's
/// request-target check first). Each answer must have an allowed status and, when refused with JSON, a
/// documented code; a poll's body must be a poll response, an event stream's events well-formed. What
/// cannot be parsed as a request ends the input (hyper would refuse it; [`http_edge`] covers that).
pub fn http_filter(data: &[u8]) {
    http_filter_statuses(data);
}

/// [`http_filter`], returning the status of each answer (to check that an input reaches the route it is meant
/// for).
pub fn http_filter_statuses(data: &[u8]) -> Vec<u16> {
    run("http_filter", async {
        let mut statuses = Vec::new();
        let world = World::new().await;
        let input = world.substitute(data);
        let mut svc = warp::service(world.routes());
        let mut rest = &input[..];
        for _ in 0..MAX_REQUESTS {
            let Some((req, used)) = parse_request(rest) else { break };
            rest = &rest[used..];
            let Some(mut req) = req else { continue };
            let head_only = req.method() == http::Method::HEAD;
            let res = match edge::refuse_target(req.uri()) {
                Some(refused) => refused,
                None => {
                    req.extensions_mut().insert(PeerAddr(PEER));
                    req.extensions_mut().insert(ClientIp(PEER.ip()));
                    match tower_service::Service::call(&mut svc, req).await {
                        Ok(res) => res,
                        Err(never) => match never {},
                    }
                }
            };
            let (parts, body) = res.into_parts();
            let streaming = is_event_stream(parts.headers.get("content-type").and_then(|v| v.to_str().ok()));
            let body = if streaming { read_stream(body).await } else { collect(body).await };
            let headers =
                parts.headers.iter().map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
            check_response(&Answer { status: parts.status.as_u16(), headers, body, head_only, streaming });
            statuses.push(parts.status.as_u16());
        }
        world.check_outboxes();
        statuses
    })
}

/// Raw bytes through the real edge in front of the real routes, over an in-memory stream: HTTP/2 when the
/// input starts with the prior-knowledge preface, HTTP/1 otherwise. The client writes the input, closes its
/// side and reads what comes back; a streaming answer (SSE, a WebSocket upgrade) is read while it flows, then
/// the client goes away. HTTP/1 answers are parsed and checked as in [`http_filter`]; the connection task
/// must end, without a panic, once the client has gone.
pub fn http_edge(data: &[u8]) {
    http_edge_answer(data);
}

/// [`http_edge`], returning the bytes the edge answered (to check that an input reaches the route it is
/// meant for).
pub fn http_edge_answer(data: &[u8]) -> Vec<u8> {
    run("http_edge", async {
        let world = World::new().await;
        let input = world.substitute(data);
        let cfg = config();
        let edge = edge::Edge::new(&cfg.edge, cfg.listen).expect("the default edge settings are valid");
        let h2 = input.starts_with(edge::H2_PREFACE);
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let routes = world.routes();
        let conn = tokio::spawn(async move { edge.serve_stream(server, h2, PEER, routes, stop_rx).await });
        let (mut rd, mut wr) = tokio::io::split(client);
        let heads = request_heads(&input);
        let writer = tokio::spawn(async move {
            // Not followed by a shutdown: hyper drops a request whose client half-closes before the answer (as
            // the edge is configured). The server may stop reading (it closed after a refusal): the rest of the
            // input is then moot.
            let _ = wr.write_all(&input).await;
            // Keep the write half until the reader is done: dropping it would end the stream early.
            std::future::pending::<()>().await;
        });
        let got = read_http1(&mut rd, h2, heads.len()).await;
        writer.abort();
        let _ = writer.await;
        drop(rd);
        match conn.await {
            Ok(()) => {}
            Err(e) => panic!("the edge's connection task failed: {e}"),
        }
        if !h2 {
            for (i, mut answer) in parse_responses(&got).into_iter().enumerate() {
                answer.head_only = heads.get(i).is_some_and(|m| m == "HEAD");
                check_response(&answer);
            }
        }
        world.check_outboxes();
        got
    })
}

/// One datagram through the STUN responder from a source address taken from the input's first bytes (byte 0
/// even: IPv4 from bytes 1–6, odd: IPv6 from bytes 1–18), then the rest of the input as a sequence of
/// (source, time step) pairs through the per-source rate limit. An answer must be exactly the documented
/// 40 or 52 bytes, a Binding success response to a Binding request with its transaction id, the source's
/// XOR-MAPPED-ADDRESS and a valid FINGERPRINT; the limit never grants more than its burst plus its rate and
/// never tracks more than its table's size.
pub fn stun(data: &[u8]) {
    use stun_rs::attributes::stun::{Fingerprint, XorMappedAddress};
    use stun_rs::{DecoderContextBuilder, MessageClass, MessageDecoderBuilder};
    let (src, packet) = stun_source(data);
    if let Some(resp) = crate::stun::answer(packet, src) {
        assert!((20..=crate::stun::MAX_REQUEST).contains(&packet.len()), "answered a {}-byte datagram", packet.len());
        assert_eq!(&packet[..2], &[0x00, 0x01], "answered a message that is not a Binding request");
        assert_eq!(&packet[4..8], &[0x21, 0x12, 0xa4, 0x42], "answered a message without the magic cookie");
        assert_eq!(resp.len(), if src.is_ipv4() { 40 } else { 52 }, "the answer is larger than documented");
        let ctx = DecoderContextBuilder::default().with_validation().build();
        let (msg, n) = MessageDecoderBuilder::default().with_context(ctx).build().decode(&resp).expect("the answer decodes");
        assert_eq!(n, resp.len());
        assert_eq!(msg.class(), MessageClass::SuccessResponse);
        assert_eq!(msg.method(), stun_rs::methods::BINDING);
        assert_eq!(msg.transaction_id().as_bytes(), &packet[8..20], "another transaction id");
        let xma = msg.get::<XorMappedAddress>().expect("XOR-MAPPED-ADDRESS").expect_xor_mapped_address();
        assert_eq!(*xma.socket_address(), src, "another address than the source's");
        assert!(msg.get::<Fingerprint>().is_some(), "no FINGERPRINT");
    }

    let mut limiter = crate::stun::RateLimiter::default();
    let t0 = Instant::now();
    let mut elapsed = Duration::ZERO;
    let mut granted = [0u32; 8];
    for op in data.chunks_exact(2) {
        let who = usize::from(op[0] % 8);
        elapsed += Duration::from_millis(u64::from(op[1]) * 4);
        let ip = IpAddr::from([198, 51, 100, who as u8]);
        if limiter.allow(ip, t0 + elapsed) {
            granted[who] += 1;
        }
        let most = crate::stun::RATE_BURST + elapsed.as_secs_f64() * crate::stun::RATE_PER_SEC;
        assert!(f64::from(granted[who]) <= most + 1e-6, "{} answers to one source within {elapsed:?}", granted[who]);
        assert!(limiter.sources() <= crate::stun::MAX_SOURCES);
    }
}

/// The source address and the datagram of a [`stun`] input.
fn stun_source(data: &[u8]) -> (SocketAddr, &[u8]) {
    let Some((&family, rest)) = data.split_first() else {
        return ("192.0.2.7:5000".parse().expect("static address"), data);
    };
    if family % 2 == 0 && rest.len() >= 6 {
        let ip: [u8; 4] = rest[..4].try_into().expect("4 bytes");
        (SocketAddr::new(IpAddr::from(ip), u16::from_be_bytes([rest[4], rest[5]])), &rest[6..])
    } else if family % 2 == 1 && rest.len() >= 18 {
        let ip: [u8; 16] = rest[..16].try_into().expect("16 bytes");
        (SocketAddr::new(IpAddr::from(ip), u16::from_be_bytes([rest[16], rest[17]])), &rest[18..])
    } else {
        ("192.0.2.7:5000".parse().expect("static address"), rest)
    }
}

/// The server settings every input runs with: the defaults (so the limits are the shipped ones), but a 10 ms
/// heartbeat, since a held poll waits at most one interval and an event stream sends a comment every interval.
fn config() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| {
        let mut cfg = Config::with_listen("127.0.0.1:0".parse().expect("static address"));
        cfg.heartbeat_interval_ms = 10;
        cfg.heartbeat_timeout_ms = 5;
        cfg.validate().expect("the fuzzing settings are valid");
        cfg
    })
}

/// A fresh session core with two peers in [`ROOM`].
struct World {
    hub: Arc<Hub>,
    a: Arc<Session>,
    b: Arc<Session>,
}

impl World {
    async fn new() -> World {
        let cfg = config();
        let gate = crate::auth::Gate::from_flags(&cfg.auth).expect("the default auth settings are valid");
        let ice = crate::ice::IceServers::stun_only(vec!["stun:127.0.0.1:3478".to_owned()]);
        let hub = Arc::new(Hub::new(crate::hub_config(cfg, ice)).with_gate(gate));
        let admit = hub.gate().admit(None, ROOM);
        let a = Start::Join.run(&hub, ROOM, &admit, Kind::Ws).await.expect("a fresh hub takes two peers").0;
        let b = Start::Join.run(&hub, ROOM, &admit, Kind::Ws).await.expect("a fresh hub takes two peers").0;
        World { hub, a, b }
    }

    fn routes(&self) -> impl warp::Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
        routes::routes(self.hub.clone(), web::WebRoot::Embedded, &config().transports)
    }

    /// `data` with the placeholders replaced (same length, so a `Content-Length` stays right).
    fn substitute(&self, data: &[u8]) -> Vec<u8> {
        let mut out = data.to_vec();
        let pairs = [(PEER_A, self.a.peer_id()), (TOKEN_A, self.a.token()), (PEER_B, self.b.peer_id()), (TOKEN_B, self.b.token())];
        let mut i = 0;
        while i + 32 <= out.len() {
            match pairs.iter().find(|(p, _)| out[i..i + 32] == *p.as_bytes()) {
                Some((_, v)) if v.len() == 32 => {
                    out[i..i + 32].copy_from_slice(v.as_bytes());
                    i += 32;
                }
                _ => i += 1,
            }
        }
        out
    }

    /// Everything queued for either peer decodes as a server envelope, in `seq` order without gaps, and every
    /// `error` among it has a documented code.
    fn check_outboxes(&self) {
        for s in [&self.a, &self.b] {
            // Evicted messages (a slow consumer) leave nothing to read from the start: nothing to check.
            let Ok(batch) = s.read_after(0) else { continue };
            for (i, o) in batch.iter().enumerate() {
                let env = ServerEnvelope::decode(&o.text).unwrap_or_else(|e| panic!("queued text is no server envelope ({e}): {}", o.text));
                assert_eq!(env.seq, o.seq);
                assert_eq!(o.seq, i as u64 + 1, "seq has a gap");
                if let ServerMessage::Error { code, .. } = env.msg {
                    assert_documented(code, "an error queued for a client");
                }
            }
        }
    }
}

/// The codes of the error table in `docs/protocol.md`: the contract a refusal is checked against.
fn documented_codes() -> &'static [String] {
    static CODES: OnceLock<Vec<String>> = OnceLock::new();
    CODES.get_or_init(|| {
        let doc = include_str!("../../docs/protocol.md");
        let table = doc.split_once("\n## Errors").map_or("", |(_, t)| t.split("\n## ").next().unwrap_or(""));
        let codes: Vec<String> =
            table.lines().filter_map(|l| l.strip_prefix("| `")).filter_map(|l| l.split_once('`').map(|(c, _)| c.to_owned())).collect();
        assert!(codes.len() > 10, "docs/protocol.md has no error table under ## Errors");
        codes
    })
}

fn assert_documented(code: ErrorCode, what: &str) {
    assert!(documented_codes().iter().any(|c| c == code.as_str()), "{what}: code {code} is not in docs/protocol.md");
}

thread_local! {
    // Per thread: an input's tasks all run on the thread that runs the input (a current-thread runtime), and the
    // replay test runs several targets side by side.
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// Counts panics on this thread, so one in a spawned task (which tokio would swallow) fails the input too.
/// Under libFuzzer its own hook, called after this one, aborts.
fn panics_so_far() -> usize {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
    PANICS.with(Cell::get)
}

thread_local! {
    // One runtime per thread (the replay test runs tests on several), reused by every input.
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
}

/// Runs one input's exchange within [`DEADLINE`], then lets the tasks it spawned finish, and fails on any panic.
fn run<T>(what: &str, exchange: impl Future<Output = T>) -> T {
    let before = panics_so_far();
    let out = RUNTIME.with(|rt| {
        rt.block_on(async {
            let Ok(out) = tokio::time::timeout(DEADLINE, exchange).await else {
                panic!("{what}: the exchange did not end within {DEADLINE:?}");
            };
            for _ in 0..64 {
                tokio::task::yield_now().await;
            }
            out
        })
    });
    assert_eq!(PANICS.with(Cell::get), before, "{what}: a task panicked (its message is above)");
    out
}

/// The output of `fut` if it is ready after letting every other task run a few times; `None` if it waits on
/// something else (a timer, more input).
async fn ready_soon<F: Future>(fut: F) -> Option<F::Output> {
    tokio::pin!(fut);
    for _ in 0..32 {
        if let Some(out) = fut.as_mut().now_or_never() {
            return Some(out);
        }
        tokio::task::yield_now().await;
    }
    None
}

/// One request of an [`http_filter`] input and how many bytes it took; `None` when no request head can be
/// parsed. The request is `None` when its parts are not valid for `http` (hyper refuses those itself).
fn parse_request(buf: &[u8]) -> Option<(Option<http::Request<Full<Bytes>>>, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let mut len = 0usize;
    let mut b = http::Request::builder()
        .method(req.method.unwrap_or("GET"))
        .uri(req.path.unwrap_or("/"))
        .version(if req.version == Some(0) { http::Version::HTTP_10 } else { http::Version::HTTP_11 });
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        }
        b = b.header(h.name, h.value);
    }
    let end = head + len.min(buf.len() - head);
    let body = Full::new(Bytes::copy_from_slice(&buf[head..end]));
    Some((b.body(body).ok(), end))
}

/// The methods of the requests in an [`http_edge`] input, as far as they parse (to know which answers have no
/// body).
fn request_heads(buf: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = buf;
    while let Some((req, used)) = parse_request(rest) {
        out.push(req.map_or_else(|| "GET".to_owned(), |r| r.method().as_str().to_owned()));
        if used == 0 {
            break;
        }
        rest = &rest[used..];
    }
    out
}

fn is_event_stream(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| ct.starts_with("text/event-stream"))
}

/// A whole body (a held poll ends within one heartbeat interval).
async fn collect<B: http_body::Body>(body: B) -> Vec<u8> {
    body.collect().await.map(|c| c.to_bytes().to_vec()).unwrap_or_default()
}

/// What an endless body (an event stream) has sent while it flows, up to [`STREAM_BYTES`].
async fn read_stream<B: http_body::Body<Data = Bytes> + Unpin>(mut body: B) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < STREAM_BYTES {
        match ready_soon(body.frame()).await {
            Some(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    out
}

/// How long the client waits for more of an answer before it goes away: [`QUIET`] once the answers to every
/// request it sent have come (or a streaming one has begun), [`PATIENCE`] before that (a held poll waits one
/// 10 ms heartbeat interval). A request the server still waits on (an unfinished head or body) is the
/// client's doing, and ends with the client.
const QUIET: Duration = Duration::from_millis(2);
const PATIENCE: Duration = Duration::from_millis(25);

/// Reads what the edge answers until it closes or falls quiet (see [`QUIET`]); `expected`: the requests sent.
/// HTTP/2 answers are read unparsed.
async fn read_http1<R: tokio::io::AsyncRead + Unpin>(rd: &mut R, h2: bool, expected: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while got.len() < STREAM_BYTES {
        let answers = if h2 { Vec::new() } else { parse_responses(&got) };
        let settled = answers.last().is_some_and(|a| a.streaming) || (answers.len() >= expected.max(1));
        let wait = if settled { QUIET } else { PATIENCE };
        match tokio::time::timeout(wait, rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    got
}

/// One answer, as checked by [`check_response`].
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The request was `HEAD`: no body follows the head.
    head_only: bool,
    /// An endless answer (SSE, an upgrade): the body is what had arrived when the client left.
    streaming: bool,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The HTTP/1 answers in `buf`, as far as they are complete (the last may be a streaming one, cut short).
fn parse_responses(buf: &[u8]) -> Vec<Answer> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut headers);
        let head = match res.parse(&buf[pos..]) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => break,
        };
        let status = res.code.unwrap_or(0);
        let headers: Vec<(String, String)> =
            res.headers.iter().map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned())).collect();
        let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let start = pos + head;
        let streaming = status == 101 || is_event_stream(get("content-type"));
        let chunked = get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        let length = get("content-length").and_then(|l| l.trim().parse::<usize>().ok());
        let mut answer = Answer { status, headers: headers.clone(), body: Vec::new(), head_only: false, streaming };
        if streaming {
            answer.body = if chunked { dechunk(&buf[start..]).0 } else { buf[start..].to_vec() };
            out.push(answer);
            break;
        }
        let no_body = status == 204 || status == 304 || (100..200).contains(&status);
        let end = if no_body {
            start
        } else if chunked {
            let (body, used) = dechunk(&buf[start..]);
            let Some(used) = used else { break };
            answer.body = body;
            start + used
        } else {
            let len = length.unwrap_or(0);
            if buf.len() < start + len {
                // A HEAD answer announces a length but sends no body; anything else is cut short: stop here.
                out.push(answer);
                break;
            }
            answer.body = buf[start..start + len].to_vec();
            start + len
        };
        out.push(answer);
        pos = end;
    }
    out
}

/// A chunked body's data and the bytes it took (`None` when it is not complete).
fn dechunk(buf: &[u8]) -> (Vec<u8>, Option<usize>) {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let (n, size) = match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete(c)) => c,
            _ => return (body, None),
        };
        pos += n;
        let Ok(size) = usize::try_from(size) else { return (body, None) };
        if size == 0 {
            // No trailers from our server: the last chunk is followed by the final CRLF.
            return (body, buf.get(pos..pos + 2).filter(|t| *t == b"\r\n").map(|_| pos + 2));
        }
        let Some(data) = buf.get(pos..pos.saturating_add(size)) else {
            body.extend_from_slice(&buf[pos..]);
            return (body, None);
        };
        body.extend_from_slice(data);
        pos += size + 2;
        if pos > buf.len() {
            return (body, None);
        }
    }
}

/// The invariants of one answer (see the module docs).
fn check_response(a: &Answer) {
    assert!(STATUSES.contains(&a.status), "status {} ({:?})", a.status, String::from_utf8_lossy(&a.body));
    let json = a.header("content-type").is_some_and(|ct| ct.starts_with("application/json"));
    let body = if a.head_only { &[][..] } else { &a.body[..] };
    if a.status >= 500 {
        assert!(json, "a {} without a JSON body: {:?}", a.status, String::from_utf8_lossy(body));
    }
    if json && !body.is_empty() {
        let value: serde_json::Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("a JSON answer that is not JSON ({e}): {:?}", String::from_utf8_lossy(body)));
        if value.get("messages").is_some() {
            let poll: PollResponse =
                serde_json::from_value(value).unwrap_or_else(|e| panic!("a poll answer that is no poll response: {e}"));
            check_envelopes(poll.messages.iter());
            if let Some(close) = poll.close {
                check_close(&close);
            }
            if a.status >= 400 {
                let refused = poll.messages.iter().any(|m| matches!(m.msg, ServerMessage::Error { .. }));
                assert!(refused, "a refused poll ({}) without an error message", a.status);
            }
        } else if a.status >= 400 {
            let err: HttpError = serde_json::from_value(value).unwrap_or_else(|e| panic!("a JSON refusal that is no error body: {e}"));
            assert_documented(err.code, "an HTTP refusal");
        }
    }
    if a.streaming && a.status == 200 {
        let gzip = a.header("content-encoding").is_some_and(|e| e.eq_ignore_ascii_case("gzip"));
        let mut text = Vec::new();
        if gzip {
            // A cut-short stream ends in an error; what was inflated until then is kept.
            let _ = flate2::read::GzDecoder::new(body).read_to_end(&mut text);
        } else {
            text = body.to_vec();
        }
        check_event_stream(&String::from_utf8_lossy(&text));
    }
}

/// Every complete event of an SSE stream has only known fields; data events are server envelopes in `seq`
/// order, `close` events close notices.
fn check_event_stream(text: &str) {
    let mut last_seq = 0;
    let complete = text.rfind("\n\n").map_or("", |end| &text[..end]);
    let mut envelopes = Vec::new();
    for event in complete.split("\n\n").filter(|e| !e.is_empty()) {
        let (mut name, mut data) = (None, Vec::new());
        for line in event.split('\n') {
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            match field {
                "id" | "retry" => assert!(!value.contains(['\r', '\0']), "a broken {field} line: {line:?}"),
                "event" => name = Some(value.to_owned()),
                "data" => data.push(value),
                other => panic!("an unknown SSE field {other:?} in {event:?}"),
            }
        }
        let data = data.join("\n");
        match name.as_deref() {
            Some("close") => {
                check_close(&serde_json::from_str(&data).unwrap_or_else(|e| panic!("a close event that is no close notice ({e}): {data}")))
            }
            Some(other) => panic!("an unknown SSE event {other:?}"),
            None if data.is_empty() => {}
            None => {
                let env = ServerEnvelope::decode(&data).unwrap_or_else(|e| panic!("an event that is no server envelope ({e}): {data}"));
                // A refused join's error has no session, so no seq to order by.
                if env.seq > 0 {
                    assert!(env.seq > last_seq, "seq {} after {last_seq}", env.seq);
                    last_seq = env.seq;
                }
                envelopes.push(env);
            }
        }
    }
    check_envelopes(envelopes.iter());
}

fn check_envelopes<'a>(envs: impl Iterator<Item = &'a ServerEnvelope>) {
    for env in envs {
        if let ServerMessage::Error { code, .. } = env.msg {
            assert_documented(code, "an error message");
        }
    }
}

fn check_close(close: &CloseNotice) {
    assert!(close.code == 1000 || (4000..5000).contains(&close.code), "close code {}", close.code);
}
