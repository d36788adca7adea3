//! ICE servers for WebRTC: the server model (`urls`, `username`, `credential`) with validated `stun:`,
//! `turn:` and `turns:` URLs; TURN REST credentials exactly as coturn checks them with `use-auth-secret`;
//! and a `turnserver.conf` with safe defaults. The `turn-config` command prints the configuration and mints
//! credentials for debugging.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use turn_config::{TurnServers, credential::Secrets};
//!
//! let secrets = Secrets::parse("a-long-shared-secret").unwrap();
//! let turn = TurnServers::new(&["turn:turn.example.org:3478?transport=udp"], secrets, Duration::from_secs(3600))
//!     .unwrap();
//! let server = turn.ice_server("peer1", SystemTime::now()).unwrap();
//! assert_eq!(server.urls, ["turn:turn.example.org:3478?transport=udp"]);
//! assert!(server.username.as_deref().unwrap().ends_with(":peer1"));
//! turn_config::validate_ice_server(&server).unwrap();
//! ```

pub mod coturn;
pub mod credential;
pub mod url;

pub use protocol::IceServer;

use credential::Secrets;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use url::{IceUrl, Scheme};

/// Everything this crate refuses, each with a stable [`Error::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An ICE server URL that is not a valid `stun:`, `turn:` or `turns:` URL.
    #[error("invalid ICE server URL {url:?}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `turn:`/`turns:` server without a username and credential.
    #[error("TURN server {0:?} needs a username and a credential")]
    MissingCredential(String),
    /// An ICE server with no URL.
    #[error("an ICE server needs at least one URL")]
    NoUrl,
    /// A TURN server list with a `stun:` URL in it, or none at all.
    #[error("expected turn: or turns: URLs, got {0:?}")]
    NotTurn(String),
    /// A peer id that cannot go into a TURN username (empty, too long, `:` or other unsafe characters).
    #[error("peer id {0:?} cannot be used in a TURN username: 1–128 characters of A–Z a–z 0–9 - _ . @")]
    BadPeerId(String),
    /// A credential lifetime outside the accepted range.
    #[error("credential TTL {ttl_s} s is outside {min_s}–{max_s} s")]
    BadTtl {
        /// The TTL given.
        ttl_s: u64,
        /// The shortest accepted.
        min_s: u64,
        /// The longest accepted.
        max_s: u64,
    },
    /// A secret that is too short, has characters a config line cannot hold, or is missing.
    #[error("bad TURN secret: {0}")]
    BadSecret(String),
    /// The secret file could not be read or holds no valid secret.
    #[error("TURN secret file {path}: {reason}")]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A username that does not start with `<expiry unix time>:`.
    #[error("TURN username {0:?} does not start with `<expiry unix time>:`")]
    BadUsername(String),
    /// A credential whose expiry is in the past (coturn answers 401).
    #[error("TURN credential expired at {expired_at} (now {now})")]
    Expired {
        /// Its expiry, unix seconds.
        expired_at: u64,
        /// The time of the check, unix seconds.
        now: u64,
    },
    /// A password that no accepted secret produces (coturn answers 401).
    #[error("TURN password does not match any secret")]
    WrongPassword,
    /// A realm that is not a DNS-name-like string.
    #[error("realm {0:?} must be 1–127 characters of A–Z a–z 0–9 - .")]
    BadRealm(String),
    /// A relay port range that is empty or starts at 0.
    #[error("relay port range {min}–{max} is empty or starts at 0")]
    BadPortRange {
        /// Lower bound.
        min: u16,
        /// Upper bound.
        max: u16,
    },
}

impl Error {
    /// A stable machine-readable code, e.g. `"bad-ice-url"`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadUrl { .. } => "bad-ice-url",
            Error::MissingCredential(_) => "missing-credential",
            Error::NoUrl => "no-url",
            Error::NotTurn(_) => "not-turn",
            Error::BadPeerId(_) => "bad-peer-id",
            Error::BadTtl { .. } => "bad-ttl",
            Error::BadSecret(_) => "bad-secret",
            Error::SecretFile { .. } => "secret-file",
            Error::BadUsername(_) => "bad-username",
            Error::Expired { .. } => "credential-expired",
            Error::WrongPassword => "wrong-credential",
            Error::BadRealm(_) => "bad-realm",
            Error::BadPortRange { .. } => "bad-port-range",
        }
    }
}

/// Checks an ICE server entry: at least one URL, every URL valid, and TURN URLs with credentials.
/// Returns the parsed URLs.
pub fn validate_ice_server(server: &IceServer) -> Result<Vec<IceUrl>, Error> {
    if server.urls.is_empty() {
        return Err(Error::NoUrl);
    }
    let urls = server.urls.iter().map(|u| IceUrl::parse(u)).collect::<Result<Vec<_>, _>>()?;
    for (url, text) in urls.iter().zip(&server.urls) {
        if url.scheme != Scheme::Stun && (server.username.is_none() || server.credential.is_none()) {
            return Err(Error::MissingCredential(text.clone()));
        }
    }
    Ok(urls)
}

/// An ICE server entry from its URLs and, for TURN, a username and credential (not validated; see
/// [`validate_ice_server`]).
pub fn ice_server(urls: &[&str], credentials: Option<(&str, &str)>) -> IceServer {
    IceServer {
        urls: urls.iter().map(|u| u.to_string()).collect(),
        username: credentials.map(|(u, _)| u.to_owned()),
        credential: credentials.map(|(_, c)| c.to_owned()),
    }
}

/// TURN servers sharing one set of REST secrets: mints an [`IceServer`] with a fresh credential per peer.
#[derive(Debug, Clone)]
pub struct TurnServers {
    urls: Vec<String>,
    secrets: Secrets,
    ttl: Duration,
}

impl TurnServers {
    /// `urls` must be `turn:`/`turns:` URLs; `ttl` within [`credential::MIN_TTL`, `credential::MAX_TTL`].
    pub fn new(urls: &[impl AsRef<str>], secrets: Secrets, ttl: Duration) -> Result<TurnServers, Error> {
        if urls.is_empty() {
            return Err(Error::NotTurn(String::new()));
        }
        let mut checked = Vec::with_capacity(urls.len());
        for u in urls {
            let u = u.as_ref();
            if IceUrl::parse(u)?.scheme == Scheme::Stun {
                return Err(Error::NotTurn(u.to_owned()));
            }
            checked.push(u.to_owned());
        }
        credential::validate_ttl(ttl)?;
        Ok(TurnServers { urls: checked, secrets, ttl })
    }

    /// The TURN server entry for `peer_id`, with a credential valid from `now` for the TTL.
    pub fn ice_server(&self, peer_id: &str, now: SystemTime) -> Result<IceServer, Error> {
        let c = credential::mint(self.secrets.current(), peer_id, self.ttl, now)?;
        Ok(IceServer { urls: self.urls.clone(), username: Some(c.username), credential: Some(c.password) })
    }

    /// The credential lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(urls: &[&str], user: Option<&str>) -> IceServer {
        ice_server(urls, user.map(|u| (u, "pw")))
    }

    #[test]
    fn ice_server_entries_are_validated() {
        validate_ice_server(&server(&["stun:h:3478"], None)).unwrap();
        validate_ice_server(&server(&["turn:h?transport=udp", "turns:h:5349"], Some("1:p"))).unwrap();
        assert_eq!(validate_ice_server(&server(&[], None)).unwrap_err().code(), "no-url");
        assert_eq!(validate_ice_server(&server(&["turn:h"], None)).unwrap_err().code(), "missing-credential");
        assert_eq!(validate_ice_server(&server(&["stun:h", "ftp:h"], None)).unwrap_err().code(), "bad-ice-url");
    }

    #[test]
    fn turn_servers_mint_per_peer_and_refuse_stun_urls() {
        let secrets = Secrets::parse("a-long-shared-secret").unwrap();
        let ttl = Duration::from_secs(600);
        let t = TurnServers::new(&["turn:h:3478"], secrets.clone(), ttl).unwrap();
        let now = SystemTime::now();
        let s = t.ice_server("peer-a", now).unwrap();
        let (user, pass) = (s.username.clone().unwrap(), s.credential.clone().unwrap());
        credential::verify(&secrets, &user, &pass, now).unwrap();
        validate_ice_server(&s).unwrap();
        assert_ne!(t.ice_server("peer-b", now).unwrap().credential, s.credential);
        assert_eq!(TurnServers::new(&["stun:h"], secrets.clone(), ttl).unwrap_err().code(), "not-turn");
        assert_eq!(TurnServers::new(&[] as &[&str], secrets.clone(), ttl).unwrap_err().code(), "not-turn");
        let short = Duration::from_secs(1);
        assert_eq!(TurnServers::new(&["turn:h"], secrets, short).unwrap_err().code(), "bad-ttl");
    }
}
