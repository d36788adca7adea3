//! WebSocket transport: a thin adapter between one socket and one [`Session`].
//!
//! The reader decodes frames and hands them to the [`Hub`]; the writer drains the session through a
//! [`Feed`] and sends heartbeat pings. Each runs in its own task so that a client that stops reading cannot
//! stop the server from reading it (and noticing it died), and vice versa.

use super::{Feed, Next, Start};
use crate::hub::{Flow, Hub, leave_reason};
use crate::session::Session;
use futures_util::{SinkExt, StreamExt};
use protocol::{ClientEnvelope, CloseCode, ErrorCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use warp::ws::{Message, WebSocket};

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
    let (session, after) = match start.run(&hub, &room, &admit).await {
        Ok(joined) => joined,
        Err(e) => {
            let (msg, close) = e.refusal(&room);
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                sink.send(Message::text(msg.encode())).await?;
                sink.send(Message::close_with(close.code(), close.reason())).await
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
    let mut writer = tokio::spawn(write_loop(sink, feed, stop_rx));
    let end = read_loop(&mut stream, &hub, &session, silence_limit, &mut writer).await;
    let writer_end = match end {
        ReadEnd::Writer(w) => w,
        ReadEnd::Left => {
            session.close(CloseCode::Normal);
            writer.await.unwrap_or(WriterEnd::Gone)
        }
        ReadEnd::Silent => {
            tracing::info!(peer = %session.peer_id(), "heartbeat timeout");
            session.close(CloseCode::HeartbeatTimeout);
            writer.await.unwrap_or(WriterEnd::Gone)
        }
        ReadEnd::Closed => {
            session.close(CloseCode::Normal);
            hub.leave(&session, protocol::LeaveReason::Closed);
            writer.await.unwrap_or(WriterEnd::Gone)
        }
        ReadEnd::TooBig => {
            session.close(CloseCode::MessageTooBig);
            writer.await.unwrap_or(WriterEnd::Gone)
        }
        ReadEnd::Dropped => {
            let _ = stop_tx.send(true);
            writer.await.unwrap_or(WriterEnd::Gone)
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
    writer: &mut JoinHandle<WriterEnd>,
) -> ReadEnd {
    let max = hub.config().limits.max_message_bytes;
    let mut since_yield = 0usize;
    loop {
        if since_yield >= YIELD_EVERY_BYTES {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        let frame = tokio::select! {
            w = &mut *writer => return ReadEnd::Writer(w.unwrap_or(WriterEnd::Gone)),
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
        since_yield += msg.as_bytes().len();
        if msg.is_close() {
            return match msg.close_frame() {
                None | Some((1000 | 1001, _)) => ReadEnd::Closed,
                Some(_) => ReadEnd::Dropped,
            };
        }
        if msg.is_binary() {
            hub.refuse(session, ErrorCode::BadJson, "binary frames are not supported; send JSON text");
            continue;
        }
        let Ok(text) = msg.to_str() else { continue }; // ping/pong frames: liveness only
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
            Next::Heartbeat => vec![Message::ping(Vec::new())],
            Next::Close(code) => {
                let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::close_with(code.code(), code.reason())))
                    .await;
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
        if msg.is_ping() || msg.is_pong() {
            continue;
        }
        let Ok(text) = msg.to_str() else { return Err(AuthError::NotAuthFirst) };
        return match ClientEnvelope::decode(text, max) {
            Ok(ClientEnvelope { msg: protocol::ClientMessage::Auth { token }, .. }) => Ok(token.0),
            _ => Err(AuthError::NotAuthFirst),
        };
    }
}

fn is_capacity_error(e: &warp::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())
        .is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_)))
}
