//! The plain-HTTP halves of the fallback transports: `POST` of client messages to a session URL (for SSE and
//! polling clients), and long/short polling (`GET /v1/rooms/{room}/poll`).
//!
//! Both are authorised by the session token (`Authorization: Bearer <token>`), which only the session's own
//! client has (it arrives in its `welcome`).

use super::Start;
use crate::hub::{Flow, Hub, JoinError};
use crate::session::Session;
use protocol::{ClientEnvelope, CloseCode, CloseNotice, ErrorCode, HttpError};
use std::sync::Arc;
use std::time::Duration;
use warp::http::StatusCode;
use warp::reply::Response;

/// A JSON error response with a stable code.
pub fn error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    let body = HttpError { code, message: message.into() };
    let mut res = warp::Reply::into_response(warp::reply::with_status(warp::reply::json(&body), status));
    no_store(&mut res);
    res
}

fn no_store(res: &mut Response) {
    res.headers_mut().insert("cache-control", "no-store".parse().expect("static header"));
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim)
}

/// Whether a `POST`'s `Content-Type` is acceptable: `application/json` (any parameters, any case) or none at all
/// (native clients that send a bare body). Form and multipart bodies, which a cross-site HTML form can send
/// without a preflight, are never client messages.
pub fn is_json_content_type(ct: Option<&str>) -> bool {
    match ct {
        None => true,
        Some(v) => v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")),
    }
}

/// The JSON body of an HTTP error with a stable code.
pub fn error_body(code: ErrorCode, message: impl Into<String>) -> String {
    serde_json::to_string(&HttpError { code, message: message.into() }).unwrap_or_default()
}

/// `POST /v1/sessions/{peer_id}`: one client message, handled exactly as if it came over a WebSocket (a
/// refused message also gets its `error` on the session's stream, like on a WebSocket). In cluster mode a
/// session held by another node is handled there (routed through Redis), so no stickiness is needed.
pub async fn post(peer_id: &str, auth: Option<&str>, body: &[u8], hub: &Hub) -> Response {
    let Some(token) = bearer(auth) else {
        return error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "missing Authorization: Bearer <token>");
    };
    let expired = || error(StatusCode::NOT_FOUND, ErrorCode::SessionExpired, "no such session (expired or ended)");
    let Some(session) = hub.session(token) else {
        let crate::broker::AnyBroker::Redis(b) = hub.broker() else { return expired() };
        return match b.forward_post(peer_id, token, body).await {
            Ok(Some((status, body))) => answer(status, body),
            Ok(None) => expired(),
            Err(()) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ClusterUnavailable,
                "the node holding this session cannot be reached; retry",
            ),
        };
    };
    if session.peer_id() != peer_id {
        return error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "the token is not this session's");
    }
    let (status, body) = post_here(&session, body, hub);
    answer(status, body)
}

/// Handles one `POST`ed client message for a session held here: the HTTP status and JSON body (empty for 204).
pub fn post_here(session: &Session, body: &[u8], hub: &Hub) -> (u16, String) {
    session.touch();
    let refused = |code: ErrorCode, message: String| {
        hub.refuse(session, code, message.clone());
        let status = if code == ErrorCode::TooLarge { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
        (status.as_u16(), error_body(code, message))
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return refused(ErrorCode::BadJson, "the body is not UTF-8".into());
    };
    match ClientEnvelope::decode(text, hub.config().limits.max_message_bytes) {
        Ok(msg) => {
            match hub.handle_envelope(session, msg) {
                Flow::Leave => session.close(CloseCode::Normal),
                Flow::Refused(code) => {
                    let status = match code {
                        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                        _ => StatusCode::BAD_REQUEST,
                    };
                    let message = "refused by a limit (the error is also on the session's stream)";
                    return (status.as_u16(), error_body(code, message));
                }
                Flow::Continue => {}
            }
            (StatusCode::NO_CONTENT.as_u16(), String::new())
        }
        Err(e) => refused(e.code(), e.to_string()),
    }
}

/// A `POST`'s answer from its status and JSON body (none for 204).
fn answer(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if body.is_empty() {
        let mut res = warp::Reply::into_response(status);
        no_store(&mut res);
        res
    } else {
        json_response(status, body)
    }
}

/// The query of a poll.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct PollQuery {
    /// The last `seq` the client has (0 or absent on the first poll).
    #[serde(default)]
    pub after: u64,
    /// How long to hold the request when there is nothing new, in milliseconds: 0 for short polling. Capped
    /// at the heartbeat interval, so a held poll never looks like a dead client.
    pub wait_ms: Option<u64>,
    /// A resume (after a drop, possibly from another transport): the session token, as on the other
    /// transports. The answer then ends with `resumed`.
    pub resume: Option<String>,
    /// The join token, when the server requires one (`Authorization` carries the session token here).
    pub token: Option<protocol::Secret>,
}

/// `GET /v1/rooms/{room}/poll`: without a token, joins the room and returns the `welcome` at once; with one,
/// returns the messages after `after` as soon as there are any (or after `wait_ms`, empty). With
/// `resume=<token>`, resumes the session like the other transports do (the answer ends with `resumed`).
pub async fn poll(room: String, auth: Option<String>, q: PollQuery, hub: Arc<Hub>) -> Response {
    let admit = || hub.gate().admit(q.token.as_ref().map(|t| t.0.as_str()), &room);
    let joined = match (&q.resume, bearer(auth.as_deref())) {
        (Some(token), _) => {
            Start::Resume { token: token.clone(), after: q.after }
                .run(&hub, &room, &admit(), super::Kind::Longpoll)
                .await
                .map(|(s, a)| (s, a, false))
        }
        (None, None) => Start::Join.run(&hub, &room, &admit(), super::Kind::Longpoll).await.map(|(s, a)| (s, a, false)),
        // A plain poll never starts a session: a client whose session is gone (it left, or was timed out)
        // hears so, and resumes explicitly (`resume=`) if it wants to go on.
        // In cluster mode a session held by another node is carried over to this one first.
        (None, Some(token)) => {
            let found = match hub.session(token) {
                Some(s) => Some(s),
                None => match hub.carry(&room, token, q.after).await {
                    Ok(s) => s,
                    Err(e) => return refused_join(&e, &room),
                },
            };
            match found {
                Some(s) if s.room() == room && s.close_code().is_none() => Ok((s, q.after, true)),
                _ => return error(StatusCode::NOT_FOUND, ErrorCode::SessionExpired, "no such session (expired or ended)"),
            }
        }
    };
    let (session, after, may_wait) = match joined {
        Ok(j) => j,
        Err(e) => return refused_join(&e, &room),
    };
    // A plain poll of a session another transport started (or another node held) moves it to polling.
    session.set_transport(super::Kind::Longpoll.name());
    let interval = hub.config().heartbeat.interval_ms;
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(interval).min(interval));
    let (generation, mut attached) = session.attach();
    let mut seq = session.subscribe();
    let mut kill = session.kill_signal();
    let deadline = tokio::time::Instant::now() + wait;
    let batch = loop {
        seq.borrow_and_update();
        let batch = session.read_after(after);
        let closed = kill.borrow_and_update().is_some();
        if !may_wait || closed || !matches!(&batch, Ok(b) if b.is_empty()) {
            break batch;
        }
        tokio::select! {
            _ = seq.changed() => {}
            _ = kill.changed() => {}
            // A newer poll took over: answer this one empty.
            _ = attached.changed() => if *attached.borrow() != generation { break Ok(Vec::new()) },
            _ = tokio::time::sleep_until(deadline) => break Ok(Vec::new()),
        }
    };
    session.touch();
    respond(&session, batch)
}

fn respond(session: &Session, batch: Result<Vec<crate::session::Outgoing>, crate::session::Gap>) -> Response {
    let (messages, gap) = match batch {
        Ok(b) => (b, false),
        Err(_) => (Vec::new(), true),
    };
    if gap {
        session.close(CloseCode::SlowConsumer);
    }
    // The envelopes are already encoded: splice them rather than decode and re-encode.
    let mut body = String::from("{\"messages\":[");
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&m.text);
    }
    body.push(']');
    if let Some(code) = session.close_code() {
        body.push_str(",\"close\":");
        body.push_str(&serde_json::to_string(&CloseNotice::from(code)).unwrap_or_default());
    }
    body.push('}');
    json_response(StatusCode::OK, body)
}

/// The answer to a poll whose join was refused: the `error` and the close notice, with a status that says it.
pub fn refused_join(e: &JoinError, room: &str) -> Response {
    let (msg, close) = e.refusal(room);
    let status = match e {
        JoinError::BadRoom(_) => StatusCode::BAD_REQUEST,
        JoinError::RoomFull(_) => StatusCode::CONFLICT,
        JoinError::ShuttingDown | JoinError::NodeFull(_) | JoinError::ClusterUnavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        JoinError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        JoinError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
    };
    let body = protocol::PollResponse { messages: vec![msg], close: Some(close.into()) };
    json_response(status, serde_json::to_string(&body).unwrap_or_default())
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut res = warp::Reply::into_response(warp::reply::with_status(body, status));
    res.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
    no_store(&mut res);
    res
}
