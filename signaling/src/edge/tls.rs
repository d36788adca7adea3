//! TLS for the listener: certificates from PEM files (reloadable without dropping connections) or a
//! self-signed one made at start-up for LAN and browser tests.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio_rustls::rustls::{
    self, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// Why a certificate could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file holds no usable PEM certificate.
    #[error("--tls-cert {path}: {reason}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// What is wrong (the OS error, or "no CERTIFICATE block").
        reason: String,
    },
    /// The key file holds no usable PEM private key. The key's bytes never appear in the message.
    #[error("--tls-key {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The certificate and key do not make a server configuration (e.g. they do not match).
    #[error("certificate/key rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating the self-signed certificate failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Only one of `--tls-cert` and `--tls-key` was given, or both with `--tls-self-signed`.
    #[error("give --tls-cert and --tls-key together, or --tls-self-signed alone")]
    Flags,
}

/// What `--tls-self-signed` made: the values a client needs to trust it.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// SHA-256 of the certificate DER, upper-case hex in colon-separated pairs (as browsers show it).
    pub sha256_fingerprint: String,
    /// Base64 SHA-256 of the SubjectPublicKeyInfo: what Chromium's `--ignore-certificate-errors-spki-list` takes.
    pub spki_sha256_base64: String,
    /// The certificate, PEM (for clients' `--ca-file`).
    pub cert_pem: String,
}

/// The certificate new handshakes use. Reloading swaps the `Arc<ServerConfig>`; connections already
/// established keep the configuration they were accepted with, so nothing open is dropped.
#[derive(Debug)]
pub struct TlsState {
    current: RwLock<Arc<ServerConfig>>,
    files: Option<(PathBuf, PathBuf)>,
    self_signed: Option<SelfSigned>,
}

impl TlsState {
    /// Loads `cert` (a PEM chain, leaf first) and `key` (PEM PKCS#8, PKCS#1 or SEC1).
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let config = load(cert, key)?;
        Ok(TlsState {
            current: RwLock::new(config),
            files: Some((cert.to_owned(), key.to_owned())),
            self_signed: None,
        })
    }

    /// A fresh self-signed certificate for localhost, 127.0.0.1, ::1 and `listen_ip` (unless unspecified).
    pub fn self_signed(listen_ip: IpAddr) -> Result<Self, TlsError> {
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        if !listen_ip.is_unspecified() && !listen_ip.is_loopback() {
            names.push(listen_ip.to_string());
        }
        let key = rcgen::KeyPair::generate()?;
        let params = rcgen::CertificateParams::new(names)?;
        let cert = params.self_signed(&key)?;
        let der = cert.der().clone();
        let info = SelfSigned {
            sha256_fingerprint: fingerprint(&der),
            spki_sha256_base64: base64::engine::general_purpose::STANDARD.encode(Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key))),
            cert_pem: cert.pem(),
        };
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|reason| TlsError::Key { path: PathBuf::from("(generated)"), reason: reason.to_owned() })?;
        let config = server_config(vec![der], key_der)?;
        Ok(TlsState { current: RwLock::new(config), files: None, self_signed: Some(info) })
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// What `--tls-self-signed` made, if that is the source.
    pub fn self_signed_info(&self) -> Option<&SelfSigned> {
        self.self_signed.as_ref()
    }

    /// Reads the certificate files again and uses them for new handshakes. On error the old certificate stays
    /// in use. A self-signed certificate has no files, so reloading it is a no-op.
    pub fn reload(&self) -> Result<(), TlsError> {
        let Some((cert, key)) = &self.files else { return Ok(()) };
        let config = load(cert, key)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = config;
        Ok(())
    }
}

fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|e| TlsError::Cert { path: cert.to_owned(), reason: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::Cert { path: cert.to_owned(), reason: "no CERTIFICATE block".to_owned() });
    }
    // The pem error names the problem (no key, bad base64), never the key material.
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: key.to_owned(), reason: e.to_string() })?;
    server_config(chain, key_der)
}

/// TLS 1.2 and 1.3 only (rustls has nothing older), ring as the provider, ALPN h2 then http/1.1: browsers use
/// h2 for SSE and polling and http/1.1 for the WebSocket upgrade.
fn server_config(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_reports_its_hashes() {
        let tls = TlsState::self_signed("192.0.2.7".parse().unwrap()).unwrap();
        let info = tls.self_signed_info().unwrap();
        assert_eq!(info.sha256_fingerprint.len(), 32 * 3 - 1);
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(&info.spki_sha256_base64).unwrap().len(), 32);
        assert_eq!(tls.current().alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn bad_files_are_named_and_a_bad_reload_keeps_the_old_cert() {
        let dir = std::env::temp_dir().join(format!("signaling-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let kp = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&kp).unwrap();
        std::fs::write(&cert, c.pem()).unwrap();
        std::fs::write(&key, kp.serialize_pem()).unwrap();
        let tls = TlsState::from_files(&cert, &key).unwrap();
        let before = tls.current();
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(matches!(tls.reload(), Err(TlsError::Cert { .. })));
        assert!(Arc::ptr_eq(&before, &tls.current()), "a failed reload replaced the config");
        std::fs::write(&cert, c.pem()).unwrap();
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        let err = tls.reload().unwrap_err();
        assert!(matches!(err, TlsError::Key { .. } | TlsError::Rustls(_)), "{err}");
        assert!(Arc::ptr_eq(&before, &tls.current()));
        std::fs::write(&key, kp.serialize_pem()).unwrap();
        tls.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &tls.current()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
