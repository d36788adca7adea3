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

/// `POST /v1/sessions/{peer_id}`: one client message, handled exactly as if it came over a WebSocket (a
/// refused message also gets its `error` on the session's stream, like on a WebSocket).
pub fn post(peer_id: &str, auth: Option<&str>, body: &[u8], hub: &Hub) -> Response {
    let Some(token) = bearer(auth) else {
        return error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "missing Authorization: Bearer <token>");
    };
    let Some(session) = hub.session(token) else {
        return error(StatusCode::NOT_FOUND, ErrorCode::SessionExpired, "no such session (expired or ended)");
    };
    if session.peer_id() != peer_id {
        return error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "the token is not this session's");
    }
    session.touch();
    let refused = |code: ErrorCode, message: String| {
        hub.refuse(&session, code, message.clone());
        let status = if code == ErrorCode::TooLarge { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
        error(status, code, message)
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return refused(ErrorCode::BadJson, "the body is not UTF-8".into());
    };
    match ClientEnvelope::decode(text, hub.config().limits.max_message_bytes) {
        Ok(msg) => {
            match hub.handle_envelope(&session, msg) {
                Flow::Leave => session.close(CloseCode::Normal),
                Flow::Refused(code) => {
                    let status = match code {
                        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                        _ => StatusCode::BAD_REQUEST,
                    };
                    return error(status, code, "refused by a limit (the error is also on the session's stream)");
                }
                Flow::Continue => {}
            }
            let mut res = warp::Reply::into_response(StatusCode::NO_CONTENT);
            no_store(&mut res);
            res
        }
        Err(e) => refused(e.code(), e.to_string()),
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
            Start::Resume { token: token.clone(), after: q.after }.run(&hub, &room, &admit()).await.map(|(s, a)| (s, a, false))
        }
        (None, None) => Start::Join.run(&hub, &room, &admit()).await.map(|(s, a)| (s, a, false)),
        // A plain poll never starts a session: a client whose session is gone (it left, or was timed out)
        // hears so, and resumes explicitly (`resume=`) if it wants to go on.
        (None, Some(token)) => match hub.session(token) {
            Some(s) if s.room() == room && s.close_code().is_none() => Ok((s, q.after, true)),
            _ => return error(StatusCode::NOT_FOUND, ErrorCode::SessionExpired, "no such session (expired or ended)"),
        },
    };
    let (session, after, may_wait) = match joined {
        Ok(j) => j,
        Err(e) => return refused_join(&e, &room),
    };
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
