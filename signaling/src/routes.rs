//! The whole HTTP surface, composed in one place.

use crate::hub::Hub;
use crate::transport::ws::HARD_LIMIT_FACTOR;
use crate::transport::{Kind, Start, http, sse};
use crate::web::WebRoot;
use protocol::ErrorCode;
use std::sync::Arc;
use warp::Filter;
use warp::http::StatusCode;

/// How a stream connection asks to resume: `?resume=<token>&after=<seq>` (browsers cannot set headers on
/// WebSocket or EventSource requests).
#[derive(Debug, Clone, Default, serde::Deserialize)]
struct ResumeQuery {
    resume: Option<String>,
    after: Option<u64>,
}

impl ResumeQuery {
    fn start(self) -> Start {
        match self.resume {
            Some(token) => Start::Resume { token, after: self.after.unwrap_or(0) },
            None => Start::Join,
        }
    }
}

/// Every route of the server, with only the `transports` given.
pub fn routes(
    hub: Arc<Hub>,
    web: WebRoot,
    transports: &[Kind],
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let max = hub.config().limits.max_message_bytes;
    let hub_for_ice = hub.clone();
    let with_hub = warp::any().map(move || hub.clone());
    // A disabled transport is simply absent (404), as behind a proxy that blocks it.
    let enabled_if = |enabled: bool| {
        warp::any()
            .and_then(move || async move { if enabled { Ok(()) } else { Err(warp::reject::not_found()) } })
            .untuple_one()
    };
    let on = |kind: Kind| enabled_if(transports.contains(&kind));
    let http_on = transports.iter().any(|k| matches!(k, Kind::Sse | Kind::Longpoll));
    let resume_query = warp::query::<ResumeQuery>();

    // GET /v1/rooms/{room}/ws. The room is validated after the upgrade, so a browser can read why it was refused.
    let ws = warp::path!("v1" / "rooms" / String / "ws")
        .and(on(Kind::Ws))
        .and(resume_query.clone())
        .and(warp::ws())
        .and(with_hub.clone())
        .map(move |room: String, q: ResumeQuery, ws: warp::ws::Ws, hub: Arc<Hub>| {
            let start = q.start();
            ws.max_message_size(max * HARD_LIMIT_FACTOR)
                .max_frame_size(max * HARD_LIMIT_FACTOR)
                .on_upgrade(move |socket| crate::transport::ws::serve(socket, room, start, hub))
        });

    // GET /v1/rooms/{room}/sse. A browser's own reconnect sends Last-Event-ID, which wins over the query.
    let sse = warp::path!("v1" / "rooms" / String / "sse")
        .and(warp::get())
        .and(on(Kind::Sse))
        .and(resume_query)
        .and(warp::header::optional::<String>("last-event-id"))
        .and(with_hub.clone())
        .map(|room: String, q: ResumeQuery, last: Option<String>, hub: Arc<Hub>| {
            let start = match last {
                Some(id) => sse::parse_last_event_id(&id),
                None => q.start(),
            };
            sse::respond(room, start, hub)
        });

    // GET /v1/rooms/{room}/poll: long polling, or short polling with wait_ms=0.
    let poll = warp::path!("v1" / "rooms" / String / "poll")
        .and(warp::get())
        .and(on(Kind::Longpoll))
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::query::<http::PollQuery>())
        .and(with_hub.clone())
        .then(http::poll);

    // POST /v1/sessions/{peer_id}: client messages of SSE and polling sessions.
    let post = warp::path!("v1" / "sessions" / String)
        .and(warp::post())
        .and(enabled_if(http_on))
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::content_length_limit((max * HARD_LIMIT_FACTOR) as u64))
        .and(warp::body::bytes())
        .and(with_hub.clone())
        .map(|peer: String, auth: Option<String>, body: bytes::Bytes, hub: Arc<Hub>| {
            http::post(&peer, auth.as_deref(), &body, &hub)
        })
        .recover(|r: warp::Rejection| async move {
            // Only the body-size refusals are ours to word; everything else routes on.
            if r.find::<warp::reject::PayloadTooLarge>().is_some() {
                Ok(http::error(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, "the body is over the hard limit"))
            } else if r.find::<warp::reject::LengthRequired>().is_some() {
                Ok(http::error(StatusCode::LENGTH_REQUIRED, ErrorCode::BadMessage, "Content-Length is required"))
            } else {
                Err(r)
            }
        });

    let ice = crate::ice::route(hub_for_ice);

    let healthz = warp::path!("healthz").and(warp::get()).and(with_hub).map(|hub: Arc<Hub>| {
        warp::reply::json(&serde_json::json!({
            "status": "ok",
            "rooms": hub.room_count(),
            "sessions": hub.session_count(),
        }))
    });

    let web = warp::get()
        .or(warp::head())
        .unify()
        .and(warp::path::tail())
        .map(move |tail: warp::path::Tail| web.respond(tail.as_str()));

    ws.or(sse).or(poll).or(post).or(healthz).or(ice).or(web).with(warp::trace::request())
}
