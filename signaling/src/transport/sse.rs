//! Server-sent events: `GET /v1/rooms/{room}/sse` streams every server message as an event whose `id`
//! (`<token>-<seq>`) lets a browser's `EventSource` resume by itself through `Last-Event-ID`. The client
//! sends its messages by `POST` to its session URL (see [`super::http`]).
//!
//! The rules that are easy to get wrong, kept here: the response is always `200 text/event-stream` (any
//! other status makes `EventSource` give up for good, so refusals travel as events); comment heartbeats keep
//! proxies from timing the stream out; `X-Accel-Buffering: no` stops nginx from buffering it; payload line
//! breaks become several `data:` lines; CR, LF and NUL never reach `id` or `event`; a `retry:` hint sets the
//! browser's reconnect delay. With `Accept-Encoding: gzip` (and `--sse-gzip`, the default) the stream is
//! gzipped, flushed after every chunk (see [`super::gzip`]); the response says `Vary: Accept-Encoding` either
//! way.

use super::{Feed, Next, Start};
use crate::hub::{Hub, leave_reason};
use bytes::Bytes;
use protocol::CloseNotice;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The reconnect delay suggested to `EventSource` (milliseconds). Short: a resume is cheap, and a browser
/// only uses it for its own automatic reconnects.
pub const RETRY_MS: u64 = 1000;

/// How long the close event may wait for room in the stream (a client that does not read never makes any).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Bytes of events the pump encodes before it lets other tasks run (as the WebSocket reader does).
const YIELD_EVERY_BYTES: usize = 256 * 1024;

/// Proxies commonly cut idle responses after 30–60 s; a comment at least this often keeps the stream alive.
const MAX_HEARTBEAT: Duration = Duration::from_secs(15);

/// A field value that would break the event framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SSE {field} must not contain CR, LF or NUL")]
pub struct FieldError {
    /// `id` or `event`.
    pub field: &'static str,
}

/// Encodes one event. `data` may hold any line breaks (`\n`, `\r\n`, `\r`): each line becomes its own
/// `data:` field, which the browser joins back with `\n`. `id` and `event` must be single clean lines.
pub fn event(id: Option<&str>, name: Option<&str>, data: &str) -> Result<String, FieldError> {
    event_parts(id, name, data).map(|[head, body]| head + &body)
}

/// [`event`] in its two pieces: the header lines (`id:`, `event:`; may be empty) and the `data:` lines with the
/// blank line that ends the event. A gzipped stream compresses them apart (see [`super::gzip`]).
pub fn event_parts(id: Option<&str>, name: Option<&str>, data: &str) -> Result<[String; 2], FieldError> {
    let mut head = String::new();
    let mut out = String::with_capacity(data.len() + 16);
    for (field, value) in [("id", id), ("event", name)] {
        if let Some(v) = value {
            if v.contains(['\r', '\n', '\0']) {
                return Err(FieldError { field });
            }
            head.push_str(field);
            head.push_str(": ");
            head.push_str(v);
            head.push('\n');
        }
    }
    for line in data.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Ok([head, out])
}

/// The event id of `seq` in the session holding `token`.
pub fn event_id(token: &str, seq: u64) -> String {
    format!("{token}-{seq}")
}

/// Reads a `Last-Event-ID` back into a resume request. Anything malformed still counts as an attempt to
/// resume (so the client is told `recovered: false`), never as a valid session.
pub fn parse_last_event_id(id: &str) -> Start {
    match id.rsplit_once('-').map(|(t, s)| (t, s.parse::<u64>())) {
        Some((token, Ok(after))) => Start::Resume { token: token.to_owned(), after },
        _ => Start::Resume { token: String::new(), after: 0 },
    }
}

/// The pump's end of the stream: chunks go into a channel of two, gzipped first when the client asked.
struct Out {
    tx: mpsc::Sender<Bytes>,
    gzip: Option<super::gzip::GzipStream>,
}

impl Out {
    /// Sends `pieces` as one chunk once the channel has room. They are compressed (each on its own) only after
    /// the slot is reserved, so a send cancelled while waiting (client not reading) never leaves the
    /// compressor ahead of the stream.
    async fn send(&mut self, pieces: Vec<String>) -> Result<(), mpsc::error::SendError<()>> {
        let permit = self.tx.reserve().await?;
        permit.send(match &mut self.gzip {
            Some(gz) => gz.pieces(pieces.iter().map(|p| p.as_bytes())),
            None => Bytes::from(pieces.concat()),
        });
        Ok(())
    }

    /// Ends a gzip stream properly (its trailer), after the last event.
    async fn finish(&mut self) {
        if let Some(gz) = &mut self.gzip
            && let Ok(permit) = self.tx.reserve().await
        {
            permit.send(gz.finish());
        }
    }
}

/// An event as the pieces [`Out::send`] takes.
fn pieces(id: Option<&str>, name: Option<&str>, data: &str) -> Vec<String> {
    event_parts(id, name, data).map(Vec::from).unwrap_or_default()
}

/// Starts the stream for one `GET` and returns its response; `gzip`: the client accepts gzip and the server
/// allows it.
pub fn respond(room: String, start: Start, token: Option<String>, hub: Arc<Hub>, gzip: bool) -> warp::reply::Response {
    // Two chunks, each at most one batch (itself at most `--outbox-bytes`, less when gzipped): a stream nobody
    // reads holds that much here, the pump stops reading the session, and the session's own bound ends it as a
    // slow consumer.
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    let admit = hub.gate().admit(token.as_deref(), &room);
    let out = Out { tx, gzip: gzip.then(super::gzip::GzipStream::new) };
    tokio::spawn(pump(room, start, admit, hub, out));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    let mut res = warp::Reply::into_response(warp::reply::stream(body));
    let h = res.headers_mut();
    h.insert("content-type", "text/event-stream; charset=utf-8".parse().expect("static header"));
    h.insert("cache-control", "no-cache, no-store, no-transform".parse().expect("static header"));
    h.insert("x-accel-buffering", "no".parse().expect("static header"));
    h.insert("vary", "accept-encoding".parse().expect("static header"));
    if gzip {
        h.insert("content-encoding", "gzip".parse().expect("static header"));
    }
    res
}

fn close_event(notice: CloseNotice) -> Vec<String> {
    pieces(None, Some("close"), &serde_json::to_string(&notice).unwrap_or_default())
}

async fn pump(room: String, start: Start, admit: crate::auth::Admit, hub: Arc<Hub>, mut tx: Out) {
    if tx.send(vec![format!("retry: {RETRY_MS}\n\n")]).await.is_err() {
        return;
    }
    let (session, after) = match start.run(&hub, &room, &admit, super::Kind::Sse).await {
        Ok(joined) => joined,
        Err(e) => {
            // No session, so no id: a browser reconnecting by itself starts afresh (and the client, seeing
            // the close event, does not reconnect at all for a 45xx code).
            let (msg, close) = e.refusal(&room);
            let _ = tx.send(pieces(None, None, &msg.encode())).await;
            let _ = tx.send(close_event(close.into())).await;
            tx.finish().await;
            return;
        }
    };
    let interval = Duration::from_millis(hub.config().heartbeat.interval_ms).min(MAX_HEARTBEAT);
    let mut feed = Feed::attach(session.clone(), after, interval);
    loop {
        let next = tokio::select! {
            biased;
            _ = tx.tx.closed() => break,
            n = feed.next() => n,
        };
        let chunk = match next {
            Next::Messages(batch) => {
                let mut chunk = Vec::with_capacity(2 * batch.len());
                let mut since_yield = 0;
                for o in batch {
                    // A batch can be the whole outbox (1 MiB): let other sessions run while it is encoded.
                    since_yield += o.text.len();
                    if since_yield >= YIELD_EVERY_BYTES {
                        since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                    // Tokens are hex and seqs digits: the id is always clean.
                    chunk.extend(pieces(Some(&event_id(session.token(), o.seq)), None, &o.text));
                }
                chunk
            }
            Next::Heartbeat => vec![": heartbeat\n\n".to_owned()],
            Next::Close(code) => {
                // A client that does not read would never take the close event: give up on it after a grace.
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    if tx.send(close_event(code.into())).await.is_ok() {
                        tx.finish().await;
                    }
                })
                .await;
                if code != protocol::CloseCode::Superseded {
                    hub.leave(&session, leave_reason(code));
                }
                return;
            }
        };
        tokio::select! {
            r = tx.send(chunk) => if r.is_err() { break },
            _ = feed.interrupted() => {}
        }
    }
    // The client went away without leaving: the resume window starts.
    tracing::debug!(peer = %session.peer_id(), "event stream dropped: resume window starts");
    feed.detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_in_data_become_data_lines() {
        assert_eq!(event(Some("t-1"), None, "a\nb\r\nc\rd").unwrap(), "id: t-1\ndata: a\ndata: b\ndata: c\ndata: d\n\n");
        assert_eq!(event(None, Some("close"), "").unwrap(), "event: close\ndata: \n\n");
        assert_eq!(event(None, None, "x\n").unwrap(), "data: x\ndata: \n\n");
    }

    #[test]
    fn breaks_in_id_or_event_are_refused() {
        for bad in ["a\nb", "a\rb", "a\0b", "\r\n"] {
            assert_eq!(event(Some(bad), None, "x"), Err(FieldError { field: "id" }));
            assert_eq!(event(None, Some(bad), "x"), Err(FieldError { field: "event" }));
        }
    }

    #[test]
    fn last_event_ids() {
        assert_eq!(parse_last_event_id("abc-12"), Start::Resume { token: "abc".into(), after: 12 });
        assert_eq!(parse_last_event_id(&event_id("f00d", 7)), Start::Resume { token: "f00d".into(), after: 7 });
        for bad in ["", "abc", "abc-", "abc-x", "abc-1\r\nevil"] {
            assert_eq!(parse_last_event_id(bad), Start::Resume { token: String::new(), after: 0 }, "{bad:?}");
        }
    }
}
