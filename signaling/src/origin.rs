//! Which browser origins may use the server: the `Origin` check on WebSocket and SSE joins, and CORS on the
//! `POST` and poll endpoints, from one allowlist.
//!
//! Browsers send `Origin` on WebSocket upgrades and cross-origin requests, and a page cannot forge it; a native
//! client sends none and passes (it could send anything, so the check only protects browser users from other
//! sites' pages). By default the server's own origin (the request's `Host`, http or https) and loopback
//! origins pass; `--allowed-origin` replaces the loopback rule with an explicit list (`*` allows any).

use protocol::ErrorCode;
use std::sync::Arc;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::Response;

/// Origin flags (flattened into [`crate::auth::AuthFlags`]).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OriginFlags {
    /// A browser origin allowed to connect, e.g. `https://app.example` (repeatable; `*` allows any). Without
    /// it: the server's own origin and http(s)://localhost, 127.0.0.1, [::1] on any port. The server's own
    /// origin (matching `Host`) always passes.
    #[arg(long = "allowed-origin", env = "SIGNALING_ALLOWED_ORIGIN", value_delimiter = ',')]
    pub allowed_origin: Vec<String>,
}

/// An `--allowed-origin` that no browser would send.
#[derive(Debug, thiserror::Error)]
#[error("--allowed-origin {0:?} must be `*` or scheme://host[:port] (no path, no trailing slash)")]
pub struct OriginError(String);

/// The allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    any: bool,
    // Lower-cased; empty means the default (loopback) rule.
    listed: Vec<String>,
}

/// A refused origin, turned into `403 bad-origin` by [`recover`].
#[derive(Debug)]
pub struct BadOrigin;

impl warp::reject::Reject for BadOrigin {}

impl OriginPolicy {
    /// The policy of these flags.
    pub fn from_flags(flags: &OriginFlags) -> Result<Self, OriginError> {
        let mut policy = OriginPolicy::default();
        for o in flags.allowed_origin.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
            if o == "*" {
                policy.any = true;
                continue;
            }
            let valid = split(o).is_some_and(|(_, host)| !host.is_empty() && !host.contains(['/', '?', '#']));
            if !valid {
                return Err(OriginError(o.to_owned()));
            }
            policy.listed.push(o.to_ascii_lowercase());
        }
        Ok(policy)
    }

    /// Whether a request with this `Origin`, sent to this `Host`, may go on.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        if self.any {
            return true;
        }
        let origin = origin.to_ascii_lowercase();
        let Some((_, authority)) = split(&origin) else { return false };
        if host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
            return true;
        }
        if !self.listed.is_empty() {
            return self.listed.contains(&origin);
        }
        is_loopback(authority)
    }
}

/// `scheme://authority` of an http(s) origin.
fn split(origin: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = origin.split_once("://")?;
    matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https").then_some((scheme, rest))
}

fn is_loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, rest)) if rest.is_empty() || is_port(rest) => return h == "::1",
            _ => return false,
        },
        None => match authority.split_once(':') {
            Some((h, port)) if is_port(&format!(":{port}")) => h,
            Some(_) => return false,
            None => authority,
        },
    };
    host == "localhost" || host == "127.0.0.1"
}

fn is_port(s: &str) -> bool {
    s.strip_prefix(':').is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Passes requests without `Origin` or from an allowed one (extracting it, for CORS); rejects the rest with
/// [`BadOrigin`] and a warning naming the origin (the URL, which may hold a token, is not logged).
pub fn check(
    policy: Arc<OriginPolicy>,
) -> impl Filter<Extract = (Option<String>,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::header::optional::<String>("origin").and(warp::header::optional::<String>("host")).and_then(
        move |origin: Option<String>, host: Option<String>| {
            let policy = policy.clone();
            async move {
                match origin {
                    None => Ok(None),
                    Some(o) if policy.allows(&o, host.as_deref()) => Ok(Some(o)),
                    Some(o) => {
                        tracing::warn!(origin = %o.escape_debug(), "request from a disallowed origin refused");
                        Err(warp::reject::custom(BadOrigin))
                    }
                }
            }
        },
    )
}

/// Turns [`BadOrigin`] into `403 {"code":"bad-origin"}`; passes other rejections on.
pub async fn recover(r: warp::Rejection) -> Result<Response, warp::Rejection> {
    if r.find::<BadOrigin>().is_some() {
        Ok(crate::transport::http::error(StatusCode::FORBIDDEN, ErrorCode::BadOrigin, "this origin is not allowed"))
    } else {
        Err(r)
    }
}

/// Adds the CORS answer for an allowed cross-origin request (`origin` as [`check`] extracted it).
pub fn cors(mut res: Response, origin: Option<String>) -> Response {
    let h = res.headers_mut();
    // Caches must not hand one origin's answer to another.
    h.append("vary", "Origin".parse().expect("static header"));
    if let Some(value) = origin.and_then(|o| o.parse().ok()) {
        h.insert("access-control-allow-origin", value);
    }
    res
}

/// The answer to a CORS preflight (`OPTIONS`) from an allowed origin.
pub fn preflight(origin: Option<String>) -> Response {
    let mut res = warp::Reply::into_response(StatusCode::NO_CONTENT);
    let h = res.headers_mut();
    h.insert("access-control-allow-methods", "GET, POST, OPTIONS".parse().expect("static header"));
    h.insert("access-control-allow-headers", "authorization, content-type".parse().expect("static header"));
    h.insert("access-control-max-age", "600".parse().expect("static header"));
    cors(res, origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(list: &[&str]) -> OriginPolicy {
        OriginPolicy::from_flags(&OriginFlags { allowed_origin: list.iter().map(|s| s.to_string()).collect() }).unwrap()
    }

    #[test]
    fn defaults_allow_own_and_loopback_origins() {
        let p = policy(&[]);
        for ok in [
            "http://localhost",
            "http://localhost:3000",
            "https://127.0.0.1:8443",
            "http://[::1]:8080",
            "HTTP://LOCALHOST:1",
        ] {
            assert!(p.allows(ok, None), "{ok}");
        }
        assert!(p.allows("https://signal.example", Some("signal.example")));
        assert!(p.allows("http://signal.example:8080", Some("signal.example:8080")));
        for bad in [
            "https://evil.example",
            "null",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example",
            "http://localhost:80x",
            "ws://localhost",
            "http://[::2]:1",
            "https://signal.example:8443",
        ] {
            assert!(!p.allows(bad, Some("signal.example")), "{bad}");
        }
    }

    #[test]
    fn a_list_replaces_loopback_but_keeps_the_own_origin() {
        let p = policy(&["https://app.example"]);
        assert!(p.allows("https://app.example", Some("signal.example")));
        assert!(p.allows("https://APP.example", None));
        assert!(!p.allows("http://app.example", None));
        assert!(!p.allows("http://localhost:3000", None));
        assert!(p.allows("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(policy(&["*"]).allows("null", None));
    }

    #[test]
    fn unusable_entries_are_refused() {
        for bad in ["app.example", "https://app.example/", "https://app.example/path", "ftp://x"] {
            let flags = OriginFlags { allowed_origin: vec![bad.into()] };
            assert!(OriginPolicy::from_flags(&flags).is_err(), "{bad}");
        }
    }
}
