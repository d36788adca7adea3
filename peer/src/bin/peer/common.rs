//! What every subcommand shares: connecting, failures and exit codes, presence lines, shutdown.

use peer::{ChannelOptions, Event, Peer, PeerConfig};
use std::net::IpAddr;
use std::time::Duration;
use tokio::sync::mpsc;

/// Exit code of a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a runtime error.
pub const EXIT_RUNTIME: u8 = 1;

/// How long leaving the room may take before we exit anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// The global flags.
#[derive(Debug, Clone)]
pub struct Globals {
    pub server: String,
    pub room: String,
    pub bind: IpAddr,
    pub channel: String,
    pub relay_only: bool,
    pub transports: Vec<peer::signaling::Transport>,
    pub ca_file: Option<std::path::PathBuf>,
    /// The join token (redacted in `Debug`).
    pub token: Option<protocol::Secret>,
}

/// Why a command failed: printed as `peer: <code>: <message>`, exits with `exit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub exit: u8,
    /// A stable code: a `peer::Error::code()` or one of the CLI's own (see docs/peer-cli.md).
    pub code: String,
    pub message: String,
}

impl Failure {
    pub fn usage(code: &str, message: impl Into<String>) -> Self {
        Failure { exit: EXIT_USAGE, code: code.to_owned(), message: message.into() }
    }

    pub fn runtime(code: &str, message: impl Into<String>) -> Self {
        Failure { exit: EXIT_RUNTIME, code: code.to_owned(), message: message.into() }
    }
}

impl From<peer::Error> for Failure {
    fn from(e: peer::Error) -> Self {
        let exit = match e {
            // Found before any network traffic: the command line is wrong.
            peer::Error::InvalidUrl(_) | peer::Error::BadRoom(_) | peer::Error::CaFile { .. } | peer::Error::InvalidToken(_) => {
                EXIT_USAGE
            }
            _ => EXIT_RUNTIME,
        };
        Failure { exit, code: e.code().to_owned(), message: e.to_string() }
    }
}

/// Joins the room with one reliable ordered channel labelled `--channel`.
pub async fn connect(g: &Globals) -> Result<(Peer, mpsc::Receiver<Event>), Failure> {
    let mut cfg = PeerConfig::new(&g.server, &g.room);
    cfg.bind = g.bind;
    cfg.relay_only = g.relay_only;
    cfg.channels = vec![ChannelOptions::reliable(&g.channel)];
    cfg.signaling.transports = g.transports.clone();
    cfg.signaling.tls.ca_file = g.ca_file.clone();
    cfg.signaling.token = g.token.clone();
    let (peer, events) = Peer::connect(cfg).await?;
    status(&format!("joined room {} as {} (over {})", g.room, peer.id(), peer.transport()));
    Ok((peer, events))
}

/// Leaves the room, bounded in time.
pub async fn close(peer: Peer) {
    if tokio::time::timeout(CLOSE_GRACE, peer.close()).await.is_err() {
        tracing::debug!("leaving the room took too long; exiting anyway");
    }
}

/// The short form of a peer id used in output: its first 8 characters.
pub fn short(id: &str) -> &str {
    match id.char_indices().nth(8) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

/// A presence/status line on stderr (`* ...`), never on stdout.
pub fn status(line: &str) {
    stderr_line(&format!("* {line}"));
}

/// One line on stderr in a single write, so lines of processes sharing a terminal do not interleave.
pub fn stderr_line(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(format!("{line}\n").as_bytes());
}

/// Prints the presence events every command reports on stderr; returns true if it was one of them.
pub fn print_presence(ev: &Event) -> bool {
    match ev {
        Event::PeerJoined(p) => status(&format!("{} joined", short(p))),
        Event::PeerLeft { peer, reason } => {
            let reason = serde_json::to_value(reason).ok().and_then(|v| v.as_str().map(str::to_owned));
            status(&format!("{} left ({})", short(peer), reason.as_deref().unwrap_or("?")));
        }
        Event::ChannelOpen { peer, label } => status(&format!("channel {label} to {} open", short(peer))),
        Event::ChannelClosed { peer, label } => status(&format!("channel {label} to {} closed", short(peer))),
        Event::SignalingDisconnected { code } => match code {
            Some(c) => status(&format!("signaling connection closed (code {c}); reconnecting, open channels stay up")),
            None => status("signaling connection lost; reconnecting, open channels stay up"),
        },
        Event::SignalingReconnected { transport, resumed: true } => {
            status(&format!("signaling resumed over {transport}"))
        }
        Event::SignalingReconnected { transport, resumed: false } => {
            status(&format!("signaling reconnected over {transport} as a new session"))
        }
        Event::NewSession { id } => status(&format!("new session: now {}", short(id))),
        Event::SignalingClosed { code } => match code {
            Some(c) => status(&format!("signaling session closed (code {c}); open channels stay up")),
            None => status("signaling session closed; open channels stay up"),
        },
        Event::Error(e) => tracing::warn!(code = e.code(), "{e}"),
        Event::ConnectionState { peer, state } => tracing::debug!(peer = %peer, %state, "connection state"),
        Event::Message { .. } => return false,
    }
    true
}

/// Resolves on SIGINT or SIGTERM.
pub async fn interrupted() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Waits (at most `limit`) until everything handed to the channels `label` to `peers` is acknowledged by SCTP,
/// so that leaving right after a send does not lose it.
pub async fn drain(peer: &Peer, peers: &[String], label: &str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    for p in peers {
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, peer.buffered_amount(p, label)).await {
            if n == 0 || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids() {
        assert_eq!(short("0123456789abcdef"), "01234567");
        assert_eq!(short("abc"), "abc");
        assert_eq!(short(""), "");
    }

    #[test]
    fn library_errors_map_to_exit_codes() {
        let f = Failure::from(peer::Error::BadRoom("x".into()));
        assert_eq!((f.exit, f.code.as_str()), (EXIT_USAGE, "bad-room"));
        let f = Failure::from(peer::Error::Connect("refused".into()));
        assert_eq!((f.exit, f.code.as_str()), (EXIT_RUNTIME, "connect-failed"));
    }
}
