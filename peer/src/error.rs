//! Errors of the `peer` crate, each with a stable code.

use protocol::ErrorCode;

/// Everything that can go wrong in a peer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The server URL is not `http(s)://` or `ws(s)://`.
    #[error("invalid server URL {0:?}: expected http://, https://, ws:// or wss://")]
    InvalidUrl(String),
    /// The room name is invalid (checked before connecting).
    #[error("invalid room name: {0}")]
    BadRoom(String),
    /// The server could not be reached or did not welcome us.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The CA file given to trust (`TlsOptions::ca_file`, `--ca-file`) cannot be read or holds no usable
    /// certificate.
    #[error("bad CA file {path}: {detail}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The server's TLS certificate did not verify against the trusted roots (unknown issuer, expired, wrong
    /// host name, ...). Not retried: every transport reaches the same server with the same certificate.
    #[error("the TLS certificate of {server} does not verify: {reason}")]
    TlsVerify {
        /// The server (scheme, host and port only).
        server: String,
        /// Why it did not verify.
        reason: String,
    },
    /// The join token cannot be sent (empty, or characters outside visible ASCII). Its value is never shown.
    #[error("invalid join token: {0}")]
    InvalidToken(&'static str),
    /// The server refused the session (`bad-room`, `room-full`, ...).
    #[error("server refused: {code}: {message}")]
    Refused {
        /// The server's error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server sent something that does not follow the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The signaling session has ended.
    #[error("signaling session closed")]
    SignalingClosed,
    /// No such remote peer (never seen, or gone).
    #[error("unknown peer {0}")]
    UnknownPeer(String),
    /// The channel is not open (yet, or any more).
    #[error("channel {label:?} to {peer} is not open")]
    ChannelNotOpen {
        /// The remote peer.
        peer: String,
        /// The channel label.
        label: String,
    },
    /// A message too large for an unreliable or unordered channel (those cannot be chunked safely).
    #[error("message of {size} bytes exceeds the {limit}-byte limit of unreliable/unordered channel {label:?}")]
    TooLarge {
        /// The channel label.
        label: String,
        /// The message size.
        size: usize,
        /// The largest message that channel takes.
        limit: usize,
    },
    /// A peer sent a frame that breaks the framing rules (see `framing`); the message was dropped.
    #[error("bad frame from {peer} on {label:?}: {detail}")]
    BadFrame {
        /// The sender.
        peer: String,
        /// The channel.
        label: String,
        /// What was wrong.
        detail: String,
    },
    /// Relay-only, and gathering ended without a relay candidate: the TURN server refused the credential
    /// (expired, or minted with a secret it does not have), could not be reached, or none was configured.
    #[error("relay only, but no TURN relay candidate for {peer}: the TURN server refused the credential (expired or wrong secret), is unreachable, or none is configured")]
    RelayUnavailable {
        /// The remote peer whose connection has no path.
        peer: String,
    },
    /// The WebRTC stack failed.
    #[error("webrtc: {0}")]
    WebRtc(String),
    /// The peer has been closed.
    #[error("peer closed")]
    Closed,
}

impl Error {
    /// A stable machine-readable code, e.g. `"unknown-peer"`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidUrl(_) => "invalid-url",
            Error::BadRoom(_) => "bad-room",
            Error::Connect(_) => "connect-failed",
            Error::CaFile { .. } => "bad-ca-file",
            Error::TlsVerify { .. } => "tls-verify-failed",
            Error::InvalidToken(_) => "invalid-token",
            Error::Refused { code, .. } => code.as_str(),
            Error::Protocol(_) => "protocol-violation",
            Error::SignalingClosed => "signaling-closed",
            Error::UnknownPeer(_) => "unknown-peer",
            Error::ChannelNotOpen { .. } => "channel-not-open",
            Error::TooLarge { .. } => "too-large",
            Error::BadFrame { .. } => "bad-frame",
            Error::RelayUnavailable { .. } => "relay-unavailable",
            Error::WebRtc(_) => "webrtc",
            Error::Closed => "closed",
        }
    }
}

impl From<webrtc::error::Error> for Error {
    fn from(e: webrtc::error::Error) -> Self {
        Error::WebRtc(e.to_string())
    }
}
