//! ICE servers on the native side: which of the server's URLs webrtc-rs can use, when to refresh TURN
//! credentials, and fetching fresh ones from `GET /v1/ice`.

use crate::error::Error;
use protocol::{IceConfig, IceServer};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// Fetches fresh ICE servers from `GET /v1/ice?peer_id=…` on the signaling server (`http://` or `ws://`;
/// like the signaling client, this build has no TLS).
pub async fn fetch(server: &str, peer_id: &str) -> Result<Vec<IceServer>, Error> {
    let base = server.trim_end_matches('/');
    let hostport = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("ws://"))
        .ok_or_else(|| Error::InvalidUrl(server.to_owned()))?;
    let hostport = hostport.split('/').next().unwrap_or(hostport);
    let request = format!(
        "GET /v1/ice?peer_id={peer_id} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
    );
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(hostport).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(MAX_RESPONSE as u64).read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| Error::Connect(format!("GET /v1/ice on {hostport}: timed out")))?
        .map_err(|e| Error::Connect(format!("GET /v1/ice on {hostport}: {e}")))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| Error::Protocol("GET /v1/ice: no complete HTTP response".into()))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(Error::Protocol(format!("GET /v1/ice answered {status}: {body}")));
    }
    let config: IceConfig =
        serde_json::from_str(body).map_err(|e| Error::Protocol(format!("GET /v1/ice: bad body: {e}")))?;
    Ok(config.ice_servers)
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
