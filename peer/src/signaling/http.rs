//! The HTTP transports of the signaling client: an SSE stream or a long-polling loop for server messages, and
//! in-order `POST`s for client messages, over `http://` or `https://` (the shared rustls config of `crate::tls`).

use super::{Dial, Incoming, Link, Start, Transport};
use crate::error::Error;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use protocol::{CloseCode, PollResponse, ServerEnvelope};
use std::time::Duration;
use tokio::sync::mpsc;

pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How long one `POST` may take before the connection is considered dead.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP/1.1 client for `http://` and `https://` URLs, verifying servers with `tls`.
pub(crate) fn client(tls: &std::sync::Arc<rustls::ClientConfig>) -> HttpClient {
    let mut connector = HttpConnector::new();
    // Signaling messages are small and latency-bound.
    connector.set_nodelay(true);
    // The TLS layer above takes https:// URLs; this one only opens the TCP connection.
    connector.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.as_ref().clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new()).build(https)
}

/// `url` without its query (which may hold a session or join token), for messages.
pub(crate) fn shown(url: &str) -> &str {
    url.split_once('?').map_or(url, |(path, _)| path)
}

/// The error for a failed request to `url`: [`Error::TlsVerify`] if the certificate did not verify.
pub(crate) fn request_error(url: &str, e: &hyper_util::client::legacy::Error) -> Error {
    crate::tls::verify_failure(e, crate::tls::origin_of(url))
        .unwrap_or_else(|| Error::Connect(format!("{}: {}", shown(url), describe(e))))
}

/// hyper-util's `Display` is only "client error (Connect)": add the innermost cause.
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// Opens an SSE stream on `base` (`http(s)://host:port`) for `room`, with the join token, if any, as
/// `Authorization: Bearer`.
pub(super) async fn open_sse(base: &str, room: &str, start: &Start, dial: &Dial) -> Result<Link, Error> {
    let url = format!("{base}/v1/rooms/{room}/sse{}", start.query());
    let client = client(&dial.tls);
    let mut req = Request::get(&url).header("accept", "text/event-stream");
    if let Some(bearer) = dial.bearer() {
        req = req.header(hyper::header::AUTHORIZATION, bearer);
    }
    let req = req.body(Full::new(Bytes::new())).map_err(|e| Error::Connect(format!("{}: {e}", shown(&url))))?;
    let res = client.request(req).await.map_err(|e| request_error(&url, &e))?;
    let is_stream = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if res.status() != StatusCode::OK || !is_stream {
        return Err(Error::Connect(format!("{}: HTTP {} without an event stream", shown(&url), res.status())));
    }
    let (in_tx, in_rx) = mpsc::channel(256);
    let in_tx_for_link = in_tx.clone();
    let mut body = res.into_body();
    let reader = tokio::spawn(async move {
        let mut parser = SseParser::default();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(chunk) = frame.into_data() else { continue };
            for ev in parser.push(&chunk) {
                let incoming = match ev.event.as_deref() {
                    Some("close") => match serde_json::from_str::<protocol::CloseNotice>(&ev.data) {
                        Ok(n) => Incoming::Close(n.code),
                        Err(_) => Incoming::Close(CloseCode::Shutdown.code()),
                    },
                    None | Some("message") => match ServerEnvelope::decode(&ev.data) {
                        Ok(env) => Incoming::Envelope(env),
                        Err(e) => {
                            tracing::warn!(error = %e, "undecodable server event ignored");
                            continue;
                        }
                    },
                    Some(other) => {
                        tracing::debug!(event = other, "unknown SSE event ignored");
                        continue;
                    }
                };
                let closing = matches!(incoming, Incoming::Close(_));
                if in_tx.send(incoming).await.is_err() || closing {
                    return;
                }
            }
        }
        // The stream ended without a close event: the connection dropped.
        let _ = in_tx.send(Incoming::Failed).await;
    });
    Ok(Link::http(Transport::Sse, in_tx_for_link, in_rx, base, client, vec![reader]))
}

/// How a polling link polls.
pub(super) struct PollSettings {
    /// How long the server may hold a poll (`Some(ZERO)`: short polling; `None`: the server's default).
    pub wait: Option<Duration>,
    /// The time between short polls.
    pub interval: Duration,
    /// How long one poll may take before the link is considered dead.
    pub give_up_after: Duration,
}

/// Starts polling `room` on `base`. The join token, if any, goes as the `token` query parameter of the first
/// poll (the one that joins or resumes): on polling, `Authorization` carries the session token.
pub(super) async fn open_poll(
    base: &str,
    room: &str,
    start: &Start,
    dial: &Dial,
    settings: PollSettings,
) -> Result<Link, Error> {
    let PollSettings { wait, interval, give_up_after } = settings;
    let client = client(&dial.tls);
    let query = match (start.query(), dial.token_param()) {
        (q, t) if t.is_empty() => q,
        (q, t) if q.is_empty() => format!("?{}", &t[1..]),
        (q, t) => format!("{q}{t}"),
    };
    let first_url = format!("{base}/v1/rooms/{room}/poll{query}");
    // The first poll answers at once (join or resume): its failure is a failure to connect.
    let first = poll_once(&client, &first_url, None, give_up_after).await?;
    let (in_tx, in_rx) = mpsc::channel(256);
    let in_tx_for_link = in_tx.clone();
    let base_owned = base.to_owned();
    let room = room.to_owned();
    let start = start.clone();
    let poll_client = client.clone();
    let poller = tokio::spawn(async move {
        let (mut after, mut token) = match &start {
            Start::Resume { token, after } => (*after, token.clone()),
            Start::Join => (0, String::new()),
        };
        let mut response = first;
        loop {
            for env in response.messages {
                if let protocol::ServerMessage::Welcome(w) = &env.msg {
                    // A new session (a join, or a failed resume): its seq starts again at 1.
                    token = w.session.token.clone();
                    after = env.seq;
                } else {
                    after = after.max(env.seq);
                }
                if in_tx.send(Incoming::Envelope(env)).await.is_err() {
                    return;
                }
            }
            if let Some(close) = response.close {
                let _ = in_tx.send(Incoming::Close(close.code)).await;
                return;
            }
            if token.is_empty() {
                let _ = in_tx.send(Incoming::Failed).await; // nothing to poll with: resume or rejoin
                return;
            }
            if wait == Some(Duration::ZERO) {
                tokio::time::sleep(interval).await;
            }
            let wait_q = wait.map(|w| format!("&wait_ms={}", w.as_millis())).unwrap_or_default();
            let url = format!("{base_owned}/v1/rooms/{room}/poll?after={after}{wait_q}");
            response = match poll_once(&poll_client, &url, Some(&token), give_up_after).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "poll failed");
                    let _ = in_tx.send(Incoming::Failed).await;
                    return;
                }
            };
        }
    });
    let kind = if wait == Some(Duration::ZERO) { Transport::ShortPoll } else { Transport::LongPoll };
    Ok(Link::http(kind, in_tx_for_link, in_rx, base, client, vec![poller]))
}

async fn poll_once(client: &HttpClient, url: &str, token: Option<&str>, limit: Duration) -> Result<PollResponse, Error> {
    let mut req = Request::get(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let shown = shown(url);
    let req = req.body(Full::new(Bytes::new())).map_err(|e| Error::Connect(format!("{shown}: {e}")))?;
    let fetch = async {
        let res = client.request(req).await.map_err(|e| request_error(url, &e))?;
        let status = res.status();
        let body = res.into_body().collect().await.map_err(|e| Error::Connect(format!("{shown}: {e}")))?.to_bytes();
        let parsed: PollResponse = serde_json::from_slice(&body)
            .map_err(|e| Error::Connect(format!("{shown}: HTTP {status}, not a poll response: {e}")))?;
        Ok(parsed)
    };
    tokio::time::timeout(limit, fetch).await.map_err(|_| Error::Connect(format!("{shown}: timed out")))?
}

/// Sends client messages by `POST`, one at a time and in order (the server drops a `cseq` below one it has
/// seen, so order matters). At the first failure it reports [`Incoming::Failed`] and stops.
pub(super) fn spawn_poster(
    base: &str,
    client: HttpClient,
    mut rx: mpsc::UnboundedReceiver<Post>,
    report: mpsc::Sender<Incoming>,
) -> tokio::task::JoinHandle<()> {
    let base = base.to_owned();
    tokio::spawn(async move {
        while let Some(Post { path, token, text }) = rx.recv().await {
            let url = format!("{base}{path}");
            let req = match Request::post(&url)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(text)))
            {
                Ok(r) => r,
                Err(_) => break,
            };
            match tokio::time::timeout(POST_TIMEOUT, client.request(req)).await {
                // 2xx: taken. 4xx for a refused message: the `error` also arrives on the stream; go on.
                Ok(Ok(res)) if accepted(res.status()) => {}
                Ok(Ok(res)) => {
                    tracing::debug!(status = %res.status(), "POST refused: session gone");
                    break;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "POST failed");
                    break;
                }
                Err(_) => break,
            }
        }
        let _ = report.send(Incoming::Failed).await;
    })
}

/// One client message to `POST`.
#[derive(Debug)]
pub(super) struct Post {
    /// The session URL path.
    pub path: String,
    /// The session token.
    pub token: String,
    /// The encoded message.
    pub text: String,
}

/// 2xx: taken. 400/413 for a refused message: its `error` also arrives on the stream, and the session goes on.
/// 401/404 (session gone) and 5xx: this link is done.
fn accepted(status: StatusCode) -> bool {
    status.is_success() || status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE
}

/// One SSE event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `id:` field, if any.
    pub id: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// An incremental `text/event-stream` parser (the WHATWG rules that matter here: LF, CRLF or CR line ends;
/// comments; several `data:` lines joined with LF; one optional space after the colon). Chunks may split lines
/// and UTF-8 sequences anywhere.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes; returns the events they completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < self.buf.len() {
            let b = self.buf[i];
            if b == b'\n' || b == b'\r' {
                // A CR at the very end may be the first half of a CRLF: wait for the next chunk.
                if b == b'\r' && i + 1 == self.buf.len() {
                    break;
                }
                let line = String::from_utf8_lossy(&self.buf[start..i]).into_owned();
                let next = if b == b'\r' && self.buf[i + 1] == b'\n' { i + 2 } else { i + 1 };
                self.line(&line, &mut out);
                start = next;
                i = next;
            } else {
                i += 1;
            }
        }
        self.buf.drain(..start);
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data {
                let mut ev = std::mem::take(&mut self.current);
                if ev.data.ends_with('\n') {
                    ev.data.pop();
                }
                out.push(ev);
            }
            self.current = SseEvent::default();
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return; // comment (heartbeat)
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.current.data.push_str(value);
                self.current.data.push('\n');
                self.has_data = true;
            }
            "event" => self.current.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.current.id = Some(value.to_owned()),
            _ => {} // retry and unknown fields
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_parse_the_same() {
        let stream = "retry: 1000\n\n: heartbeat\n\nid: t-1\ndata: {\"a\":\ndata: 1}\n\nevent: close\r\ndata: x\r\n\r\nid: t-2\rdata: é\r\r\n";
        let whole = SseParser::default().push(stream.as_bytes());
        assert_eq!(
            whole,
            [
                SseEvent { event: None, id: Some("t-1".into()), data: "{\"a\":\n1}".into() },
                SseEvent { event: Some("close".into()), id: None, data: "x".into() },
                SseEvent { event: None, id: Some("t-2".into()), data: "é".into() },
            ]
        );
        // Byte by byte (splits CRLF pairs and the two bytes of "é"): same events.
        let mut p = SseParser::default();
        let mut split = Vec::new();
        for b in stream.as_bytes() {
            split.extend(p.push(&[*b]));
        }
        assert_eq!(split, whole);
    }
}
