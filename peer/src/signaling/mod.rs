//! The signaling client: one WebSocket session with the server, speaking protocol v1.
//!
//! A task owns the socket; callers get a cloneable [`SignalingSender`] and a receiver of
//! [`ServerMessage`]s whose `seq` has already been checked.

use crate::error::Error;
use futures_util::{SinkExt, StreamExt};
use protocol::{ClientMessage, CloseCode, ServerEnvelope, ServerMessage, Welcome};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// How long connecting and receiving `welcome` may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages buffered between the socket task and its users, each way.
const QUEUE: usize = 256;

/// What the socket task reports besides server messages.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalingEvent {
    /// A server message, in `seq` order.
    Message(ServerMessage),
    /// The session ended; `code` is the WebSocket close code, if the server sent one.
    Closed {
        /// The close code.
        code: Option<u16>,
        /// Whether the code says a reconnect may succeed.
        reconnect: bool,
    },
}

/// Sends client messages on the session. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SignalingSender {
    tx: mpsc::Sender<ClientMessage>,
}

impl SignalingSender {
    /// Queues `msg`; fails once the session has ended.
    pub async fn send(&self, msg: ClientMessage) -> Result<(), Error> {
        self.tx.send(msg).await.map_err(|_| Error::SignalingClosed)
    }
}

/// The ws:// URL of `room` on `server` (`http(s)://` or `ws(s)://`, with or without a trailing slash).
pub fn room_url(server: &str, room: &str) -> Result<String, Error> {
    protocol::validate_room(room).map_err(Error::BadRoom)?;
    let base = server.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_owned()
    } else {
        return Err(Error::InvalidUrl(server.to_owned()));
    };
    Ok(format!("{base}/v1/rooms/{room}/ws"))
}

/// Joins `room` on `server` and waits for `welcome`.
pub async fn connect(
    server: &str,
    room: &str,
) -> Result<(Welcome, SignalingSender, mpsc::Receiver<SignalingEvent>), Error> {
    let url = room_url(server, room)?;
    let (mut ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .map_err(|_| Error::Connect(format!("{url}: timed out")))?
        .map_err(|e| Error::Connect(format!("{url}: {e}")))?;
    let first = tokio::time::timeout(CONNECT_TIMEOUT, next_envelope(&mut ws))
        .await
        .map_err(|_| Error::Connect(format!("{url}: no welcome")))?;
    let welcome = match first {
        Some(ServerEnvelope { msg: ServerMessage::Welcome(w), .. }) => w,
        Some(ServerEnvelope { msg: ServerMessage::Error { code, message }, .. }) => {
            return Err(Error::Refused { code, message });
        }
        Some(other) => return Err(Error::Protocol(format!("expected welcome, got {:?}", other.msg))),
        None => return Err(Error::Connect(format!("{url}: closed before welcome"))),
    };
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let heartbeat = Duration::from_millis(welcome.heartbeat.interval_ms.max(100));
    tokio::spawn(run(ws, out_rx, in_tx, heartbeat));
    Ok((welcome, SignalingSender { tx: out_tx }, in_rx))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn run(
    mut ws: Ws,
    mut out_rx: mpsc::Receiver<ClientMessage>,
    in_tx: mpsc::Sender<SignalingEvent>,
    heartbeat: Duration,
) {
    let mut last_seq = 1u64;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut close_code = None;
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let env = match ServerEnvelope::decode(&text) {
                        Ok(env) => env,
                        Err(e) => {
                            tracing::warn!(error = %e, "undecodable server message ignored");
                            continue;
                        }
                    };
                    if env.seq != last_seq + 1 {
                        // Nothing on a WebSocket can reorder or lose messages: this is a server bug.
                        tracing::error!(expected = last_seq + 1, got = env.seq, "signaling seq gap");
                    }
                    last_seq = env.seq;
                    if in_tx.send(SignalingEvent::Message(env.msg)).await.is_err() {
                        break; // nobody listens any more
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    close_code = frame.map(|f| u16::from(f.code));
                    break;
                }
                Some(Ok(_)) => {} // pings are answered by tungstenite itself
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "signaling socket error");
                    break;
                }
                None => break,
            },
            msg = out_rx.recv() => match msg {
                Some(msg) => {
                    let leaving = msg == ClientMessage::Leave;
                    if ws.send(Message::text(msg.encode())).await.is_err() {
                        break;
                    }
                    if leaving {
                        // Wait (briefly) for the server's close so `leave` is processed before we go.
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            while let Some(Ok(f)) = ws.next().await {
                                if let Message::Close(frame) = f {
                                    close_code = frame.map(|f| u16::from(f.code));
                                    break;
                                }
                            }
                        }).await;
                        break;
                    }
                }
                None => {
                    let _ = ws.close(None).await;
                    break;
                }
            },
            _ = ping.tick() => {
                // Keeps NATs and proxies from dropping an idle socket; the server pings us too.
                if ws.send(Message::text(ClientMessage::Ping { id: None }.encode())).await.is_err() {
                    break;
                }
            }
        }
    }
    let reconnect = close_code.is_none_or(CloseCode::should_reconnect);
    let _ = in_tx.send(SignalingEvent::Closed { code: close_code, reconnect }).await;
}

async fn next_envelope(ws: &mut Ws) -> Option<ServerEnvelope> {
    while let Some(frame) = ws.next().await {
        match frame {
            Ok(Message::Text(text)) => return ServerEnvelope::decode(&text).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_urls() {
        assert_eq!(room_url("http://127.0.0.1:8080", "r").unwrap(), "ws://127.0.0.1:8080/v1/rooms/r/ws");
        assert_eq!(room_url("https://example.org/", "r").unwrap(), "wss://example.org/v1/rooms/r/ws");
        assert_eq!(room_url("ws://h:1", "a-b").unwrap(), "ws://h:1/v1/rooms/a-b/ws");
        assert!(matches!(room_url("ftp://h", "r"), Err(Error::InvalidUrl(_))));
        assert!(matches!(room_url("http://h", "a/b"), Err(Error::BadRoom(_))));
    }
}
