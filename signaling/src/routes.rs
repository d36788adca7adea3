//! The whole HTTP surface, composed in one place.

use crate::client_addr::{ClientIp, client_ip};
use crate::hub::Hub;
use crate::transport::ws::HARD_LIMIT_FACTOR;
use crate::transport::{Kind, Start, http, sse};
use crate::web::WebRoot;
use protocol::ErrorCode;
use std::sync::Arc;
use warp::Filter;
use warp::http::StatusCode;

/// How a stream connection asks to resume: `?resume=<token>&after=<seq>`, and its join token, `?token=`
/// (browsers cannot set headers on WebSocket or EventSource requests).
#[derive(Debug, Clone, Default, serde::Deserialize)]
struct ResumeQuery {
    resume: Option<String>,
    after: Option<u64>,
    token: Option<protocol::Secret>,
}

/// The join token of a stream join: `?token=` or, for native clients, `Authorization: Bearer` (these
/// endpoints have no session token to carry there).
fn join_token(q: &ResumeQuery, auth: Option<&str>) -> Option<String> {
    q.token.as_ref().map(|t| t.0.clone()).or_else(|| http::bearer(auth).map(str::to_owned)).filter(|t| !t.is_empty())
}

impl ResumeQuery {
    fn start(self) -> Start {
        match self.resume {
            Some(token) => Start::Resume { token, after: self.after.unwrap_or(0) },
            None => Start::Join,
        }
    }
}

/// tungstenite's default write buffer (128 KiB), below which it does not even try to flush.
const WS_WRITE_BUFFER: usize = 128 * 1024;

/// Every route of the server, with only the `transports` given, and the default WebSocket read buffer.
pub fn routes(
    hub: Arc<Hub>,
    web: WebRoot,
    transports: &[Kind],
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    routes_with(hub, web, transports, crate::transport::ws::DEFAULT_READ_BUFFER)
}

/// [`routes`] with tungstenite's read buffer per WebSocket set to `ws_read_buffer` bytes
/// (`--ws-read-buffer-bytes`).
pub fn routes_with(
    hub: Arc<Hub>,
    web: WebRoot,
    transports: &[Kind],
    ws_read_buffer: usize,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let max = hub.config().limits.max_message_bytes;
    let hub_for_ice = hub.clone();
    let origin = crate::origin::check(hub.gate().origins.clone());
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
    let authorization = warp::header::optional::<String>("authorization");

    // GET /v1/rooms/{room}/ws. The room (and the join rate of the address) is checked after the upgrade, so a
    // browser can read why it was refused.
    let ws = warp::path!("v1" / "rooms" / String / "ws")
        .and(on(Kind::Ws))
        .and(origin.clone().map(|_| ()).untuple_one())
        .and(resume_query.clone())
        .and(authorization.clone())
        .and(crate::transport::ws::upgrade())
        .and(client_ip())
        .and(with_hub.clone())
        .map(move |room: String, q: ResumeQuery, auth: Option<String>, ws: crate::transport::ws::Upgrade, ip: ClientIp, hub: Arc<Hub>| {
            let token = join_token(&q, auth.as_deref());
            let start = hub.joins().admit(ip, q.start());
            // Frames are flushed one at a time (the writer awaits each send), so the write buffer holds at most
            // one frame: the cap only turns a bug that would let it grow into an error.
            let config = tungstenite::protocol::WebSocketConfig::default()
                .read_buffer_size(ws_read_buffer)
                .max_message_size(Some(max * HARD_LIMIT_FACTOR))
                .max_frame_size(Some(max * HARD_LIMIT_FACTOR))
                .max_write_buffer_size(WS_WRITE_BUFFER + max * HARD_LIMIT_FACTOR);
            ws.on_upgrade(config, move |socket| crate::transport::ws::serve(socket, room, start, token, hub))
        })
        .recover(crate::origin::recover);

    // GET /v1/rooms/{room}/sse. A browser's own reconnect sends Last-Event-ID, which wins over the query.
    let sse = warp::path!("v1" / "rooms" / String / "sse")
        .and(warp::get())
        .and(on(Kind::Sse))
        .and(origin.clone().map(|_| ()).untuple_one())
        .and(resume_query)
        .and(authorization.clone())
        .and(warp::header::optional::<String>("last-event-id"))
        .and(warp::header::optional::<String>("accept-encoding"))
        .and(client_ip())
        .and(with_hub.clone())
        .map(|room: String, q: ResumeQuery, auth: Option<String>, last: Option<String>, ae: Option<String>, ip: ClientIp, hub: Arc<Hub>| {
            let token = join_token(&q, auth.as_deref());
            let start = match last {
                Some(id) => sse::parse_last_event_id(&id),
                None => q.start(),
            };
            let start = hub.joins().admit(ip, start);
            let gzip = hub.config().sse_gzip && ae.as_deref().is_some_and(crate::transport::gzip::accepts_gzip);
            sse::respond(room, start, token, hub, gzip)
        })
        .recover(crate::origin::recover);

    // GET /v1/rooms/{room}/poll: long polling, or short polling with wait_ms=0.
    let poll = warp::path!("v1" / "rooms" / String / "poll")
        .and(warp::get())
        .and(on(Kind::Longpoll))
        .and(origin.clone())
        .and(authorization.clone())
        .and(warp::query::<http::PollQuery>())
        .and(client_ip())
        .and(with_hub.clone())
        .then(|room: String, origin: Option<String>, auth: Option<String>, q: http::PollQuery, ip: ClientIp, hub: Arc<Hub>| async move {
            // Only a poll that starts (or resumes) a session is a join; polls of a live session are not.
            let joins = q.resume.is_some() || http::bearer(auth.as_deref()).is_none();
            if joins && hub.joins().admit(ip, Start::Join) != Start::Join {
                return crate::origin::cors(http::refused_join(&crate::hub::JoinError::RateLimited, &room), origin);
            }
            crate::origin::cors(http::poll(room, auth, q, hub).await, origin)
        })
        .recover(crate::origin::recover);

    // POST /v1/sessions/{peer_id}: client messages of SSE and polling sessions.
    let post = warp::path!("v1" / "sessions" / String)
        .and(warp::post())
        .and(enabled_if(http_on))
        .and(origin.clone())
        .and(authorization.clone())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::body::content_length_limit((max * HARD_LIMIT_FACTOR) as u64))
        .and(warp::body::bytes())
        .and(with_hub.clone())
        .then(|peer: String, origin: Option<String>, auth: Option<String>, ct: Option<String>, body: bytes::Bytes, hub: Arc<Hub>| async move {
            if !http::is_json_content_type(ct.as_deref()) {
                let res = http::error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    ErrorCode::UnsupportedMediaType,
                    "the body must be application/json",
                );
                return crate::origin::cors(res, origin);
            }
            crate::origin::cors(http::post(&peer, auth.as_deref(), &body, &hub).await, origin)
        })
        .recover(crate::origin::recover)
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

    // CORS preflights for the two endpoints a cross-origin page calls with `fetch`.
    let preflight = warp::options()
        .and(
            warp::path!("v1" / "sessions" / String)
                .map(|_| ())
                .untuple_one()
                .or(warp::path!("v1" / "rooms" / String / "poll").map(|_| ()).untuple_one())
                .unify(),
        )
        .and(enabled_if(http_on))
        .and(origin)
        .map(crate::origin::preflight)
        .recover(crate::origin::recover);

    let ice = {
        let (servers, required) = (hub_for_ice.config().ice_servers.clone(), hub_for_ice.gate().required());
        let lookup = move |token: String| {
            let hub = hub_for_ice.clone();
            async move { hub.peer_of_token(&token).await }
        };
        crate::ice::route(servers, lookup, required)
    };

    let healthz = warp::path!("healthz").and(warp::get()).and(with_hub.clone()).map(|hub: Arc<Hub>| {
        let mut body = serde_json::json!({
            "status": if hub.is_degraded() { "degraded" } else { "ok" },
            "rooms": hub.room_count(),
            "sessions": hub.session_count(),
        });
        if let crate::broker::AnyBroker::Redis(b) = hub.broker() {
            body["cluster"] = serde_json::json!({ "node": b.node_id(), "redis": !b.is_degraded() });
        }
        warp::reply::json(&body)
    });

    // Readiness, for a load balancer or Kubernetes: 503 while this node cannot take new clients, saying why.
    let readyz = warp::path!("readyz").and(warp::get()).and(with_hub).map(|hub: Arc<Hub>| {
        let why = hub.not_ready();
        let status = if why.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        let body = serde_json::json!({ "ready": why.is_empty(), "reasons": why });
        warp::reply::with_status(warp::reply::json(&body), status)
    });

    let web = warp::get()
        .or(warp::head())
        .unify()
        .and(warp::path::tail())
        .map(move |tail: warp::path::Tail| web.respond(tail.as_str()));

    // Not `warp::trace::request()`: it records the Referer, which holds the page URL and so the demo's
    // `?token=`. Only the method and the path (no query: join and session tokens travel there) are logged.
    ws.or(sse)
        .or(poll)
        .or(post)
        .or(preflight)
        .or(healthz)
        .or(readyz)
        .or(ice)
        .or(web)
        .with(warp::trace(|info| tracing::info_span!("request", method = %info.method(), path = %info.path())))
}
