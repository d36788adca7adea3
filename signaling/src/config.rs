//! Server settings, from command-line flags or environment variables.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-12-08T00:00:00Z  INFO signaling::hub: left peer=… room=…`.
    Text,
    /// `{"timestamp":…,"level":"INFO","fields":{"message":"left","peer":…},"target":…}`, one per line.
    Json,
}

/// Settings of one signaling server. Every flag has an environment variable of the same name,
/// upper-cased and prefixed with `SIGNALING_` (e.g. `SIGNALING_LISTEN`).
#[derive(Parser, Debug, Clone)]
#[command(name = "signaling", version, about = "WebRTC signaling server with the web demo built in")]
pub struct Config {
    /// Log lines on stderr as `text` (human-readable) or `json` (one JSON object per line, for a log shipper).
    #[arg(long, env = "SIGNALING_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// What to log: a level (`error`, `warn`, `info`, `debug`, `trace`) or `tracing` directives such as
    /// `info,signaling::broker=debug`. `RUST_LOG`, when set, takes precedence.
    #[arg(long, env = "SIGNALING_LOG_LEVEL", default_value = "info,warp=warn")]
    pub log_level: String,

    /// Address to listen on; port 0 picks a free port (the chosen address is printed on stdout).
    #[arg(long, env = "SIGNALING_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Longest accepted client message, in bytes (larger ones get `too-large`).
    #[arg(long, env = "SIGNALING_MAX_MESSAGE_BYTES", default_value_t = 65_536)]
    pub max_message_bytes: usize,

    /// Most peers in one room (a full mesh grows as n², so keep this small).
    #[arg(long, env = "SIGNALING_MAX_PEERS", default_value_t = 16)]
    pub max_peers: usize,

    /// Messages kept per session: what a resume can replay, and how far a client may fall behind before it
    /// is closed as a slow consumer.
    #[arg(long, env = "SIGNALING_OUTBOX", default_value_t = 256)]
    pub outbox: usize,

    /// How long a session whose connection dropped waits to be resumed before the others see it leave, in
    /// milliseconds.
    #[arg(long, env = "SIGNALING_RESUME_WINDOW_MS", default_value_t = 30_000)]
    pub resume_window_ms: u64,

    /// Transports to offer, comma-separated (e.g. `sse,longpoll` to act like a proxy that blocks
    /// WebSockets). `longpoll` covers short polling too.
    #[arg(long, env = "SIGNALING_TRANSPORTS", value_enum, value_delimiter = ',', default_value = "ws,sse,longpoll")]
    pub transports: Vec<crate::transport::Kind>,

    /// How often the server pings each session, in milliseconds.
    #[arg(long, env = "SIGNALING_HEARTBEAT_INTERVAL_MS", default_value_t = 10_000)]
    pub heartbeat_interval_ms: u64,

    /// How long a ping may go unanswered, in milliseconds; must be smaller than the interval.
    #[arg(long, env = "SIGNALING_HEARTBEAT_TIMEOUT_MS", default_value_t = 5_000)]
    pub heartbeat_timeout_ms: u64,

    /// Gzip SSE streams for clients that send `Accept-Encoding: gzip` (flushed after every event, each piece
    /// compressed on its own by the thread's compressor: about 320 KiB per worker thread, nothing per stream).
    /// `--sse-gzip false` sends them uncompressed.
    #[arg(long, env = "SIGNALING_SSE_GZIP", default_value_t = true, action = clap::ArgAction::Set)]
    pub sse_gzip: bool,

    /// tungstenite's read buffer per WebSocket, in bytes. Every connection has one for its whole life, so it is
    /// a large part of what an idle WebSocket costs; a frame larger than it grows it while that frame is read.
    /// Larger values read large messages in fewer system calls.
    #[arg(long, env = "SIGNALING_WS_READ_BUFFER_BYTES", default_value_t = crate::transport::ws::DEFAULT_READ_BUFFER)]
    pub ws_read_buffer_bytes: usize,

    /// Serve the web demo from this folder instead of the copy built into the binary (for development).
    #[arg(long, env = "SIGNALING_WEB_ROOT")]
    pub web_root: Option<PathBuf>,

    /// STUN responder and ICE servers (TURN).
    #[command(flatten)]
    pub ice: crate::ice::IceFlags,

    /// TLS, trusted proxies, edge timeouts and connection caps.
    #[command(flatten)]
    pub edge: crate::edge::EdgeFlags,

    /// Join tokens and the origin allowlist.
    #[command(flatten)]
    pub auth: crate::auth::AuthFlags,

    /// `signaling token …` mints a join token instead of serving.
    #[command(subcommand)]
    pub command: Option<crate::auth::Command>,

    /// Rate, node, size and outbox-byte limits.
    #[command(flatten)]
    pub limits: crate::limits::LimitFlags,

    /// Cluster mode (`--redis-url`).
    #[command(flatten)]
    pub cluster: crate::broker::redis::ClusterFlags,
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The heartbeat timeout must be shorter than its interval, or pings would overlap.
    #[error("--heartbeat-timeout-ms ({timeout}) must be smaller than --heartbeat-interval-ms ({interval}), and both above 0")]
    Heartbeat {
        /// The interval given.
        interval: u64,
        /// The timeout given.
        timeout: u64,
    },
    /// A limit outside its useful range.
    #[error("{flag} must be at least {min} (got {value})")]
    TooSmall {
        /// The flag.
        flag: &'static str,
        /// The smallest useful value.
        min: usize,
        /// The value given.
        value: usize,
    },
    /// No transport left to connect with.
    #[error("--transports must name at least one of ws, sse, longpoll")]
    NoTransport,
    /// The web root does not exist.
    #[error("--web-root {0} is not a directory")]
    WebRoot(PathBuf),
}

impl Config {
    /// Defaults, listening on `listen` (for tests and embedding).
    pub fn with_listen(listen: SocketAddr) -> Self {
        let mut cfg = Config::parse_from(["signaling"]);
        cfg.listen = listen;
        // Like the HTTP port: a free one, so servers started side by side do not fight over 3478.
        cfg.ice.stun_listen = Some(SocketAddr::new(listen.ip(), 0));
        cfg
    }

    /// Refuses settings that cannot work, with a message naming the flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_timeout_ms == 0 || self.heartbeat_timeout_ms >= self.heartbeat_interval_ms {
            return Err(ConfigError::Heartbeat {
                interval: self.heartbeat_interval_ms,
                timeout: self.heartbeat_timeout_ms,
            });
        }
        // An SDP offer with a few candidates is 2–8 KB; below 4 KiB negotiation would break.
        for (flag, min, value) in [
            ("--max-message-bytes", 4096, self.max_message_bytes),
            ("--max-peers", 2, self.max_peers),
            ("--outbox", 16, self.outbox),
            // A frame header is up to 14 bytes; below a few hundred every message takes many reads.
            ("--ws-read-buffer-bytes", 256, self.ws_read_buffer_bytes),
        ] {
            if value < min {
                return Err(ConfigError::TooSmall { flag, min, value });
            }
        }
        self.limits.validate(self.max_message_bytes)?;
        if let Some(ttl) = self.cluster.presence_ttl_ms
            && ttl < 300
        {
            return Err(ConfigError::TooSmall { flag: "--presence-ttl-ms", min: 300, value: ttl as usize });
        }
        if self.transports.is_empty() {
            return Err(ConfigError::NoTransport);
        }
        if let Some(root) = &self.web_root
            && !root.is_dir()
        {
            return Err(ConfigError::WebRoot(root.clone()));
        }
        Ok(())
    }

    /// How long a node that stops refreshing its presence still counts as alive (`--presence-ttl-ms`).
    pub fn presence_ttl(&self) -> Duration {
        Duration::from_millis(self.cluster.presence_ttl_ms.unwrap_or(self.heartbeat_interval_ms + self.heartbeat_timeout_ms))
    }

    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// The heartbeat timeout.
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let cfg = Config::parse_from(["signaling"]);
        cfg.validate().unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn impossible_settings_are_refused() {
        let bad = Config::parse_from(["signaling", "--heartbeat-interval-ms", "1000", "--heartbeat-timeout-ms", "1000"]);
        assert!(matches!(bad.validate(), Err(ConfigError::Heartbeat { .. })));
        let bad = Config::parse_from(["signaling", "--max-peers", "1"]);
        assert!(matches!(bad.validate(), Err(ConfigError::TooSmall { flag: "--max-peers", .. })));
        let bad = Config::parse_from(["signaling", "--web-root", "/nonexistent/dir"]);
        assert!(matches!(bad.validate(), Err(ConfigError::WebRoot(_))));
        assert!(Config::try_parse_from(["signaling", "--transports", "ws,carrier-pigeon"]).is_err());
    }

    #[test]
    fn transports_can_be_narrowed() {
        use crate::transport::Kind;
        assert_eq!(Config::parse_from(["signaling"]).transports, [Kind::Ws, Kind::Sse, Kind::Longpoll]);
        let cfg = Config::parse_from(["signaling", "--transports", "sse,longpoll"]);
        assert_eq!(cfg.transports, [Kind::Sse, Kind::Longpoll]);
        cfg.validate().unwrap();
    }
}
