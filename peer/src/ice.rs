//! ICE servers on the native side: which of the server's URLs webrtc-rs can use, when to refresh TURN
//! credentials, and fetching fresh ones from `GET /v1/ice`.

use crate::error::Error;
use protocol::{IceConfig, IceServer};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use turn_config::url::IceUrl;

/// Refresh when this fraction of a credential's remaining lifetime has passed.
const REFRESH_AT: f64 = 0.8;
/// Never refresh more often than this (a credential that is about to expire, or already has).
pub const MIN_REFRESH: Duration = Duration::from_secs(5);
/// How long fetching `GET /v1/ice` may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `GET /v1/ice` response read.
const MAX_RESPONSE: usize = 64 * 1024;

/// The entries and URLs webrtc-rs 0.21 can use: `stun:` and UDP `turn:`. It has no `turns:` or TCP TURN
/// client, and an invalid URL would fail the whole peer connection, so those are left out (and logged).
pub fn usable_by_webrtc_rs(servers: &[IceServer]) -> Vec<IceServer> {
    servers
        .iter()
        .filter_map(|s| {
            let urls: Vec<String> = s
                .urls
                .iter()
                .filter(|u| {
                    let ok = IceUrl::parse(u).is_ok_and(|u| u.usable_by_webrtc_rs());
                    if !ok {
                        tracing::debug!(url = %u, "ICE URL not usable by webrtc-rs: skipped");
                    }
                    ok
                })
                .cloned()
                .collect();
            (!urls.is_empty()).then(|| IceServer { urls, ..s.clone() })
        })
        .collect()
}

/// When to fetch fresh credentials: at [`REFRESH_AT`] of the earliest TURN credential's remaining lifetime
/// (its expiry is the number before the `:` of the username). `None` when nothing expires.
pub fn refresh_after(servers: &[IceServer], now: SystemTime) -> Option<Duration> {
    let earliest = servers
        .iter()
        .filter_map(|s| s.username.as_deref())
        .filter_map(|u| turn_config::credential::expiry_of(u).ok())
        .min()?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let left = Duration::from_secs(earliest).saturating_sub(now);
    Some(left.mul_f64(REFRESH_AT).max(MIN_REFRESH))
}

/// Fetches fresh ICE servers from `GET /v1/ice?peer_id=…` on the signaling server (`http(s)://` or
/// `ws(s)://`), verifying an `https://` server with `tls` like the signaling transports do. `session_token` is
/// the session's own secret (`welcome.session.token`): a server that requires join tokens mints TURN
/// credentials only for live sessions.
pub async fn fetch(
    server: &str,
    peer_id: &str,
    session_token: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Vec<IceServer>, Error> {
    let base = server.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("ws://") {
        format!("http://{rest}")
    } else if let Some(rest) = base.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if base.starts_with("http://") || base.starts_with("https://") {
        base.to_owned()
    } else {
        return Err(Error::InvalidUrl(server.to_owned()));
    };
    let url = format!("{base}/v1/ice?peer_id={peer_id}");
    let shown = crate::tls::origin_of(&url).to_owned();
    let client = crate::signaling::http::client(tls);
    let req = hyper::Request::get(&url)
        .header("accept", "application/json")
        .header("authorization", bearer(session_token)?)
        .body(Full::new(Bytes::new()))
        .map_err(|e| Error::Connect(format!("GET /v1/ice on {shown}: {e}")))?;
    let exchange = async {
        let res = client.request(req).await.map_err(|e| crate::signaling::http::request_error(&url, &e))?;
        let status = res.status();
        let body = Limited::new(res.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| Error::Protocol(format!("GET /v1/ice on {shown}: {e}")))?
            .to_bytes();
        Ok::<_, Error>((status, body))
    };
    let (status, body) = tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| Error::Connect(format!("GET /v1/ice on {shown}: timed out")))??;
    if status != hyper::StatusCode::OK {
        return Err(Error::Protocol(format!("GET /v1/ice answered {status}: {}", String::from_utf8_lossy(&body))));
    }
    let config: IceConfig =
        serde_json::from_slice(&body).map_err(|e| Error::Protocol(format!("GET /v1/ice: bad body: {e}")))?;
    Ok(config.ice_servers)
}

/// `Bearer <token>`, marked sensitive so no HTTP-level log prints it.
fn bearer(token: &str) -> Result<hyper::header::HeaderValue, Error> {
    let mut v = hyper::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| Error::Protocol("the session token is not a valid header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(urls: &[&str], user: Option<&str>) -> IceServer {
        turn_config::ice_server(urls, user.map(|u| (u, "pw")))
    }

    #[test]
    fn only_stun_and_udp_turn_are_kept() {
        let servers = vec![
            server(&["stun:h:3478"], None),
            server(&["turns:h:5349", "turn:h:3478?transport=tcp"], Some("1:p")),
            server(&["turn:h:3478?transport=udp", "turn:h:3479", "turns:h"], Some("1:p")),
            server(&["not a url"], None),
        ];
        let kept = usable_by_webrtc_rs(&servers);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].urls, ["stun:h:3478"]);
        assert_eq!(kept[1].urls, ["turn:h:3478?transport=udp", "turn:h:3479"]);
        assert_eq!(kept[1].username.as_deref(), Some("1:p"));
    }

    #[test]
    fn refresh_comes_before_the_earliest_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(refresh_after(&[server(&["stun:h"], None)], now), None);
        let servers = [server(&["turn:a"], Some("2000:p")), server(&["turn:b"], Some("1100:p"))];
        assert_eq!(refresh_after(&servers, now), Some(Duration::from_secs(80)));
        // Expired or about to: not a busy loop.
        assert_eq!(refresh_after(&[server(&["turn:a"], Some("900:p"))], now), Some(MIN_REFRESH));
        // A username not in REST form does not expire as far as we know.
        assert_eq!(refresh_after(&[server(&["turn:a"], Some("alice"))], now), None);
    }
}
