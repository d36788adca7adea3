//! WebSocket transport: a thin adapter between one socket and one [`Session`].
//!
//! The reader decodes frames and hands them to the [`Hub`]; the writer drains the session's queue and
//! sends heartbeat pings. Each runs in its own task so that a client that stops reading cannot stop
//! the server from reading it (and noticing it died), and vice versa.

use crate::hub::{Flow, Hub};
use crate::session::{Session, SessionIo};
use futures_util::{SinkExt, StreamExt};
use protocol::{ClientMessage, CloseCode, ErrorCode, LeaveReason, ServerEnvelope, ServerMessage};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use warp::ws::{Message, WebSocket};

/// The hard cap on a frame, as a multiple of `max_message_bytes`. Between the soft limit and this one a
/// frame is refused with `too-large` and the session goes on; above it the connection is dropped (1009)
/// because the transport would otherwise have to buffer it.
pub const HARD_LIMIT_FACTOR: usize = 4;

/// How long the writer may take to send the close frame before the socket is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves one upgraded socket until it closes.
pub async fn serve(socket: WebSocket, room: String, hub: Arc<Hub>) {
    let (mut sink, mut stream) = socket.split();
    let (session, io) = match hub.join(&room) {
        Ok(joined) => joined,
        Err(e) => {
            let (code, close) = e.codes();
            tracing::debug!(room = %room.escape_debug(), error = %e, "join refused");
            // No session exists, so this error is the whole conversation: seq 1.
            let msg = ServerEnvelope { seq: 1, msg: ServerMessage::Error { code, message: e.to_string() } };
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                sink.send(Message::text(msg.encode())).await?;
                sink.send(Message::close_with(close.code(), close.reason())).await
            })
            .await;
            return;
        }
    };
    let SessionIo { outbox, kill } = io;
    let interval = Duration::from_millis(hub.config().heartbeat.interval_ms);
    let silence_limit = interval + Duration::from_millis(hub.config().heartbeat.timeout_ms);
    let writer = tokio::spawn(write_loop(sink, outbox, kill.clone(), interval));
    let reason = read_loop(&mut stream, &hub, &session, kill, silence_limit).await;
    // Make sure the writer ends too (it sends the close frame for our code, if any).
    session.close(match reason {
        LeaveReason::Timeout => CloseCode::HeartbeatTimeout,
        LeaveReason::SlowConsumer => CloseCode::SlowConsumer,
        LeaveReason::Shutdown => CloseCode::Shutdown,
        LeaveReason::Left | LeaveReason::Closed => CloseCode::Normal,
    });
    hub.leave(&session, reason);
    let _ = writer.await;
}

async fn read_loop(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    hub: &Hub,
    session: &Session,
    mut kill: watch::Receiver<Option<CloseCode>>,
    silence_limit: Duration,
) -> LeaveReason {
    let max = hub.config().limits.max_message_bytes;
    loop {
        let frame = tokio::select! {
            _ = kill.changed() => return leave_reason(session.close_code()),
            // Any frame proves the client alive; the server pings every interval, so a live client
            // is never silent longer than interval + its pong latency.
            f = tokio::time::timeout(silence_limit, stream.next()) => f,
        };
        let msg = match frame {
            Err(_) => {
                tracing::info!(peer = %session.peer_id(), "heartbeat timeout");
                return LeaveReason::Timeout;
            }
            Ok(None) => return LeaveReason::Closed,
            Ok(Some(Err(e))) => {
                tracing::debug!(peer = %session.peer_id(), error = %e, "socket error");
                if is_capacity_error(&e) {
                    // The only frame a client can make us drop the connection for: say so with 1009.
                    session.close(CloseCode::MessageTooBig);
                }
                return LeaveReason::Closed;
            }
            Ok(Some(Ok(msg))) => msg,
        };
        if msg.is_close() {
            return LeaveReason::Closed;
        }
        if msg.is_binary() {
            hub.refuse(session, ErrorCode::BadJson, "binary frames are not supported; send JSON text");
            continue;
        }
        let Ok(text) = msg.to_str() else { continue }; // ping/pong frames: liveness only
        match ClientMessage::decode(text, max) {
            Ok(m) => {
                if hub.handle(session, m) == Flow::Leave {
                    return LeaveReason::Left;
                }
            }
            Err(e) => hub.refuse(session, e.code(), e.to_string()),
        }
    }
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut outbox: tokio::sync::mpsc::Receiver<crate::session::Outgoing>,
    mut kill: watch::Receiver<Option<CloseCode>>,
    interval: Duration,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A send that blocks (client not reading) must not keep us from seeing the kill order.
        let step = tokio::select! {
            biased;
            _ = kill.changed() => break,
            out = outbox.recv() => match out {
                Some(out) => send_cancellable(&mut sink, &mut kill, Message::text(out.text)).await,
                None => break,
            },
            _ = ping.tick() => send_cancellable(&mut sink, &mut kill, Message::ping(Vec::new())).await,
        };
        if !step {
            break;
        }
    }
    let code = *kill.borrow();
    if let Some(code) = code {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            // Deliver what was queued before the close order, except to a client that is not reading.
            while code != CloseCode::SlowConsumer
                && let Ok(out) = outbox.try_recv()
            {
                sink.send(Message::text(out.text)).await?;
            }
            sink.send(Message::close_with(code.code(), code.reason())).await
        })
        .await;
    }
}

/// Sends one frame unless the session is killed meanwhile; false when the writer should stop.
async fn send_cancellable(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    kill: &mut watch::Receiver<Option<CloseCode>>,
    msg: Message,
) -> bool {
    tokio::select! {
        r = sink.send(msg) => r.is_ok(),
        _ = kill.changed() => false,
    }
}

fn is_capacity_error(e: &warp::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())
        .is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_)))
}

fn leave_reason(code: Option<CloseCode>) -> LeaveReason {
    match code {
        Some(CloseCode::SlowConsumer) => LeaveReason::SlowConsumer,
        Some(CloseCode::HeartbeatTimeout) => LeaveReason::Timeout,
        Some(CloseCode::Shutdown) => LeaveReason::Shutdown,
        _ => LeaveReason::Closed,
    }
}
