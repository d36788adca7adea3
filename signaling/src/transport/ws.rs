//! WebSocket transport: a thin adapter between one socket and one [`Session`].
//!
//! The reader decodes frames and hands them to the [`Hub`]; the writer drains the session through a
//! [`Feed`] and sends heartbeat pings. Both are polled side by side (one `select!`, not one after the other), so
//! a client that stops reading cannot stop the server from reading it (and noticing it died), and vice versa;
//! they share the connection's task rather than each having one, which saves a task per idle connection.
//!
//! The upgrade itself is [`upgrade`] + [`Upgrade::on_upgrade`] rather than `warp::ws()`'s `Ws::on_upgrade`:
//! warp 0.4 does not let tungstenite's read buffer be set, and tungstenite's default allocates and zero-fills
//! 128 KiB per connection at the upgrade (measured: ~138 KB of server RSS per idle WebSocket). `warp::ws()`
//! still checks the request, so what is accepted and refused is unchanged.

use super::{Feed, Next, Start};
use crate::hub::{Flow, Hub, leave_reason};
use crate::session::Session;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use protocol::{ClientEnvelope, CloseCode, ErrorCode};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes};
use warp::Filter;

/// An upgraded connection.
pub type WebSocket = WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// Default of `--ws-read-buffer-bytes`: tungstenite's read buffer per connection, allocated (and zero-filled) at
/// the upgrade and kept for the connection's life. A frame larger than it grows it for that frame, but tungstenite
/// also reads at most this much per system call, so a 64 KiB message takes 64 reads. Measured with `bench load
/// idle` at 19,900 connections: 128 KiB (tungstenite's default) ~140 KB of server RSS per idle WebSocket, 4 KiB
/// 11.0 KB, 1 KiB 8.0 KB (docs/benchmarks.md), but 1 KiB doubled the server CPU of 64 KiB relays (130 → 321 µs):
/// 4 KiB is the default, 1 KiB the setting for a node that holds mostly idle connections.
pub const DEFAULT_READ_BUFFER: usize = 4096;

/// A WebSocket handshake that passed `warp::ws()`'s checks (GET, `Connection: upgrade`, `Upgrade: websocket`,
/// version 13, a key), not yet answered.
#[derive(Debug)]
pub struct Upgrade {
    key: String,
    on_upgrade: Option<OnUpgrade>,
}

/// The handshake filter. hyper's upgrade handle is taken (cloned) before `warp::ws()` removes it; warp's `Ws` is
/// then only used for its checks and its rejections.
pub fn upgrade() -> impl Filter<Extract = (Upgrade,), Error = warp::Rejection> + Clone {
    warp::ext::optional::<OnUpgrade>()
        .and(warp::ws())
        .and(warp::header::<String>("sec-websocket-key"))
        .map(
            |on_upgrade: Option<OnUpgrade>, _checked: warp::ws::Ws, key: String| Upgrade {
                key,
                on_upgrade,
            },
        )
}

impl Upgrade {
    /// Answers `101 Switching Protocols` and, once hyper hands the connection over, runs `serve` on it with
    /// `config` (what `warp::ws::Ws::on_upgrade` does, with every tungstenite setting available).
    pub fn on_upgrade<F, U>(self, config: WebSocketConfig, serve: F) -> warp::reply::Response
    where
        F: FnOnce(WebSocket) -> U + Send + 'static,
        U: Future<Output = ()> + Send + 'static,
    {
        match self.on_upgrade {
            Some(pending) => {
                tokio::spawn(async move {
                    match pending.await {
                        Ok(upgraded) => {
                            let io = hyper_util::rt::TokioIo::new(upgraded);
                            serve(
                                WebSocketStream::from_raw_socket(io, Role::Server, Some(config))
                                    .await,
                            )
                            .await;
                        }
                        Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
                    }
                });
            }
            None => tracing::debug!(
                "no upgrade state on this request: answered 101 but nothing will follow"
            ),
        }
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let mut res = warp::Reply::into_response(warp::http::StatusCode::SWITCHING_PROTOCOLS);
        let h = res.headers_mut();
        h.insert(
            "connection",
            warp::http::HeaderValue::from_static("upgrade"),
        );
        h.insert("upgrade", warp::http::HeaderValue::from_static("websocket"));
        if let Ok(v) = warp::http::HeaderValue::from_str(&accept) {
            h.insert("sec-websocket-accept", v);
        }
        res
    }
}

fn close_frame(code: CloseCode) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.code().into(),
        reason: Utf8Bytes::from_static(code.reason()),
    }))
}

/// The hard cap on a frame, as a multiple of `max_message_bytes`. Between the soft limit and this one a
/// frame is refused with `too-large` and the session goes on; above it the connection is dropped (1009)
/// because the transport would otherwise have to buffer it.
pub const HARD_LIMIT_FACTOR: usize = 4;

/// Client bytes one reader handles before it lets other tasks run. Without it a client flooding large
/// messages keeps a worker for a whole coop budget of socket reads (hundreds of frames already buffered):
/// `tests/tests/slow_consumer.rs` saw another room's ping wait up to ~1 s behind 20 such floods.
const YIELD_EVERY_BYTES: usize = 256 * 1024;

/// How long the writer may take to send the close frame before the socket is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why the reader stopped.
enum ReadEnd {
    /// The client sent `leave`.
    Left,
    /// Nothing from the client within the heartbeat limit.
    Silent,
    /// The client closed the socket on purpose (close frame 1000/1001 or none): it will not come back.
    Closed,
    /// A frame above the hard cap.
    TooBig,
    /// The socket failed, ended without a close frame, or was closed with another code (a client that
    /// means to resume): the session waits for it.
    Dropped,
    /// The writer finished first.
    Writer(WriterEnd),
}

/// Why the writer stopped.
#[derive(Debug, Clone, Copy)]
enum WriterEnd {
    /// It sent (or tried to send) a close frame with this code.
    Closed(CloseCode),
    /// The socket failed, or the reader told it to stop.
    Gone,
}

/// Serves one upgraded socket until it closes. `token` is the join token from the URL or a header; when the
/// server requires one and there is none, a join waits for it as the first message.
pub async fn serve(socket: WebSocket, room: String, start: Start, token: Option<String>, hub: Arc<Hub>) {
    let (mut sink, mut stream) = socket.split();
    let gate = hub.gate();
    let admit = if gate.required() && token.is_none() && start == Start::Join {
        let max = hub.config().limits.max_message_bytes;
        match first_message_token(&mut stream, gate.timeout, max).await {
            Ok(t) => gate.admit(Some(&t), &room),
            Err(e) => Err(e),
        }
    } else {
        gate.admit(token.as_deref(), &room)
    };
    let (session, after) = match start.run(&hub, &room, &admit, super::Kind::Ws).await {
        Ok(joined) => joined,
        Err(e) => {
            let (msg, close) = e.refusal(&room);
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                sink.send(Message::text(msg.encode())).await?;
                sink.send(close_frame(close)).await
            })
            .await;
            return;
        }
    };
    let interval = Duration::from_millis(hub.config().heartbeat.interval_ms);
    let silence_limit = interval + Duration::from_millis(hub.config().heartbeat.timeout_ms);
    let feed = Feed::attach(session.clone(), after, interval);
    let generation = feed.generation();
    let (stop_tx, stop_rx) = watch::channel(false);
    let writer = write_loop(sink, feed, stop_rx);
    tokio::pin!(writer);
    let end = read_loop(&mut stream, &hub, &session, silence_limit, writer.as_mut()).await;
    let writer_end = match end {
        ReadEnd::Writer(w) => w,
        ReadEnd::Left => {
            session.close(CloseCode::Normal);
            writer.await
        }
        ReadEnd::Silent => {
            tracing::info!(peer = %session.peer_id(), "heartbeat timeout");
            session.close(CloseCode::HeartbeatTimeout);
            writer.await
        }
        ReadEnd::Closed => {
            session.close(CloseCode::Normal);
            hub.leave(&session, protocol::LeaveReason::Closed);
            writer.await
        }
        ReadEnd::TooBig => {
            session.close(CloseCode::MessageTooBig);
            writer.await
        }
        ReadEnd::Dropped => {
            let _ = stop_tx.send(true);
            writer.await
        }
    };
    match writer_end {
        // The session lives on in the newer connection.
        WriterEnd::Closed(CloseCode::Superseded) => {}
        WriterEnd::Closed(code) => hub.leave(&session, leave_reason(code)),
        WriterEnd::Gone => match session.close_code() {
            Some(code) => hub.leave(&session, leave_reason(code)),
            // The connection dropped: the client may resume within the window.
            None => {
                tracing::debug!(peer = %session.peer_id(), "connection dropped: resume window starts");
                session.detach(generation);
            }
        },
    }
}

async fn read_loop(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    hub: &Hub,
    session: &Session,
    silence_limit: Duration,
    mut writer: std::pin::Pin<&mut impl Future<Output = WriterEnd>>,
) -> ReadEnd {
    let max = hub.config().limits.max_message_bytes;
    let mut since_yield = 0usize;
    loop {
        if since_yield >= YIELD_EVERY_BYTES {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        let frame = tokio::select! {
            w = writer.as_mut() => return ReadEnd::Writer(w),
            // Any frame proves the client alive; the server pings every interval, so a live client
            // is never silent longer than interval + its pong latency.
            f = tokio::time::timeout(silence_limit, stream.next()) => f,
        };
        let msg = match frame {
            Err(_) => return ReadEnd::Silent,
            Ok(None) => return ReadEnd::Dropped,
            Ok(Some(Err(e))) => {
                tracing::debug!(peer = %session.peer_id(), error = %e, "socket error");
                if is_capacity_error(&e) {
                    // The only frame a client can make us drop the connection for: say so with 1009.
                    return ReadEnd::TooBig;
                }
                return ReadEnd::Dropped;
            }
            Ok(Some(Ok(msg))) => msg,
        };
        session.touch();
        since_yield += msg.len();
        let text = match &msg {
            Message::Text(t) => t.as_str(),
            Message::Close(frame) => {
                return match frame.as_ref().map(|f| u16::from(f.code)) {
                    None | Some(1000 | 1001) => ReadEnd::Closed,
                    Some(_) => ReadEnd::Dropped,
                };
            }
            Message::Binary(_) => {
                hub.refuse(
                    session,
                    ErrorCode::BadJson,
                    "binary frames are not supported; send JSON text",
                );
                continue;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue, // liveness only
        };
        match ClientEnvelope::decode(text, max) {
            Ok(m) => {
                if hub.handle_envelope(session, m) == Flow::Leave {
                    return ReadEnd::Left;
                }
            }
            Err(e) => hub.refuse(session, e.code(), e.to_string()),
        }
    }
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut feed: Feed,
    mut stop: watch::Receiver<bool>,
) -> WriterEnd {
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.changed() => return WriterEnd::Gone,
            n = feed.next() => n,
        };
        let frames = match next {
            Next::Messages(batch) => batch.into_iter().map(|o| Message::text(o.text)).collect(),
            Next::Heartbeat => vec![Message::Ping(bytes::Bytes::new())],
            Next::Close(code) => {
                let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(close_frame(code))).await;
                return WriterEnd::Closed(code);
            }
        };
        for frame in frames {
            // A send that blocks (client not reading) must not keep us from seeing the kill order.
            tokio::select! {
                r = sink.send(frame) => if r.is_err() { return WriterEnd::Gone },
                // The next `feed.next()` says why; the rest of the batch is not for this connection.
                _ = feed.interrupted() => break,
                _ = stop.changed() => return WriterEnd::Gone,
            }
        }
    }
}

/// Waits up to `timeout` for the first text frame and reads it as `{"type":"auth","token":…}`. Pings and pongs
/// do not count; anything else (another message, a binary frame, silence, a close) is a refusal.
async fn first_message_token(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    timeout: Duration,
    max: usize,
) -> Result<String, crate::auth::AuthError> {
    use crate::auth::AuthError;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) | Ok(None) | Ok(Some(Err(_))) => return Err(AuthError::Missing),
            Ok(Some(Ok(m))) => m,
        };
        let text = match &msg {
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Text(t) => t.as_str(),
            _ => return Err(AuthError::NotAuthFirst),
        };
        return match ClientEnvelope::decode(text, max) {
            Ok(ClientEnvelope { msg: protocol::ClientMessage::Auth { token }, .. }) => Ok(token.0),
            _ => Err(AuthError::NotAuthFirst),
        };
    }
}

fn is_capacity_error(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Capacity(_))
}
