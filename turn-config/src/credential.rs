//! TURN REST credentials, as coturn checks them with `use-auth-secret`:
//! username = `<expiry unix time>:<peer id>`, password = base64(HMAC-SHA1(secret, username)).
//!
//! coturn refuses a username whose expiry is in the past, and accepts a password computed with any of its
//! `static-auth-secret`s, which is how a secret is rotated without refusing credentials already handed out.

use crate::Error;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Shortest accepted secret, in characters. `turn-config secret` makes 64 (32 random bytes, hex).
pub const MIN_SECRET_LEN: usize = 16;
/// Shortest accepted credential lifetime.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Longest accepted credential lifetime (a leaked credential is usable that long).
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest accepted peer id (the part after the `:`).
pub const MAX_PEER_ID_LEN: usize = 128;

/// A shared secret between the signaling server and coturn (`static-auth-secret`). Never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Checks that `s` is long enough and fits on one `static-auth-secret=` line (printable ASCII, no
    /// spaces, no `#`).
    pub fn new(s: impl Into<String>) -> Result<Secret, Error> {
        let s = s.into();
        if s.len() < MIN_SECRET_LEN {
            return Err(Error::BadSecret(format!("shorter than {MIN_SECRET_LEN} characters")));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
            return Err(Error::BadSecret("only printable ASCII without spaces or `#`".into()));
        }
        Ok(Secret(s))
    }

    /// 32 bytes from the OS random number generator, as 64 hex characters.
    pub fn generate() -> Result<Secret, Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| Error::BadSecret(format!("OS random number generator: {e}")))?;
        Ok(Secret(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// The secret itself, for writing it into coturn's configuration.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Every secret coturn accepts; the first one mints new credentials. Rotation: put the new secret first,
/// keep the old one second for at least one TTL, then drop it (see `docs/deployment.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secrets(Vec<Secret>);

impl Secrets {
    /// At least one secret; the first one mints.
    pub fn new(secrets: Vec<Secret>) -> Result<Secrets, Error> {
        if secrets.is_empty() {
            return Err(Error::BadSecret("no secret given".into()));
        }
        Ok(Secrets(secrets))
    }

    /// Parses a secret file: one secret a line, newest first; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Secrets, Error> {
        let secrets = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(Secret::new)
            .collect::<Result<Vec<_>, _>>()?;
        Secrets::new(secrets)
    }

    /// Reads and parses a secret file.
    pub fn read(path: &Path) -> Result<Secrets, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::SecretFile { path: path.to_owned(), reason: e.to_string() })?;
        Secrets::parse(&text).map_err(|e| Error::SecretFile { path: path.to_owned(), reason: e.to_string() })
    }

    /// The secret that mints.
    pub fn current(&self) -> &Secret {
        // `new` refuses an empty list.
        &self.0[0]
    }

    /// Every accepted secret, newest first.
    pub fn all(&self) -> &[Secret] {
        &self.0
    }
}

/// A TURN username and password, valid until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// `<expiry unix time>:<peer id>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
    /// When coturn starts refusing it.
    pub expires_at: SystemTime,
}

/// Mints a credential for `peer_id` that coturn accepts until `now + ttl`.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use turn_config::credential::{mint, Secret};
/// let secret = Secret::new("a-long-shared-secret").unwrap();
/// let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let c = mint(&secret, "peer1", Duration::from_secs(3600), now).unwrap();
/// assert_eq!(c.username, "1700003600:peer1");
/// ```
pub fn mint(secret: &Secret, peer_id: &str, ttl: Duration, now: SystemTime) -> Result<Credential, Error> {
    validate_peer_id(peer_id)?;
    validate_ttl(ttl)?;
    let expiry = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() + ttl.as_secs();
    let username = format!("{expiry}:{peer_id}");
    let password = password_for(secret, &username);
    Ok(Credential { username, password, expires_at: UNIX_EPOCH + Duration::from_secs(expiry) })
}

/// Checks a credential the way coturn does with `use-auth-secret` (tests and debugging): the expiry before
/// the `:` is a decimal unix time not in the past, and the password is the HMAC of the whole username with
/// one of the secrets.
pub fn verify(secrets: &Secrets, username: &str, password: &str, now: SystemTime) -> Result<(), Error> {
    let expiry = expiry_of(username)?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if expiry < now {
        return Err(Error::Expired { expired_at: expiry, now });
    }
    if secrets.all().iter().any(|s| password_for(s, username) == password) {
        Ok(())
    } else {
        Err(Error::WrongPassword)
    }
}

/// The expiry (unix seconds) written at the start of a REST username.
pub fn expiry_of(username: &str) -> Result<u64, Error> {
    let (expiry, _) = username.split_once(':').ok_or_else(|| Error::BadUsername(username.to_owned()))?;
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::BadUsername(username.to_owned()));
    }
    expiry.parse().map_err(|_| Error::BadUsername(username.to_owned()))
}

/// Refuses a credential lifetime outside [`MIN_TTL`, `MAX_TTL`].
pub fn validate_ttl(ttl: Duration) -> Result<(), Error> {
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(Error::BadTtl { ttl_s: ttl.as_secs(), min_s: MIN_TTL.as_secs(), max_s: MAX_TTL.as_secs() });
    }
    Ok(())
}

fn validate_peer_id(peer_id: &str) -> Result<(), Error> {
    // The `:` separates the expiry; coturn also logs the username, so keep it to safe printable ASCII.
    let ok = !peer_id.is_empty()
        && peer_id.len() <= MAX_PEER_ID_LEN
        && peer_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if ok { Ok(()) } else { Err(Error::BadPeerId(peer_id.to_owned())) }
}

fn password_for(secret: &Secret, username: &str) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn known_answer_matches_an_independent_hmac_sha1() {
        // Computed with: printf '%s' '1700003600:peer1' | openssl dgst -sha1 -hmac 'a-long-shared-secret' -binary | base64
        let secret = Secret::new("a-long-shared-secret").unwrap();
        let c = mint(&secret, "peer1", Duration::from_secs(3600), at(1_700_000_000)).unwrap();
        assert_eq!(c.username, "1700003600:peer1");
        assert_eq!(c.password, "bpqRQucR8ZC/dcmtZBqAc/qc67Y=");
        assert_eq!(c.expires_at, at(1_700_003_600));
    }

    #[test]
    fn coturn_rules_expiry_in_the_future_hmac_over_the_whole_username_base64() {
        let secrets = Secrets::parse("# newest first\nnew-secret-0123456789\n\nold-secret-0123456789\n").unwrap();
        let c = mint(secrets.current(), "p", Duration::from_secs(600), at(1000)).unwrap();
        // Expiry: accepted until and including the expiry second, refused after.
        verify(&secrets, &c.username, &c.password, at(1600)).unwrap();
        assert_eq!(verify(&secrets, &c.username, &c.password, at(1601)).unwrap_err().code(), "credential-expired");
        // The HMAC covers the whole username: changing the peer id or the expiry breaks it.
        assert_eq!(verify(&secrets, "1600:q", &c.password, at(1000)).unwrap_err().code(), "wrong-credential");
        assert_eq!(verify(&secrets, "1601:p", &c.password, at(1000)).unwrap_err().code(), "wrong-credential");
        // Standard base64 with padding of a 20-byte SHA-1 HMAC: 28 characters.
        assert_eq!(c.password.len(), 28);
        assert!(c.password.ends_with('='));
        // Rotation: a credential minted with the older secret is still accepted while it is listed.
        let old = Secret::new("old-secret-0123456789").unwrap();
        let c_old = mint(&old, "p", Duration::from_secs(600), at(1000)).unwrap();
        verify(&secrets, &c_old.username, &c_old.password, at(1000)).unwrap();
        let only_new = Secrets::parse("new-secret-0123456789").unwrap();
        assert_eq!(verify(&only_new, &c_old.username, &c_old.password, at(1000)).unwrap_err().code(), "wrong-credential");
    }

    #[test]
    fn bad_inputs_get_stable_codes() {
        let s = Secret::new("a-long-shared-secret").unwrap();
        let ttl = Duration::from_secs(600);
        for id in ["", "a:b", "has space", "é", &"x".repeat(129)] {
            assert_eq!(mint(&s, id, ttl, at(0)).unwrap_err().code(), "bad-peer-id", "{id:?}");
        }
        assert_eq!(mint(&s, "p", Duration::from_secs(59), at(0)).unwrap_err().code(), "bad-ttl");
        assert_eq!(mint(&s, "p", MAX_TTL + Duration::from_secs(1), at(0)).unwrap_err().code(), "bad-ttl");
        for bad in ["short", "has a space in it ok", "has#hash-0123456789"] {
            assert_eq!(Secret::new(bad).unwrap_err().code(), "bad-secret", "{bad:?}");
        }
        assert_eq!(Secrets::parse("# only a comment\n").unwrap_err().code(), "bad-secret");
        assert_eq!(Secrets::read(Path::new("/nonexistent/secret")).unwrap_err().code(), "secret-file");
        for u in ["nocolon", ":p", "12a:p", "-5:p", "99999999999999999999999:p"] {
            assert_eq!(expiry_of(u).unwrap_err().code(), "bad-username", "{u:?}");
        }
    }

    #[test]
    fn secrets_are_random_and_never_printed() {
        let a = Secret::generate().unwrap();
        assert_eq!(a.expose().len(), 64);
        assert_ne!(a, Secret::generate().unwrap());
        assert!(!format!("{:?}", Secrets::new(vec![a.clone()]).unwrap()).contains(a.expose()));
    }
}
