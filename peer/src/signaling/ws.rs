//! The WebSocket transport of the signaling client.

use super::{Dial, Incoming, Link, Start, Transport};
use crate::error::Error;
use futures_util::{SinkExt, StreamExt};
use protocol::ServerEnvelope;
use tokio::sync::mpsc;
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// Opens `GET {base}/v1/rooms/{room}/ws` (`base` is `ws://host:port` or `wss://host:port`), with the join
/// token, if any, as `Authorization: Bearer` (not in the URL, which proxies log).
pub(super) async fn open(base: &str, room: &str, start: &Start, dial: &Dial) -> Result<Link, Error> {
    let url = format!("{base}/v1/rooms/{room}/ws{}", start.query());
    // The error messages name the path only: the query may hold the session token.
    let shown = format!("{base}/v1/rooms/{room}/ws");
    let mut request = url.as_str().into_client_request().map_err(|e| Error::Connect(format!("{shown}: {e}")))?;
    if let Some(bearer) = dial.bearer() {
        request.headers_mut().insert(hyper::header::AUTHORIZATION, bearer);
    }
    let connector = Connector::Rustls(dial.tls.clone());
    // Nagle off: a message sent while the previous one is unacknowledged must not wait for a delayed ACK.
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector))
        .await
        .map_err(|e| match crate::tls::verify_failure(&e, base) {
            Some(tls) => tls,
            None => Error::Connect(format!("{shown}: {e}")),
        })?;
    let (mut sink, mut stream) = ws.split();
    let (in_tx, in_rx) = mpsc::channel(256);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
    let reader = tokio::spawn(async move {
        while let Some(frame) = stream.next().await {
            let incoming = match frame {
                Ok(Message::Text(text)) => match ServerEnvelope::decode(&text) {
                    Ok(env) => Incoming::Envelope(env),
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable server message ignored");
                        continue;
                    }
                },
                Ok(Message::Close(frame)) => Incoming::Close(frame.map_or(1005, |f| u16::from(f.code))),
                Ok(_) => continue, // pings are answered by tungstenite itself
                Err(e) => {
                    tracing::debug!(error = %e, "signaling socket error");
                    break;
                }
            };
            let closing = matches!(incoming, Incoming::Close(_));
            if in_tx.send(incoming).await.is_err() || closing {
                break;
            }
        }
    });
    let writer = tokio::spawn(async move {
        while let Some(text) = out_rx.recv().await {
            if sink.send(Message::text(text)).await.is_err() {
                return;
            }
        }
        // The supervisor let go of this link. No close frame: to the server a close frame means "gone for
        // good", while a link dropped here is one the supervisor is about to resume elsewhere.
    });
    Ok(Link { kind: Transport::Ws, rx: in_rx, out: super::LinkOut::Ws(out_tx), tasks: vec![reader, writer] })
}
