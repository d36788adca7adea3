//! ICE servers handed to clients: the built-in STUN responder (or public STUN URLs) and TURN servers with
//! short-lived REST credentials minted per session ([`turn_config`]). `welcome` carries them; `GET /v1/ice`
//! returns fresh ones, so a client can refresh its TURN credential before it expires.

use crate::stun::StunResponder;
use protocol::{ErrorCode, IceConfig, IceServer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use turn_config::TurnServers;
use turn_config::credential::Secrets;
use turn_config::url::{IceUrl, Scheme};
use warp::Filter;

/// The STUN port used when `--stun-listen` is not given.
pub const DEFAULT_STUN_PORT: u16 = 3478;

/// ICE flags of the server (flattened into [`crate::Config`]).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct IceFlags {
    /// UDP address of the built-in STUN responder. Default: the --listen IP, port 3478; if that port is
    /// taken the server starts without it and says so (an address given here must bind, or the server exits).
    #[arg(long, env = "SIGNALING_STUN_LISTEN")]
    pub stun_listen: Option<SocketAddr>,

    /// Do not run the built-in STUN responder.
    #[arg(long, env = "SIGNALING_NO_STUN")]
    pub no_stun: bool,

    /// STUN URL to hand to clients instead of the responder's own address (repeatable, or comma-separated),
    /// e.g. stun:stun.example.org:3478. Needed when the responder listens on 0.0.0.0 or behind NAT.
    #[arg(long = "stun-public-url", env = "SIGNALING_STUN_PUBLIC_URL", value_delimiter = ',')]
    pub stun_public_urls: Vec<String>,

    /// TURN URL to hand to clients (repeatable, or comma-separated), e.g.
    /// turn:turn.example.org:3478?transport=udp. Needs --turn-secret-file.
    #[arg(long = "turn-url", env = "SIGNALING_TURN_URL", value_delimiter = ',')]
    pub turn_urls: Vec<String>,

    /// File with coturn's static-auth-secret(s), one a line, newest first (the first one mints).
    #[arg(long, env = "SIGNALING_TURN_SECRET_FILE")]
    pub turn_secret_file: Option<PathBuf>,

    /// Lifetime of minted TURN credentials, in seconds (60 to 604800).
    #[arg(long, env = "SIGNALING_TURN_TTL_S", default_value_t = 3600)]
    pub turn_ttl_s: u64,
}

/// An ICE setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum IceError {
    /// A bad URL, secret file or TTL.
    #[error("{0}")]
    Turn(#[from] turn_config::Error),
    /// A `--stun-public-url` that is not a `stun:` URL.
    #[error("--stun-public-url {0:?} must be a stun: URL")]
    NotStun(String),
    /// TURN URLs without a secret to mint credentials with, or a secret without URLs.
    #[error("--turn-url and --turn-secret-file go together")]
    TurnHalfConfigured,
    /// The STUN address given with `--stun-listen` could not be bound.
    #[error("cannot bind the STUN responder to udp {addr}: {source} (choose another --stun-listen, or --no-stun)")]
    StunBind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

impl IceError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            IceError::Turn(e) => e.code(),
            IceError::NotStun(_) => "not-stun",
            IceError::TurnHalfConfigured => "turn-half-configured",
            IceError::StunBind { .. } => "stun-bind",
        }
    }
}

/// What every session is handed: STUN URLs as they are, TURN URLs with a credential minted for the peer.
#[derive(Debug, Clone, Default)]
pub struct IceServers {
    stun_urls: Vec<String>,
    turn: Option<TurnServers>,
}

impl IceServers {
    /// STUN URLs only (no TURN).
    pub fn stun_only(urls: Vec<String>) -> IceServers {
        IceServers { stun_urls: urls, turn: None }
    }

    /// The ICE servers for `peer_id`, with TURN credentials valid from now for the TTL.
    pub fn for_peer(&self, peer_id: &str) -> Vec<IceServer> {
        let mut servers = Vec::new();
        if !self.stun_urls.is_empty() {
            servers.push(IceServer { urls: self.stun_urls.clone(), username: None, credential: None });
        }
        if let Some(turn) = &self.turn {
            match turn.ice_server(peer_id, SystemTime::now()) {
                Ok(s) => servers.push(s),
                // Server-assigned ids are hex and always valid; only a bad `?peer_id=` can get here.
                Err(e) => tracing::warn!(peer = peer_id, error = %e, "no TURN credential minted"),
            }
        }
        servers
    }

    /// The TURN credential lifetime, if TURN is configured.
    pub fn turn_ttl(&self) -> Option<Duration> {
        self.turn.as_ref().map(TurnServers::ttl)
    }
}

/// Binds the STUN responder (unless disabled) and builds the ICE servers from the flags.
/// `listen` is the HTTP address: the default STUN address uses its IP.
pub async fn setup(flags: &IceFlags, listen: SocketAddr) -> Result<(IceServers, Option<StunResponder>), IceError> {
    let turn = match (flags.turn_urls.is_empty(), &flags.turn_secret_file) {
        (true, None) => None,
        (false, Some(file)) => {
            let turn = TurnServers::new(&flags.turn_urls, Secrets::read(file)?, Duration::from_secs(flags.turn_ttl_s))?;
            for url in &flags.turn_urls {
                if !IceUrl::parse(url)?.usable_by_webrtc_rs() {
                    tracing::info!(url, "native peers (webrtc-rs) ignore turns: and TCP TURN URLs; browsers use them");
                }
            }
            Some(turn)
        }
        _ => return Err(IceError::TurnHalfConfigured),
    };
    for url in &flags.stun_public_urls {
        if IceUrl::parse(url)?.scheme != Scheme::Stun {
            return Err(IceError::NotStun(url.clone()));
        }
    }
    let stun = if flags.no_stun {
        None
    } else if let Some(addr) = flags.stun_listen {
        Some(StunResponder::bind(addr).await.map_err(|source| IceError::StunBind { addr, source })?)
    } else {
        let addr = SocketAddr::new(listen.ip(), DEFAULT_STUN_PORT);
        match StunResponder::bind(addr).await {
            Ok(s) => Some(s),
            Err(e) => {
                // The default port is often taken by a STUN/TURN server already running (coturn). The demo does
                // not need STUN on one machine or a LAN (host candidates connect), so go on without it.
                tracing::warn!(
                    "built-in STUN responder is off: cannot bind udp {addr}: {e}. Peers on this machine or LAN \
                     still connect; pass --stun-listen ADDR to use another port, or --no-stun to silence this"
                );
                None
            }
        }
    };
    let stun_urls = if !flags.stun_public_urls.is_empty() {
        flags.stun_public_urls.clone()
    } else {
        // The responder's own address, when clients can use it as it is; 0.0.0.0 names no reachable host.
        stun.iter()
            .map(StunResponder::local_addr)
            .filter(|a| !a.ip().is_unspecified())
            .map(|a| format!("stun:{a}"))
            .collect()
    };
    Ok((IceServers { stun_urls, turn }, stun))
}

/// `GET /v1/ice[?peer_id=ID]`: fresh ICE servers (`{"ice_servers":[…]}`), never cached.
///
/// With `Authorization: Bearer <session token>`, TURN credentials are minted for that live session's peer id.
/// Without it they are minted for `ID` (a random label when absent) — unless the server requires join tokens:
/// then TURN credentials (relay bandwidth) go only to sessions that were admitted, and the request is 401.
///
/// `lookup` resolves a session token to its peer id (the hub's sessions, or the cluster's): this module mints,
/// it does not know where sessions live.
pub fn route<L, F>(
    ice: IceServers,
    lookup: L,
    tokens_required: bool,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static
where
    L: Fn(String) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Option<String>> + Send,
{
    warp::path!("v1" / "ice")
        .and(warp::get())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and(warp::header::optional::<String>("authorization"))
        .then(move |query: std::collections::HashMap<String, String>, auth: Option<String>| {
            let (ice, lookup) = (ice.clone(), lookup.clone());
            async move {
                let refuse = |status, code: ErrorCode, message: &str| {
                    let body = serde_json::json!({ "code": code.as_str(), "message": message });
                    let reply = warp::reply::with_status(warp::reply::json(&body), status);
                    warp::reply::with_header(reply, "cache-control", "no-store")
                };
                let session_peer = match crate::transport::http::bearer(auth.as_deref()) {
                    Some(token) => match lookup(token.to_owned()).await {
                        Some(peer) => Some(peer),
                        None => {
                            return refuse(
                                warp::http::StatusCode::UNAUTHORIZED,
                                ErrorCode::Unauthorized,
                                "not a live session's token",
                            );
                        }
                    },
                    None if tokens_required => {
                        return refuse(
                            warp::http::StatusCode::UNAUTHORIZED,
                            ErrorCode::Unauthorized,
                            "this server requires join tokens: send Authorization: Bearer <session token>",
                        );
                    }
                    None => None,
                };
                let peer_id = match (session_peer, query.get("peer_id")) {
                    (Some(peer), _) => peer,
                    (None, Some(id)) if valid_label(id) => id.clone(),
                    (None, Some(id)) => {
                        let message = format!("peer_id {id:?}: 1–128 characters of A–Z a–z 0–9 - _ . @");
                        return refuse(warp::http::StatusCode::BAD_REQUEST, ErrorCode::BadMessage, &message);
                    }
                    (None, None) => anonymous_label(),
                };
                let body = IceConfig { ice_servers: ice.for_peer(&peer_id) };
                let reply = warp::reply::with_status(warp::reply::json(&body), warp::http::StatusCode::OK);
                warp::reply::with_header(reply, "cache-control", "no-store")
            }
        })
}

fn valid_label(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

fn anonymous_label() -> String {
    let mut bytes = [0u8; 4];
    // A label for coturn's logs, not a secret: a failing RNG only makes labels collide.
    let _ = getrandom::fill(&mut bytes);
    format!("anon-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn flags(args: &[&str]) -> IceFlags {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct F {
            #[command(flatten)]
            ice: IceFlags,
        }
        F::parse_from(std::iter::once("x").chain(args.iter().copied())).ice
    }

    fn secret_file() -> tempfile_lite::File {
        tempfile_lite::File::with("new-secret-0123456789\nold-secret-0123456789\n")
    }

    /// A temp file removed on drop, without another dependency.
    mod tempfile_lite {
        pub struct File(pub std::path::PathBuf);
        impl File {
            pub fn with(text: &str) -> File {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir().join(format!("ice-test-{}-{n}", std::process::id()));
                let mut f = std::fs::File::create(&p).unwrap();
                super::Write::write_all(&mut f, text.as_bytes()).unwrap();
                File(p)
            }
        }
        impl Drop for File {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[tokio::test]
    async fn turn_credentials_are_minted_per_peer_and_verify() {
        let f = secret_file();
        let path = f.0.to_str().unwrap();
        let fl = flags(&["--no-stun", "--turn-url", "turn:127.0.0.1:3478?transport=udp", "--turn-secret-file", path]);
        let (ice, stun) = setup(&fl, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert!(stun.is_none());
        let servers = ice.for_peer("abc123");
        assert_eq!(servers.len(), 1);
        let (user, pass) = (servers[0].username.clone().unwrap(), servers[0].credential.clone().unwrap());
        assert!(user.ends_with(":abc123"));
        let secrets = Secrets::read(&f.0).unwrap();
        turn_config::credential::verify(&secrets, &user, &pass, SystemTime::now()).unwrap();
        assert_eq!(ice.turn_ttl(), Some(Duration::from_secs(3600)));
    }

    #[tokio::test]
    async fn the_stun_responder_is_advertised_at_its_own_address() {
        let (ice, stun) =
            setup(&flags(&["--stun-listen", "127.0.0.1:0"]), "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = stun.unwrap().local_addr();
        assert_eq!(ice.for_peer("p")[0].urls, [format!("stun:{addr}")]);
        // On 0.0.0.0 the address is no use to clients: nothing is advertised unless a public URL is given.
        let (ice, _stun) = setup(&flags(&["--stun-listen", "0.0.0.0:0"]), "0.0.0.0:0".parse().unwrap()).await.unwrap();
        assert!(ice.for_peer("p").is_empty());
        let fl = flags(&["--stun-listen", "0.0.0.0:0", "--stun-public-url", "stun:stun.example.org:3478"]);
        let (ice, _stun) = setup(&fl, "0.0.0.0:0".parse().unwrap()).await.unwrap();
        assert_eq!(ice.for_peer("p")[0].urls, ["stun:stun.example.org:3478"]);
    }

    #[tokio::test]
    async fn a_taken_stun_port_is_an_error_only_when_asked_for() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = setup(&flags(&["--stun-listen", &addr.to_string()]), addr).await.unwrap_err();
        assert_eq!(err.code(), "stun-bind");
        assert!(err.to_string().contains("--no-stun"), "{err}");
    }

    #[tokio::test]
    async fn bad_ice_flags_get_stable_codes() {
        let f = secret_file();
        let path = f.0.to_str().unwrap();
        let weak = tempfile_lite::File::with("short\n");
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (vec!["--turn-url", "turn:h"], "turn-half-configured"),
            (vec!["--turn-secret-file", path], "turn-half-configured"),
            (vec!["--turn-url", "http://h", "--turn-secret-file", path], "bad-ice-url"),
            (vec!["--turn-url", "stun:h", "--turn-secret-file", path], "not-turn"),
            (vec!["--turn-url", "turn:h", "--turn-secret-file", "/nonexistent"], "secret-file"),
            (vec!["--turn-url", "turn:h", "--turn-secret-file", weak.0.to_str().unwrap()], "secret-file"),
            (vec!["--turn-url", "turn:h", "--turn-secret-file", path, "--turn-ttl-s", "5"], "bad-ttl"),
            (vec!["--stun-public-url", "turn:h"], "not-stun"),
            (vec!["--stun-public-url", "stun//h"], "bad-ice-url"),
        ];
        for (mut args, code) in cases {
            args.push("--no-stun");
            let err = setup(&flags(&args), "127.0.0.1:0".parse().unwrap()).await.unwrap_err();
            assert_eq!(err.code(), code, "{args:?}: {err}");
        }
    }
}
