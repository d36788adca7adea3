//! gzipped SSE streams, read by a real HTTP client that decompresses by itself (reqwest is built without its
//! gzip feature, so it neither asks for gzip nor decodes it): each event decodes as soon as it is sent (the
//! sync flush), and requests that do not accept gzip, or a server started with `--sse-gzip false`, get the
//! plain stream.

mod common;

use common::{Client, TestServer};
use futures_util::StreamExt;
use protocol::{ClientMessage, ServerMessage};
use std::io::Write;
use std::time::{Duration, Instant};

/// How long one event may take from the sender's `relay` to the decoded stream (loopback: milliseconds; loose
/// for a busy CI machine). An unflushed deflate stream would hold a small event until ~64 KiB more arrived.
const PROMPT: Duration = Duration::from_secs(2);

/// The stream as a client sees it: the raw bytes and, when gzipped, what they decode to so far.
struct Stream {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    gzip: Option<flate2::write::GzDecoder<Vec<u8>>>,
    plain: Vec<u8>,
    wire: usize,
}

impl Stream {
    async fn open(srv: &TestServer, room: &str, accept_encoding: Option<&str>) -> (Stream, reqwest::header::HeaderMap) {
        let mut req = reqwest::Client::new().get(srv.http_url(&format!("/v1/rooms/{room}/sse")));
        if let Some(ae) = accept_encoding {
            req = req.header("accept-encoding", ae);
        }
        let res = tokio::time::timeout(common::WAIT, req.send()).await.expect("response in time").expect("response");
        assert_eq!(res.status(), 200);
        let headers = res.headers().clone();
        let gzip = (headers.get("content-encoding").map(|v| v.as_bytes()) == Some(b"gzip"))
            .then(|| flate2::write::GzDecoder::new(Vec::new()));
        (Stream { body: res.bytes_stream().boxed(), gzip, plain: Vec::new(), wire: 0 }, headers)
    }

    /// Reads until the body ends; returns the text and whether the gzip stream ended with a valid trailer.
    async fn read_to_end(&mut self) -> (String, bool) {
        let deadline = tokio::time::Instant::now() + common::WAIT;
        while let Some(chunk) = tokio::time::timeout_at(deadline, self.body.next()).await.expect("the body ends in time") {
            let chunk = chunk.expect("a body chunk");
            self.wire += chunk.len();
            match &mut self.gzip {
                Some(d) => d.write_all(&chunk).expect("valid gzip"),
                None => self.plain.extend_from_slice(&chunk),
            }
        }
        let complete = self.gzip.as_mut().is_none_or(|d| d.try_finish().is_ok());
        (self.text(), complete)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(match &self.gzip {
            Some(d) => d.get_ref(),
            None => &self.plain,
        })
        .into_owned()
    }

    /// Reads until the decoded text contains `needle`, for at most `limit`.
    async fn until(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let text = self.text();
            if text.contains(needle) {
                return text;
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .unwrap_or_else(|_| panic!("{needle:?} not decoded within {limit:?}; so far: {text:?}"))
                .expect("the stream goes on")
                .expect("a body chunk");
            self.wire += chunk.len();
            match &mut self.gzip {
                Some(d) => {
                    d.write_all(&chunk).expect("valid gzip");
                    d.flush().expect("valid gzip");
                }
                None => self.plain.extend_from_slice(&chunk),
            }
        }
    }
}

fn peer_joined(msg: ServerMessage) -> String {
    match msg {
        ServerMessage::PeerJoined { peer_id } => peer_id,
        other => panic!("expected peer-joined, got {other:?}"),
    }
}

#[tokio::test]
async fn gzipped_event_streams_deliver_every_event_promptly() {
    let srv = TestServer::start().await;
    let mut b = Client::join(&srv, "gz").await;
    let (mut a, headers) = Stream::open(&srv, "gz", Some("gzip, deflate, br")).await;
    assert_eq!(headers["content-encoding"], "gzip", "{headers:?}");
    assert_eq!(headers["vary"], "accept-encoding");
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let welcome = a.until("\"type\":\"welcome\"", common::WAIT).await;
    assert!(welcome.starts_with("retry: 1000\n\n"), "{welcome:?}");
    let a_id = peer_joined(b.recv().await);

    let mut took = Vec::new();
    for i in 0..5 {
        let marker = format!("marker-{i}-{}", "x".repeat(i * 50));
        let sent = Instant::now();
        b.send(&ClientMessage::Relay { to: Some(a_id.clone()), data: serde_json::json!(marker) }).await;
        a.until(&format!("\"data\":\"{marker}\""), PROMPT).await;
        took.push(sent.elapsed());
    }
    assert!(took.iter().all(|t| *t < PROMPT));

    // A shutdown ends the stream with the close event and a complete gzip member (trailer included).
    let stop = tokio::spawn(srv.shutdown());
    let (text, complete) = a.read_to_end().await;
    stop.await.unwrap();
    assert!(complete, "the gzip stream ended without its trailer");
    assert!(text.contains("event: close\ndata: {\"code\":4000"), "{text:?}");
    // Same framing as the plain stream: every relay has its id line.
    assert_eq!(text.matches("\nid: ").count() + usize::from(text.starts_with("id: ")), 5 + 1, "{text:?}");
    println!(
        "gzip SSE: {} events, {} plain bytes, {} on the wire ({:+.0}%); relay → decoded {:?}",
        text.matches("\n\n").count(),
        text.len(),
        a.wire,
        (a.wire as f64 / text.len() as f64 - 1.0) * 100.0,
        took
    );
}

#[tokio::test]
async fn streams_without_gzip_stay_plain() {
    let srv = TestServer::start().await;
    for ae in [None, Some("identity"), Some("gzip;q=0, br")] {
        let (mut s, headers) = Stream::open(&srv, "plain", ae).await;
        assert!(headers.get("content-encoding").is_none(), "{ae:?}: {headers:?}");
        assert_eq!(headers["vary"], "accept-encoding");
        let text = s.until("\"type\":\"welcome\"", common::WAIT).await;
        assert!(text.starts_with("retry: 1000\n\n"), "{ae:?}: {text:?}");
    }
    srv.shutdown().await;

    let srv = TestServer::start_with(|c| c.sse_gzip = false).await;
    let (mut s, headers) = Stream::open(&srv, "off", Some("gzip")).await;
    assert!(headers.get("content-encoding").is_none(), "{headers:?}");
    assert!(s.until("\"type\":\"welcome\"", common::WAIT).await.starts_with("retry: 1000\n\n"));
    srv.shutdown().await;
}

#[test]
fn the_flag_defaults_on_and_can_be_turned_off() {
    use clap::Parser;
    assert!(signaling::Config::parse_from(["signaling"]).sse_gzip);
    assert!(!signaling::Config::parse_from(["signaling", "--sse-gzip", "false"]).sse_gzip);
    assert!(!signaling::Config::parse_from(["signaling", "--sse-gzip=false"]).sse_gzip);
}
