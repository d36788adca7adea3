//! The whole HTTP surface, composed in one place.

use crate::hub::Hub;
use crate::transport::ws::HARD_LIMIT_FACTOR;
use crate::web::WebRoot;
use std::sync::Arc;
use warp::Filter;

/// Every route of the server.
pub fn routes(
    hub: Arc<Hub>,
    web: WebRoot,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let max = hub.config().limits.max_message_bytes;
    let hub_for_ice = hub.clone();
    let with_hub = warp::any().map(move || hub.clone());

    // GET /v1/rooms/{room}/ws. The room is validated after the upgrade, so a browser can read why it was refused.
    let ws = warp::path!("v1" / "rooms" / String / "ws")
        .and(warp::ws())
        .and(with_hub.clone())
        .map(move |room: String, ws: warp::ws::Ws, hub: Arc<Hub>| {
            ws.max_message_size(max * HARD_LIMIT_FACTOR)
                .max_frame_size(max * HARD_LIMIT_FACTOR)
                .on_upgrade(move |socket| crate::transport::ws::serve(socket, room, hub))
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

    ws.or(healthz).or(ice).or(web).with(warp::trace::request())
}
