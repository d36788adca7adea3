//! `peer`: a command-line WebRTC data-channel peer (chat with the web demo, echo, send and receive files).
//!
//! See `docs/peer-cli.md`. stdout carries only data (chat lines, received file paths); everything else
//! (presence, logs, errors) goes to stderr.

mod chat;
mod common;
mod echo;
mod transfer;

use clap::{CommandFactory, Parser, Subcommand};
use common::{Failure, Globals};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// A native WebRTC data-channel peer for the signaling server.
#[derive(Debug, Parser)]
#[command(name = "peer", version, propagate_version = true)]
struct Cli {
    /// The signaling server (http://, https://, ws:// or wss://).
    #[arg(long, env = "PEER_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    server: String,

    /// The room to join (required).
    #[arg(long, env = "PEER_ROOM", global = true)]
    room: Option<String>,

    /// Where to gather ICE host candidates: 0.0.0.0 for every interface, 127.0.0.1 for loopback only.
    #[arg(long, env = "PEER_BIND", default_value = "0.0.0.0", global = true)]
    bind: IpAddr,

    /// The data-channel label to use (a reliable, ordered channel).
    #[arg(long, env = "PEER_CHANNEL", default_value = "chat", global = true)]
    channel: String,

    /// Connect through the server's TURN relays only: the other peers never learn your addresses.
    #[arg(long, env = "PEER_RELAY_ONLY", value_parser = clap::builder::BoolishValueParser::new(), global = true)]
    relay_only: bool,
    /// Signaling transports to try, in order (ws, sse, longpoll, shortpoll); one name forces it.
    #[arg(long, env = "PEER_TRANSPORT", value_delimiter = ',', default_value = "ws,sse,longpoll", global = true)]
    transport: Vec<peer::signaling::Transport>,

    /// PEM file of CA certificates to trust besides the built-in (Mozilla) roots, for an https:// or wss://
    /// server whose certificate a private CA signed.
    #[arg(long, env = "PEER_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,

    /// Join token for a server that requires one (`signaling token` mints them). Prefer PEER_TOKEN or
    /// --token-file: a command line is visible to every user of the machine.
    #[arg(long, env = "PEER_TOKEN", hide_env_values = true, global = true, conflicts_with = "token_file")]
    token: Option<String>,

    /// Read the join token from this file (surrounding whitespace is trimmed).
    #[arg(long, env = "PEER_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,

    /// Log filter for stderr (tracing-subscriber syntax). The default keeps webrtc-rs' chatter out.
    #[arg(long, env = "PEER_LOG", default_value = "error,peer=warn", global = true)]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Chat with every peer of the room (web demo compatible): stdin lines out, `<peer>: text` on stdout.
    Chat,
    /// Echo every message back to its sender on the same channel, byte for byte.
    Echo,
    /// Send one file to the first peer that opens the channel (or to --to).
    Send {
        /// The file to send (at most 256 MiB).
        file: PathBuf,
        /// Send to this peer only: a full peer id or a prefix of one (e.g. the 8 characters `chat` prints).
        #[arg(long, env = "PEER_TO")]
        to: Option<String>,
        /// Seconds any single wait may take (for a peer, for the receiver to make progress, for the ack).
        #[arg(long, env = "PEER_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
    },
    /// Receive one file into DIR, verify its size and SHA-256, print its path.
    Recv {
        /// The directory to write the file into (must exist).
        dir: PathBuf,
        /// Replace an existing file of the same name (refused by default).
        #[arg(long, env = "PEER_OVERWRITE", value_parser = clap::builder::BoolishValueParser::new())]
        overwrite: bool,
        /// Seconds any single wait may take (for the header, then for the content).
        #[arg(long, env = "PEER_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(room) = cli.room.clone() else {
        Cli::command()
            .error(clap::error::ErrorKind::MissingRequiredArgument, "--room <ROOM> (or PEER_ROOM) is required")
            .exit();
    };
    let filter = match EnvFilter::try_new(&cli.log) {
        Ok(f) => f,
        Err(e) => {
            Cli::command().error(clap::error::ErrorKind::InvalidValue, format!("invalid --log filter: {e}")).exit()
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(e) => {
                return report(Failure::usage("bad-token-file", format!("cannot read --token-file {}: {e}", path.display())));
            }
        },
        (None, None) => None,
    };
    let globals = Globals {
        server: cli.server,
        ca_file: cli.ca_file,
        token: token.map(protocol::Secret),
        room,
        bind: cli.bind,
        channel: cli.channel,
        relay_only: cli.relay_only,
        transports: cli.transport,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return report(Failure::runtime("io", format!("cannot start the runtime: {e}"))),
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Chat => chat::run(&globals).await,
            Command::Echo => echo::run(&globals).await,
            Command::Send { file, to, timeout } => transfer::send(&globals, &file, to.as_deref(), timeout).await,
            Command::Recv { dir, overwrite, timeout } => transfer::recv(&globals, &dir, overwrite, timeout).await,
        }
    });
    // Do not wait for tasks still blocked somewhere (webrtc-rs timers, a stdin read): we are done.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => report(f),
    }
}

fn report(f: Failure) -> ExitCode {
    common::stderr_line(&format!("peer: {}: {}", f.code, f.message));
    ExitCode::from(f.exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let a = Cli::try_parse_from(["peer", "--room", "r", "send", "f", "--to", "ab"]).unwrap();
        let b = Cli::try_parse_from(["peer", "send", "f", "--room", "r", "--to", "ab"]).unwrap();
        assert_eq!(a.room.as_deref(), Some("r"));
        assert_eq!(b.room.as_deref(), Some("r"));
        assert!(Cli::try_parse_from(["peer", "--room", "r", "recv", "d", "--timeout", "0"]).is_err());
        let Command::Recv { overwrite, .. } =
            Cli::try_parse_from(["peer", "recv", "d", "--overwrite"]).unwrap().command
        else {
            panic!("not recv")
        };
        assert!(overwrite);
    }
}
