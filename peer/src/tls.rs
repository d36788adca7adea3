//! TLS of the signaling client: one rustls [`ClientConfig`] shared by every transport (WebSocket, SSE, polling,
//! the `POST`s) and by the ICE-server refresh, so a `wss://`/`https://` server is verified the same way
//! whichever transport reaches it.
//!
//! Trust: Mozilla's root certificates (the `webpki-roots` crate, compiled in, so the result does not depend on
//! the machine's certificate store) plus the certificates of [`TlsOptions::ca_file`] (a private CA). TLS 1.2
//! and 1.3 only, with rustls' safe default cipher suites, on the `ring` provider (the one the server uses).

use crate::error::Error;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which servers the client trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// A PEM file with one or more CA certificates (`BEGIN CERTIFICATE`) to trust besides the built-in roots:
    /// the private CA that signed the server's certificate. Read when connecting; an unreadable or invalid file
    /// is [`Error::CaFile`].
    pub ca_file: Option<PathBuf>,
}

/// The shared client configuration for `opts`.
pub(crate) fn client_config(opts: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &opts.ca_file {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|e| ca_error(path, format!("not a usable CA certificate: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Connect(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // No ALPN: the HTTP client speaks HTTP/1.1 only, and a WebSocket upgrade needs HTTP/1.1 (the server falls
    // back to it without ALPN). hyper-rustls also refuses a config that already has ALPN set.
    Ok(Arc::new(config))
}

fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = std::fs::read(path).map_err(|e| ca_error(path, format!("cannot read it: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_error(path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ca_error(path, "no certificate in it (expected PEM `BEGIN CERTIFICATE` blocks)".into()));
    }
    Ok(certs)
}

fn ca_error(path: &Path, detail: String) -> Error {
    Error::CaFile { path: path.display().to_string(), detail }
}

/// What a failed connection attempt says about TLS: [`Error::TlsVerify`] when the server's certificate did
/// not verify (found anywhere in `err`'s source chain, through `io::Error` wrappers, which do not expose their
/// inner error as a source), `None` otherwise.
pub(crate) fn verify_failure(err: &(dyn std::error::Error + 'static), server: &str) -> Option<Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(rustls::Error::InvalidCertificate(reason)) = e.downcast_ref::<rustls::Error>() {
            return Some(Error::TlsVerify { server: server.to_owned(), reason: describe(reason) });
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let found @ Some(_) = verify_failure(inner, server)
        {
            return found;
        }
        current = e.source();
    }
    None
}

fn describe(reason: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match reason {
        C::UnknownIssuer => "signed by an unknown issuer (give the CA that signed it with --ca-file / TlsOptions::ca_file)".into(),
        C::Expired | C::ExpiredContext { .. } => "expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "not valid yet".into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => "not valid for this host name".into(),
        C::Revoked => "revoked".into(),
        C::BadSignature => "bad signature".into(),
        other => format!("{other:?}"),
    }
}

/// The server part of a URL for messages: scheme, host and port, never a path or query (a query may hold a
/// session or join token).
pub(crate) fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..].find(['/', '?', '#']).map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_drop_paths_and_queries() {
        assert_eq!(origin_of("https://h:1/v1/rooms/r/poll?token=x"), "https://h:1");
        assert_eq!(origin_of("wss://h?resume=x"), "wss://h");
        assert_eq!(origin_of("http://h"), "http://h");
    }

    #[test]
    fn bad_ca_files_are_reported_with_their_path() {
        let dir = std::env::temp_dir().join(format!("peer-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        for path in [missing, empty, garbage] {
            let e = client_config(&TlsOptions { ca_file: Some(path.clone()) }).unwrap_err();
            assert_eq!(e.code(), "bad-ca-file", "{path:?}: {e}");
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(client_config(&TlsOptions::default()).is_ok());
    }

    #[test]
    fn verification_failures_are_found_inside_io_errors() {
        let inner = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        let e = verify_failure(&io, "https://h:1").unwrap();
        assert_eq!(e.code(), "tls-verify-failed");
        assert!(e.to_string().contains("unknown issuer"), "{e}");
        let other = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::HandshakeNotComplete);
        assert!(verify_failure(&other, "https://h:1").is_none());
    }
}
