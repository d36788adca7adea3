//! Wire types of the signaling protocol v1, shared by the server and every Rust client.
//!
//! One enum per direction: [`ClientMessage`] (client → server) and [`ServerMessage`] (server → client,
//! wrapped in a [`ServerEnvelope`] that carries the per-session `seq`). The serde tags match
//! `docs/protocol.md` exactly. This crate does no I/O.
//!
//! ```
//! use protocol::{ClientMessage, ErrorCode, SignalData};
//!
//! let msg = ClientMessage::decode(r#"{"type":"signal","to":"p2","data":{"kind":"end-of-candidates"}}"#, 65536)
//!     .expect("valid message");
//! assert_eq!(msg, ClientMessage::Signal { to: "p2".into(), data: SignalData::EndOfCandidates });
//!
//! let err = ClientMessage::decode("{not json", 65536).unwrap_err();
//! assert_eq!(err.code(), ErrorCode::BadJson);
//! assert_eq!(err.code().as_str(), "bad-json");
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// The protocol version announced in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// A server-assigned peer id (opaque to clients, unguessable).
pub type PeerId = String;

/// Longest accepted room name, in bytes.
pub const MAX_ROOM_LEN: usize = 64;

/// Messages a client sends to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientMessage {
    /// WebRTC signalling for one peer of the same room.
    Signal {
        /// The receiving peer.
        to: PeerId,
        /// The offer, answer or candidate.
        data: SignalData,
    },
    /// An application message pushed through the server.
    Relay {
        /// One receiver, or every other peer in the room when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<PeerId>,
        /// Any JSON value; the server does not look inside.
        data: Value,
    },
    /// Application-level heartbeat and RTT probe.
    Ping {
        /// Echoed in the `pong`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Leave the room and end the session.
    Leave,
    /// A join token, as the first WebSocket message of a server that requires one (and the client did not put
    /// it in the URL). Anywhere else it is ignored.
    Auth {
        /// The join token (a JWT); never logged.
        token: Secret,
    },
}

/// A string that must never reach a log: its `Debug` form is redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The WebRTC payload of a `signal` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SignalData {
    /// An SDP offer.
    Offer {
        /// The session description, untouched.
        sdp: String,
    },
    /// An SDP answer.
    Answer {
        /// The session description, untouched.
        sdp: String,
    },
    /// One trickled ICE candidate.
    Candidate {
        /// As produced by `RTCIceCandidate.toJSON()`.
        candidate: IceCandidateInit,
    },
    /// The sender has gathered all its candidates.
    EndOfCandidates,
}

/// `RTCIceCandidateInit`, with the browser's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidateInit {
    /// The `candidate:` attribute line (may be empty for the end-of-candidates marker some browsers send).
    pub candidate: String,
    /// The media stream identification tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// The index of the m-line.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "sdpMLineIndex")]
    pub sdp_m_line_index: Option<u16>,
    /// The ICE ufrag the candidate belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// A server message with the per-session sequence number the server stamps on everything it sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerEnvelope {
    /// 1 for `welcome`, then +1 per message on this session, gap-free.
    pub seq: u64,
    /// The message itself.
    #[serde(flatten)]
    pub msg: ServerMessage,
}

/// Messages the server sends to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage {
    /// First message of a session.
    Welcome(Welcome),
    /// Another peer entered the room.
    PeerJoined {
        /// The newcomer.
        peer_id: PeerId,
    },
    /// Another peer is gone.
    PeerLeft {
        /// The peer that left.
        peer_id: PeerId,
        /// Why it left.
        reason: LeaveReason,
    },
    /// WebRTC signalling from another peer.
    Signal {
        /// The sender, stamped by the server.
        from: PeerId,
        /// The offer, answer or candidate.
        data: SignalData,
    },
    /// An application message pushed through the server.
    Relay {
        /// The sender, stamped by the server.
        from: PeerId,
        /// Whatever the sender put in `data`.
        data: Value,
    },
    /// Answer to `ping`.
    Pong {
        /// The `id` of the `ping`, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The highest `cseq` the server has received on this session (absent if the client sends none):
        /// the client may forget every message up to it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        received: Option<u64>,
    },
    /// A resume succeeded: sent right after the `replayed` messages the client had missed, so everything
    /// before it (in `seq` order) is the gap, filled.
    Resumed {
        /// How many missed messages were sent again before this one.
        replayed: u64,
        /// The highest `cseq` the server had received: the client sends again, in order, the messages it
        /// sent after that one (the server drops any it already had).
        received: u64,
    },
    /// The previous client message was refused.
    Error {
        /// Stable machine-readable code.
        code: ErrorCode,
        /// Human-readable detail; may change between versions.
        message: String,
    },
}

/// The contents of `welcome`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The id the server assigned to this session.
    pub peer_id: PeerId,
    /// The room joined.
    pub room: String,
    /// Peers already in the room, oldest first.
    pub peers: Vec<PeerId>,
    /// ICE servers to configure the peer connections with.
    pub ice_servers: Vec<IceServer>,
    /// Heartbeat settings of this session.
    pub heartbeat: Heartbeat,
    /// Limits the server enforces.
    pub limits: Limits,
    /// What a resume of this session needs.
    pub session: SessionInfo,
    /// `false` when the client asked to resume a session that could not be resumed (expired, unknown, or
    /// its gap no longer fillable): this is a new session. Absent on a plain join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// The secret and the window of a session, for resuming it on any transport and for `POST`ing to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Secret known only to this client: `Authorization: Bearer <token>` on HTTP requests, `resume=<token>`
    /// when resuming a stream. Never share it.
    pub token: String,
    /// Where to `POST` client messages (HTTP transports), relative to the server.
    pub url: String,
    /// How long after its connection drops the session waits to be resumed, in milliseconds.
    pub resume_window_ms: u64,
}

/// One entry of `RTCConfiguration.iceServers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username, when the server needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password, when the server needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The body of `GET /v1/ice`: fresh ICE servers (TURN credentials minted at that moment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IceConfig {
    /// Same form as `welcome.ice_servers`.
    pub ice_servers: Vec<IceServer>,
}

/// Heartbeat timing: a silent session is closed `interval_ms + timeout_ms` after its last frame at the latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// How often the server pings (and the client should ping).
    pub interval_ms: u64,
    /// How long a ping may go unanswered.
    pub timeout_ms: u64,
}

/// Limits announced to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest accepted client message, in bytes.
    pub max_message_bytes: usize,
    /// Most peers in one room.
    pub max_peers: usize,
}

/// Why a peer left a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaveReason {
    /// It sent `leave`.
    Left,
    /// Its connection closed.
    Closed,
    /// It stopped answering heartbeats.
    Timeout,
    /// Its outgoing queue overflowed.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
}

/// Stable error codes carried by `error` messages. The wire form is the kebab-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The frame is not a JSON object.
    BadJson,
    /// `type` is missing or unknown.
    UnknownType,
    /// A known type with missing or wrongly typed fields.
    BadMessage,
    /// The frame exceeds `max_message_bytes`.
    TooLarge,
    /// `to` is not another peer of the sender's room.
    UnknownPeer,
    /// The room is at `max_peers`.
    RoomFull,
    /// The room name is invalid.
    BadRoom,
    /// The session sends faster than allowed.
    RateLimited,
    /// Missing or wrong credentials.
    Unauthorized,
    /// The join token's `exp` has passed (fetch a new token, then reconnect).
    TokenExpired,
    /// The session's outgoing queue overflowed.
    SlowConsumer,
    /// A resume came too late.
    SessionExpired,
    /// A server fault.
    Internal,
    /// A browser request from an origin not on the allowlist (HTTP 403).
    BadOrigin,
    /// This node is at its session or room limit; another node (or later) may take the client.
    NodeFull,
    /// Too many connections or join attempts from one client address.
    TooManyConnections,
    /// A session sent more ICE candidates than a negotiation needs.
    TooManyCandidates,
    /// A `POST` whose `Content-Type` is not `application/json` (HTTP 415).
    UnsupportedMediaType,
    /// A clustered node cannot reach its shared state (Redis) for what was asked (a join, a resume, a message
    /// to a peer on another node): retry with backoff, possibly on another node.
    ClusterUnavailable,
}

impl ErrorCode {
    /// The wire form, e.g. `"bad-json"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad-json",
            ErrorCode::UnknownType => "unknown-type",
            ErrorCode::BadMessage => "bad-message",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::UnknownPeer => "unknown-peer",
            ErrorCode::RoomFull => "room-full",
            ErrorCode::BadRoom => "bad-room",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token-expired",
            ErrorCode::SlowConsumer => "slow-consumer",
            ErrorCode::SessionExpired => "session-expired",
            ErrorCode::Internal => "internal",
            ErrorCode::BadOrigin => "bad-origin",
            ErrorCode::NodeFull => "node-full",
            ErrorCode::TooManyConnections => "too-many-connections",
            ErrorCode::TooManyCandidates => "too-many-candidates",
            ErrorCode::UnsupportedMediaType => "unsupported-media-type",
            ErrorCode::ClusterUnavailable => "cluster-unavailable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes. 4000–4499 ask the client to reconnect, 4500–4999 to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// Normal end after `leave` (1000).
    Normal,
    /// A frame above the transport's hard cap (1009): the connection was dropped.
    MessageTooBig,
    /// The server is going away (restart, deploy).
    Shutdown,
    /// No frame from the client within the heartbeat timeout.
    HeartbeatTimeout,
    /// The outgoing queue overflowed.
    SlowConsumer,
    /// The room name is invalid.
    BadRoom,
    /// The room is full.
    RoomFull,
    /// Another connection resumed this session: this one is stale and must not reconnect.
    Superseded,
    /// This node is full (sessions, rooms or connections): reconnect, possibly to another node, with backoff.
    NodeFull,
    /// The session kept sending faster than its rate limit after being told: reconnect with backoff.
    RateLimited,
    /// No valid join token (missing, expired, wrong room, bad signature) or none in time: do not reconnect
    /// without a new token.
    Unauthorized,
    /// A clustered node lost its shared state (Redis) and could not admit or keep the session: reconnect
    /// with backoff (another node, or this one once Redis is back).
    ClusterUnavailable,
}

impl CloseCode {
    /// The numeric WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::MessageTooBig => 1009,
            CloseCode::Shutdown => 4000,
            CloseCode::HeartbeatTimeout => 4001,
            CloseCode::SlowConsumer => 4002,
            CloseCode::BadRoom => 4500,
            CloseCode::RoomFull => 4501,
            CloseCode::Superseded => 4502,
            CloseCode::NodeFull => 4003,
            CloseCode::RateLimited => 4004,
            CloseCode::Unauthorized => 4503,
            CloseCode::ClusterUnavailable => 4005,
        }
    }

    /// The close reason text sent with the code.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "bye",
            CloseCode::MessageTooBig => "too-large",
            CloseCode::Shutdown => "shutdown",
            CloseCode::HeartbeatTimeout => "heartbeat-timeout",
            CloseCode::SlowConsumer => "slow-consumer",
            CloseCode::BadRoom => "bad-room",
            CloseCode::RoomFull => "room-full",
            CloseCode::Superseded => "superseded",
            CloseCode::NodeFull => "node-full",
            CloseCode::RateLimited => "rate-limited",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::ClusterUnavailable => "cluster-unavailable",
        }
    }

    /// Whether a client should reconnect after a close with `code` (any code, not only ours).
    pub fn should_reconnect(code: u16) -> bool {
        match code {
            1000 => false,
            4000..=4499 => true,
            4500..=4999 => false,
            // Abnormal closes (1006), server errors (1011), size limits (1009)...: transient.
            _ => true,
        }
    }
}

/// The HTTP transports' equivalent of a WebSocket close frame: the SSE `close` event's data, and the
/// `close` field of a poll response. Same codes, same meaning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseNotice {
    /// A [`CloseCode`] number.
    pub code: u16,
    /// Its reason text.
    pub reason: String,
}

impl From<CloseCode> for CloseNotice {
    fn from(c: CloseCode) -> Self {
        CloseNotice { code: c.code(), reason: c.reason().to_owned() }
    }
}

/// The body of a (long or short) poll response: messages after the requested `seq`, in order, and the
/// close notice when the session has ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollResponse {
    /// Possibly empty (a long poll that timed out, a short poll with nothing new).
    pub messages: Vec<ServerEnvelope>,
    /// Present once the session is over; no further poll will succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<CloseNotice>,
}

/// The JSON body of an HTTP error response (`401`, `404`, `413`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpError {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// Why a client message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame exceeds the size limit.
    #[error("message is {size} bytes, the limit is {limit}")]
    TooLarge {
        /// Size of the frame.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a JSON object.
    #[error("not a JSON object: {0}")]
    BadJson(String),
    /// Missing or unknown `type`.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// Known type, wrong fields.
    #[error("invalid {kind} message: {detail}")]
    BadMessage {
        /// The `type` of the message.
        kind: String,
        /// What serde found wrong.
        detail: String,
    },
}

impl DecodeError {
    /// The wire error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::TooLarge,
            DecodeError::BadJson(_) => ErrorCode::BadJson,
            DecodeError::UnknownType(_) => ErrorCode::UnknownType,
            DecodeError::BadMessage { .. } => ErrorCode::BadMessage,
        }
    }
}

/// Client message types, for telling "unknown type" from "bad fields".
const CLIENT_TYPES: [&str; 5] = ["signal", "relay", "ping", "leave", "auth"];

/// A client message with its optional client sequence number.
///
/// `cseq` (1, 2, 3, … per session) makes client → server delivery exactly-once across reconnects: the server
/// drops a `cseq` it already has, and tells the client the highest it has in `resumed` and `pong`, so the
/// client knows what to send again. Clients that never reconnect may leave it out.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientEnvelope {
    /// The client sequence number, if any.
    pub cseq: Option<u64>,
    /// The message.
    pub msg: ClientMessage,
}

impl ClientEnvelope {
    /// Decodes one text frame, classifying every failure into a stable [`ErrorCode`].
    pub fn decode(text: &str, max_bytes: usize) -> Result<Self, DecodeError> {
        let (cseq, msg) = ClientMessage::decode_inner(text, max_bytes)?;
        Ok(ClientEnvelope { cseq, msg })
    }

    /// Encodes to the JSON text sent on the wire.
    pub fn encode(&self) -> String {
        let mut v = serde_json::to_value(&self.msg).expect("ClientMessage serialises");
        if let (Some(c), Value::Object(obj)) = (self.cseq, &mut v) {
            obj.insert("cseq".into(), c.into());
        }
        v.to_string()
    }
}

impl ClientMessage {
    /// Decodes one text frame, classifying every failure into a stable [`ErrorCode`] (a `cseq` is checked
    /// and ignored; see [`ClientEnvelope`]).
    pub fn decode(text: &str, max_bytes: usize) -> Result<Self, DecodeError> {
        Self::decode_inner(text, max_bytes).map(|(_, m)| m)
    }

    fn decode_inner(text: &str, max_bytes: usize) -> Result<(Option<u64>, Self), DecodeError> {
        if text.len() > max_bytes {
            return Err(DecodeError::TooLarge { size: text.len(), limit: max_bytes });
        }
        let mut value: Value = serde_json::from_str(text).map_err(|e| DecodeError::BadJson(e.to_string()))?;
        let Value::Object(ref mut obj) = value else {
            return Err(DecodeError::BadJson("expected an object".into()));
        };
        let kind = match obj.get("type") {
            Some(Value::String(s)) if CLIENT_TYPES.contains(&s.as_str()) => s.clone(),
            Some(Value::String(s)) => return Err(DecodeError::UnknownType(s.clone())),
            Some(other) => return Err(DecodeError::UnknownType(other.to_string())),
            None => return Err(DecodeError::UnknownType(String::new())),
        };
        let cseq = match obj.remove("cseq") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|c| c > 0) => n.as_u64(),
            Some(other) => {
                return Err(DecodeError::BadMessage { kind, detail: format!("cseq must be a positive integer, got {other}") });
            }
        };
        let msg = serde_json::from_value(value).map_err(|e| DecodeError::BadMessage { kind, detail: e.to_string() })?;
        Ok((cseq, msg))
    }

    /// Encodes to the JSON text sent on the wire.
    pub fn encode(&self) -> String {
        // Serialising these types cannot fail: no maps with non-string keys, no foreign Serialize impls.
        serde_json::to_string(self).expect("ClientMessage serialises")
    }
}

impl ServerEnvelope {
    /// Encodes to the JSON text sent on the wire.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("ServerEnvelope serialises")
    }

    /// Decodes a server frame (for clients).
    pub fn decode(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Checks a room name: 1–64 bytes of `A–Z a–z 0–9 _ - .`, and not `.` or `..`.
pub fn validate_room(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_ROOM_LEN {
        return Err(format!("room name must be 1 to {MAX_ROOM_LEN} characters"));
    }
    if name == "." || name == ".." {
        return Err("room name must not be . or ..".into());
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
        return Err(format!("room name contains {c:?}; allowed: A-Z a-z 0-9 _ - ."));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAX: usize = 65536;

    fn roundtrip_client(msg: ClientMessage) {
        let text = msg.encode();
        assert_eq!(ClientMessage::decode(&text, MAX).unwrap(), msg, "{text}");
    }

    #[test]
    fn client_messages_roundtrip() {
        roundtrip_client(ClientMessage::Signal { to: "a".into(), data: SignalData::Offer { sdp: "v=0\r\n".into() } });
        roundtrip_client(ClientMessage::Signal { to: "a".into(), data: SignalData::Answer { sdp: "v=0".into() } });
        roundtrip_client(ClientMessage::Signal {
            to: "a".into(),
            data: SignalData::Candidate {
                candidate: IceCandidateInit {
                    candidate: "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host".into(),
                    sdp_mid: Some("0".into()),
                    sdp_m_line_index: Some(0),
                    username_fragment: Some("abcd".into()),
                },
            },
        });
        roundtrip_client(ClientMessage::Signal { to: "a".into(), data: SignalData::EndOfCandidates });
        roundtrip_client(ClientMessage::Relay { to: None, data: json!({"x": [1, 2]}) });
        roundtrip_client(ClientMessage::Relay { to: Some("b".into()), data: json!("hi") });
        roundtrip_client(ClientMessage::Ping { id: Some(7) });
        roundtrip_client(ClientMessage::Ping { id: None });
        roundtrip_client(ClientMessage::Leave);
        roundtrip_client(ClientMessage::Auth { token: Secret("a.b.c".into()) });
    }

    #[test]
    fn wire_form_matches_the_spec() {
        let m = ClientMessage::Signal {
            to: "p".into(),
            data: SignalData::Candidate {
                candidate: IceCandidateInit {
                    candidate: "c".into(),
                    sdp_mid: Some("0".into()),
                    sdp_m_line_index: Some(0),
                    username_fragment: None,
                },
            },
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"type":"signal","to":"p","data":{"kind":"candidate","candidate":{"candidate":"c","sdpMid":"0","sdpMLineIndex":0}}})
        );
        assert_eq!(
            serde_json::to_value(ClientMessage::Signal { to: "p".into(), data: SignalData::EndOfCandidates }).unwrap(),
            json!({"type":"signal","to":"p","data":{"kind":"end-of-candidates"}})
        );
        let env = ServerEnvelope {
            seq: 3,
            msg: ServerMessage::PeerLeft { peer_id: "x".into(), reason: LeaveReason::SlowConsumer },
        };
        assert_eq!(
            serde_json::to_value(&env).unwrap(),
            json!({"seq":3,"type":"peer-left","peer_id":"x","reason":"slow-consumer"})
        );
        let err = ServerEnvelope {
            seq: 9,
            msg: ServerMessage::Error { code: ErrorCode::UnknownPeer, message: "m".into() },
        };
        assert_eq!(serde_json::to_value(&err).unwrap(), json!({"seq":9,"type":"error","code":"unknown-peer","message":"m"}));
    }

    #[test]
    fn server_messages_roundtrip() {
        let msgs = vec![
            ServerMessage::Welcome(Welcome {
                protocol: PROTOCOL_VERSION,
                peer_id: "me".into(),
                room: "r".into(),
                peers: vec!["a".into(), "b".into()],
                ice_servers: vec![IceServer {
                    urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
                    username: Some("1:me".into()),
                    credential: Some("pw".into()),
                }],
                heartbeat: Heartbeat { interval_ms: 10_000, timeout_ms: 5_000 },
                limits: Limits { max_message_bytes: MAX, max_peers: 16 },
                session: SessionInfo { token: "t".into(), url: "/v1/sessions/me".into(), resume_window_ms: 1 },
                recovered: Some(false),
            }),
            ServerMessage::Resumed { replayed: 3, received: 2 },
            ServerMessage::PeerJoined { peer_id: "a".into() },
            ServerMessage::PeerLeft { peer_id: "a".into(), reason: LeaveReason::Timeout },
            ServerMessage::Signal { from: "a".into(), data: SignalData::Offer { sdp: "v=0".into() } },
            ServerMessage::Relay { from: "a".into(), data: json!(null) },
            ServerMessage::Pong { id: Some(1), received: Some(4) },
            ServerMessage::Error { code: ErrorCode::BadJson, message: "x".into() },
        ];
        for (i, msg) in msgs.into_iter().enumerate() {
            let env = ServerEnvelope { seq: i as u64 + 1, msg };
            assert_eq!(ServerEnvelope::decode(&env.encode()).unwrap(), env);
        }
    }

    #[test]
    fn cseq_is_optional_positive_and_round_trips() {
        let env = ClientEnvelope { cseq: Some(7), msg: ClientMessage::Ping { id: Some(1) } };
        assert_eq!(ClientEnvelope::decode(&env.encode(), MAX).unwrap(), env);
        let plain = ClientEnvelope { cseq: None, msg: ClientMessage::Leave };
        assert_eq!(plain.encode(), r#"{"type":"leave"}"#);
        assert_eq!(ClientEnvelope::decode(&plain.encode(), MAX).unwrap(), plain);
        for bad in [r#"{"type":"leave","cseq":0}"#, r#"{"type":"leave","cseq":-1}"#, r#"{"type":"leave","cseq":"1"}"#, r#"{"type":"leave","cseq":1.5}"#] {
            assert_eq!(ClientEnvelope::decode(bad, MAX).unwrap_err().code(), ErrorCode::BadMessage, "{bad}");
        }
    }

    fn code_of(text: &str) -> ErrorCode {
        ClientMessage::decode(text, MAX).unwrap_err().code()
    }

    #[test]
    fn bad_input_maps_to_stable_codes() {
        assert_eq!(code_of("{oops"), ErrorCode::BadJson);
        assert_eq!(code_of(""), ErrorCode::BadJson);
        assert_eq!(code_of("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code_of("\"signal\""), ErrorCode::BadJson);
        assert_eq!(code_of("{}"), ErrorCode::UnknownType);
        assert_eq!(code_of(r#"{"type":"teleport"}"#), ErrorCode::UnknownType);
        assert_eq!(code_of(r#"{"type":5}"#), ErrorCode::UnknownType);
        // Server-only types are unknown coming from a client.
        assert_eq!(code_of(r#"{"type":"welcome"}"#), ErrorCode::UnknownType);
        // Wrong field types and missing fields.
        assert_eq!(code_of(r#"{"type":"signal","to":5,"data":{"kind":"end-of-candidates"}}"#), ErrorCode::BadMessage);
        assert_eq!(code_of(r#"{"type":"signal","to":"a"}"#), ErrorCode::BadMessage);
        assert_eq!(code_of(r#"{"type":"signal","to":"a","data":{"kind":"rollback"}}"#), ErrorCode::BadMessage);
        assert_eq!(code_of(r#"{"type":"signal","to":"a","data":{"kind":"offer"}}"#), ErrorCode::BadMessage);
        assert_eq!(code_of(r#"{"type":"signal","to":"a","data":{"kind":"candidate","candidate":"x"}}"#), ErrorCode::BadMessage);
        assert_eq!(code_of(r#"{"type":"relay"}"#), ErrorCode::BadMessage);
        assert_eq!(code_of(r#"{"type":"relay","to":[],"data":1}"#), ErrorCode::BadMessage);
        assert_eq!(code_of(r#"{"type":"ping","id":-1}"#), ErrorCode::BadMessage);
        assert_eq!(code_of(r#"{"type":"ping","id":"x"}"#), ErrorCode::BadMessage);
    }

    #[test]
    fn size_limit_is_checked_before_parsing() {
        let big = format!(r#"{{"type":"relay","data":"{}"}}"#, "x".repeat(100));
        let err = ClientMessage::decode(&big, 50).unwrap_err();
        assert_eq!(err, DecodeError::TooLarge { size: big.len(), limit: 50 });
        assert_eq!(err.code(), ErrorCode::TooLarge);
        assert!(ClientMessage::decode(&big, big.len()).is_ok());
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let m = ClientMessage::decode(r#"{"type":"ping","id":3,"extra":true}"#, MAX).unwrap();
        assert_eq!(m, ClientMessage::Ping { id: Some(3) });
    }

    #[test]
    fn error_code_wire_names_match_as_str() {
        use ErrorCode::*;
        for c in [
            BadJson, UnknownType, BadMessage, TooLarge, UnknownPeer, RoomFull, BadRoom, RateLimited, Unauthorized,
            TokenExpired, SlowConsumer, SessionExpired, Internal,
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), json!(c.as_str()));
        }
    }

    #[test]
    fn close_codes_say_whether_to_reconnect() {
        for c in [CloseCode::MessageTooBig, CloseCode::Shutdown, CloseCode::HeartbeatTimeout, CloseCode::SlowConsumer] {
            assert!(CloseCode::should_reconnect(c.code()), "{c:?}");
        }
        for c in [CloseCode::BadRoom, CloseCode::RoomFull] {
            assert!(!CloseCode::should_reconnect(c.code()), "{c:?}");
        }
        assert!(!CloseCode::should_reconnect(CloseCode::Normal.code()));
        assert!(CloseCode::should_reconnect(1006));
    }

    #[test]
    fn room_names() {
        for ok in ["a", "abc-DEF_1.2", &"x".repeat(64)] {
            assert!(validate_room(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "a\r\nb", "é", "a%2Fb", &"x".repeat(65)] {
            assert!(validate_room(bad).is_err(), "{bad:?}");
        }
    }
}
