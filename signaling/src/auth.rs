//! Join tokens: who may open a session in which room.
//!
//! Off unless a key is configured (`--auth-secret-file` for HS256, `--auth-public-key` for EdDSA); then every
//! join needs a JWT whose `room` (exact) or `room_prefix` covers the room. The algorithm comes from the
//! configuration, never from the token: [`jsonwebtoken::Validation`] is pinned to the one algorithm, so
//! `alg: none`, an HS256 token against an EdDSA key (the classic "public key used as HMAC secret" confusion)
//! and the reverse all fail before any signature is looked at. Resumes need only the session token.
//!
//! A token is a secret: it never reaches a log, an error message or a metric label. Refusals name the
//! reason (expired, wrong room, …), never the token.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use protocol::ErrorCode;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The shortest HS256 secret accepted: 256 bits, as RFC 7518 §3.2 asks for HS256.
pub const MIN_SECRET_BYTES: usize = 32;

/// The longest `name` claim accepted, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Join-token and origin settings (flattened into [`crate::Config`]).
#[derive(clap::Args, Debug, Clone)]
pub struct AuthFlags {
    /// Require HS256 join tokens signed with this file's bytes (a trailing newline is trimmed; at least 32
    /// bytes). Without this or --auth-public-key, joins need no token and a token given is ignored.
    #[arg(long, env = "SIGNALING_AUTH_SECRET_FILE", conflicts_with = "auth_public_key")]
    pub auth_secret_file: Option<PathBuf>,

    /// Require EdDSA (Ed25519) join tokens verified with this public key (PEM, `BEGIN PUBLIC KEY`).
    #[arg(long, env = "SIGNALING_AUTH_PUBLIC_KEY")]
    pub auth_public_key: Option<PathBuf>,

    /// Clock skew tolerated on a token's `exp` and `nbf`, in seconds.
    #[arg(long, env = "SIGNALING_AUTH_LEEWAY_SECS", default_value_t = 30)]
    pub auth_leeway_secs: u64,

    /// How long a WebSocket may take to send its `auth` message (when its URL had no token) before it is
    /// closed with 4503, in milliseconds. Clients send it as soon as the socket opens; the default stays below
    /// the web demo's 5 s connect timeout, so a page without a token learns why before it tries another transport.
    #[arg(long, env = "SIGNALING_AUTH_TIMEOUT_MS", default_value_t = 3_000)]
    pub auth_timeout_ms: u64,

    /// Which browser origins may connect (WebSocket, SSE) and get CORS headers (POST, poll).
    #[command(flatten)]
    pub origin: crate::origin::OriginFlags,
}

/// An auth setting that cannot work. Messages name the flag and the file, never the key's bytes.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// Both kinds of key were given.
    #[error("give --auth-secret-file or --auth-public-key, not both")]
    BothKeys,
    /// The key file could not be read.
    #[error("cannot read {flag} {path}: {source}")]
    Read {
        /// The flag.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HS256 secret is too short to resist guessing.
    #[error("--auth-secret-file {path} holds {len} bytes; at least {MIN_SECRET_BYTES} are needed")]
    ShortSecret {
        /// The file.
        path: PathBuf,
        /// Its length after trimming.
        len: usize,
    },
    /// The key file is not a key of the expected kind.
    #[error("{flag} {path} is not a usable {kind} key")]
    BadKey {
        /// The flag.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What was expected.
        kind: &'static str,
    },
    /// The auth timeout is zero.
    #[error("--auth-timeout-ms must be above 0")]
    ZeroTimeout,
    /// An `--allowed-origin` that cannot match a browser's `Origin`.
    #[error(transparent)]
    Origin(#[from] crate::origin::OriginError),
}

/// Why a join token was refused. The message never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The server requires a token and none came (in the URL, a header, or the first WebSocket message in
    /// time).
    #[error("a join token is required")]
    Missing,
    /// The first WebSocket message was something other than `auth`.
    #[error("the first message must be auth when the URL carries no token")]
    NotAuthFirst,
    /// `exp` (plus the leeway) has passed.
    #[error("the join token has expired")]
    Expired,
    /// `nbf` (minus the leeway) is still ahead.
    #[error("the join token is not valid yet")]
    NotYetValid,
    /// The token is for another room.
    #[error("the join token is not for this room")]
    WrongRoom,
    /// Anything else: bad encoding, wrong algorithm, wrong key, missing or malformed claims.
    #[error("invalid join token ({0})")]
    Invalid(&'static str),
}

impl AuthError {
    /// The wire code: `token-expired` tells a client that a fresh token would help; everything else is
    /// `unauthorized`.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Expired => ErrorCode::TokenExpired,
            _ => ErrorCode::Unauthorized,
        }
    }
}

/// The claims of a join token.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// The one room this token joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Or: any room whose name starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_prefix: Option<String>,
    /// Expiry, Unix seconds (required).
    pub exp: u64,
    /// Not before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The joiner's display name (validated; the protocol has no field for it yet, see docs/protocol.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// This joiner may only enter a room with fewer than this many peers (never above `--max-peers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_peers: Option<usize>,
}

/// What a join may do once admitted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// The token's `max_peers`, if any.
    pub max_peers: Option<usize>,
    /// The token's `name`, if any.
    pub name: Option<String>,
}

impl Grant {
    /// The room size this joiner may enter: the token's cap, never above the server's.
    pub fn cap(&self, server_max: usize) -> usize {
        self.max_peers.map_or(server_max, |m| m.min(server_max))
    }
}

/// The outcome of checking a join: admitted with a grant, or refused.
pub type Admit = Result<Grant, AuthError>;

/// Checks join tokens with the configured key.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("algorithms", &self.validation.algorithms).finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for one algorithm and key, with `leeway` seconds of clock skew.
    pub fn new(alg: Algorithm, key: DecodingKey, leeway: u64) -> Self {
        // `Validation::new` pins `algorithms` to exactly `alg`; decode refuses any other header `alg`.
        let mut validation = Validation::new(alg);
        validation.leeway = leeway;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Verifier { key, validation }
    }

    /// Checks `token` for a join of `room`.
    pub fn verify(&self, token: &str, room: &str) -> Admit {
        use jsonwebtoken::errors::ErrorKind;
        let claims = match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) => data.claims,
            Err(e) => {
                return Err(match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        AuthError::Invalid("algorithm not accepted")
                    }
                    ErrorKind::MissingRequiredClaim(_) => AuthError::Invalid("missing exp"),
                    ErrorKind::Json(_) => AuthError::Invalid("malformed claims"),
                    _ => AuthError::Invalid("malformed token"),
                });
            }
        };
        let room_ok = match (&claims.room, &claims.room_prefix) {
            (Some(r), None) => r == room,
            (None, Some(p)) => room.starts_with(p.as_str()),
            _ => return Err(AuthError::Invalid("exactly one of room and room_prefix is required")),
        };
        if !room_ok {
            return Err(AuthError::WrongRoom);
        }
        if let Some(name) = &claims.name
            && (name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control))
        {
            return Err(AuthError::Invalid("name must be 1-64 characters without control characters"));
        }
        if claims.max_peers == Some(0) {
            return Err(AuthError::Invalid("max_peers must be at least 1"));
        }
        Ok(Grant { max_peers: claims.max_peers, name: claims.name })
    }
}

/// The server's admission policy: tokens (if configured), the auth timeout, and the origin allowlist.
#[derive(Debug, Clone)]
pub struct Gate {
    verifier: Option<Arc<Verifier>>,
    /// How long a WebSocket without a token in its URL may take to send `auth`.
    pub timeout: Duration,
    /// Which browser origins may connect.
    pub origins: Arc<crate::origin::OriginPolicy>,
}

impl Default for Gate {
    /// No tokens, the default origin rules.
    fn default() -> Self {
        Gate { verifier: None, timeout: Duration::from_millis(3_000), origins: Arc::default() }
    }
}

impl Gate {
    /// Reads the configured key (if any) and builds the policy.
    pub fn from_flags(flags: &AuthFlags) -> Result<Self, AuthConfigError> {
        if flags.auth_timeout_ms == 0 {
            return Err(AuthConfigError::ZeroTimeout);
        }
        let verifier = match (&flags.auth_secret_file, &flags.auth_public_key) {
            (Some(_), Some(_)) => return Err(AuthConfigError::BothKeys),
            (Some(path), None) => {
                let secret = read_secret(path)?;
                let key = DecodingKey::from_secret(&secret).map_err(|_| AuthConfigError::BadKey {
                    flag: "--auth-secret-file",
                    path: path.clone(),
                    kind: "HS256",
                })?;
                Some(Verifier::new(Algorithm::HS256, key, flags.auth_leeway_secs))
            }
            (None, Some(path)) => {
                let pem = read(path, "--auth-public-key")?;
                let key = DecodingKey::from_ed_pem(&pem).map_err(|_| AuthConfigError::BadKey {
                    flag: "--auth-public-key",
                    path: path.clone(),
                    kind: "Ed25519 public",
                })?;
                Some(Verifier::new(Algorithm::EdDSA, key, flags.auth_leeway_secs))
            }
            (None, None) => None,
        };
        Ok(Gate {
            verifier: verifier.map(Arc::new),
            timeout: Duration::from_millis(flags.auth_timeout_ms),
            origins: Arc::new(crate::origin::OriginPolicy::from_flags(&flags.origin)?),
        })
    }

    /// Whether joins need a token.
    pub fn required(&self) -> bool {
        self.verifier.is_some()
    }

    /// Checks a join of `room` carrying `token` (if any). With no key configured every join is admitted and
    /// the token is not even parsed.
    pub fn admit(&self, token: Option<&str>, room: &str) -> Admit {
        let Some(verifier) = &self.verifier else { return Ok(Grant::default()) };
        let Some(token) = token.filter(|t| !t.is_empty()) else { return Err(AuthError::Missing) };
        // Not logged here: a resume checks its token too but only uses the outcome if the resume fails.
        // The refusal is logged (without the token) where it is sent.
        verifier.verify(token, room)
    }
}

/// Reads an HS256 secret file: its bytes, one trailing newline (LF or CRLF) trimmed.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, AuthConfigError> {
    let mut secret = read(path, "--auth-secret-file")?;
    if secret.ends_with(b"\n") {
        secret.pop();
        if secret.ends_with(b"\r") {
            secret.pop();
        }
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(AuthConfigError::ShortSecret { path: path.to_owned(), len: secret.len() });
    }
    Ok(secret)
}

fn read(path: &Path, flag: &'static str) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(path).map_err(|source| AuthConfigError::Read { flag, path: path.to_owned(), source })
}

/// Subcommands of the `signaling` binary (without one, it serves).
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Mint a join token and print it on stdout.
    Token(TokenArgs),
}

/// `signaling token`: mints a join token and prints it on stdout.
#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// The one room the token joins.
    #[arg(long, required_unless_present = "room_prefix", conflicts_with = "room_prefix")]
    pub room: Option<String>,
    /// Or: every room whose name starts with this.
    #[arg(long)]
    pub room_prefix: Option<String>,
    /// How long the token is valid, e.g. `90s`, `15m`, `1h`, `7d` (a bare number is seconds).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The joiner's display name.
    #[arg(long)]
    pub name: Option<String>,
    /// Only join rooms with fewer than this many peers.
    #[arg(long)]
    pub max_peers: Option<usize>,
    /// Sign with HS256 and this secret file (the server's --auth-secret-file).
    #[arg(long, env = "SIGNALING_AUTH_SECRET_FILE", conflicts_with = "auth_private_key")]
    pub auth_secret_file: Option<PathBuf>,
    /// Sign with EdDSA and this Ed25519 private key (PKCS#8 PEM, `BEGIN PRIVATE KEY`); the server gets the
    /// public half as --auth-public-key.
    #[arg(long, env = "SIGNALING_AUTH_PRIVATE_KEY")]
    pub auth_private_key: Option<PathBuf>,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// No key to sign with.
    #[error("give --auth-secret-file or --auth-private-key")]
    NoKey,
    /// The key could not be read or used.
    #[error(transparent)]
    Key(#[from] AuthConfigError),
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

impl TokenArgs {
    /// Signs the token these arguments describe.
    pub fn mint(&self) -> Result<String, MintError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = Claims {
            room: self.room.clone(),
            room_prefix: self.room_prefix.clone(),
            exp: now + self.ttl.as_secs(),
            nbf: None,
            name: self.name.clone(),
            max_peers: self.max_peers,
        };
        let (alg, key) = match (&self.auth_secret_file, &self.auth_private_key) {
            (Some(path), _) => {
                let key = EncodingKey::from_secret(&read_secret(path)?).map_err(MintError::Sign)?;
                (Algorithm::HS256, key)
            }
            (None, Some(path)) => {
                let pem = read(path, "--auth-private-key")?;
                let key = EncodingKey::from_ed_pem(&pem).map_err(|_| AuthConfigError::BadKey {
                    flag: "--auth-private-key",
                    path: path.clone(),
                    kind: "Ed25519 private",
                })?;
                (Algorithm::EdDSA, key)
            }
            (None, None) => return Err(MintError::NoKey),
        };
        jsonwebtoken::encode(&Header::new(alg), &claims, &key).map_err(MintError::Sign)
    }
}

/// Parses `90`, `90s`, `15m`, `1h`, `7d`.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 90s, 15m, 1h, 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err("the ttl must be above 0".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(7 * 86_400));
        for bad in ["", "h", "1w", "0", "-1h", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn grant_cap_never_exceeds_the_server() {
        assert_eq!(Grant { max_peers: Some(40), name: None }.cap(16), 16);
        assert_eq!(Grant { max_peers: Some(3), name: None }.cap(16), 3);
        assert_eq!(Grant::default().cap(16), 16);
    }

    #[test]
    fn errors_never_echo_the_token() {
        let v = Verifier::new(Algorithm::HS256, DecodingKey::from_secret(&[7; 32]).unwrap(), 0);
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzZWNyZXQtbWFya2VyIjoxfQ.c2lnbmF0dXJlLW1hcmtlcg";
        let e = v.verify(token, "r").unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("eyJ") && !shown.contains("marker"), "{shown}");
    }
}
