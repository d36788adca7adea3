//! `turn-config`: prints a coturn configuration with safe defaults, and mints or checks TURN REST
//! credentials for debugging. See `docs/deployment.md`.

use clap::{Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use turn_config::coturn::CoturnConfig;
use turn_config::credential::{self, Secret, Secrets};
use turn_config::{Error, TurnServers};

#[derive(Parser, Debug)]
#[command(name = "turn-config", version, about = "coturn configuration and TURN REST credentials")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Prints a new random secret (64 hex characters) for a secret file.
    Secret,
    /// Prints a turnserver.conf with safe defaults for these secrets.
    Conf {
        /// The TURN realm, usually your domain.
        #[arg(long)]
        realm: String,
        /// File with one secret a line, newest first (the same file the signaling server reads).
        #[arg(long)]
        secret_file: PathBuf,
        /// UDP/TCP listening port.
        #[arg(long, default_value_t = 3478)]
        listening_port: u16,
        /// Address to listen on (repeatable; default: every address).
        #[arg(long)]
        listening_ip: Vec<IpAddr>,
        /// The public address, when coturn is behind NAT.
        #[arg(long)]
        external_ip: Option<IpAddr>,
        /// Lower bound of the UDP relay port range.
        #[arg(long, default_value_t = 49152)]
        min_port: u16,
        /// Upper bound of the UDP relay port range.
        #[arg(long, default_value_t = 65535)]
        max_port: u16,
    },
    /// Mints a credential and prints the ICE server entry as JSON (for debugging).
    Mint {
        /// File with one secret a line, newest first; the first one mints.
        #[arg(long)]
        secret_file: PathBuf,
        /// The peer id that goes after the expiry in the username.
        #[arg(long, default_value = "debug")]
        peer_id: String,
        /// Credential lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_s: u64,
        /// TURN URL (repeatable).
        #[arg(long = "url", default_value = "turn:127.0.0.1:3478?transport=udp")]
        urls: Vec<String>,
    },
    /// Checks a username and password the way coturn does (expiry, then HMAC with every secret).
    Verify {
        /// File with one secret a line.
        #[arg(long)]
        secret_file: PathBuf,
        /// `<expiry>:<peer id>`.
        #[arg(long)]
        username: String,
        /// The base64 password.
        #[arg(long)]
        password: String,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("turn-config: {} ({})", e, e.code());
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<String, Error> {
    Ok(match command {
        Command::Secret => format!("{}\n", Secret::generate()?.expose()),
        Command::Conf { realm, secret_file, listening_port, listening_ip, external_ip, min_port, max_port } => {
            let mut c = CoturnConfig::new(realm, Secrets::read(&secret_file)?);
            c.listening_port = listening_port;
            c.listening_ips = listening_ip;
            c.external_ip = external_ip;
            c.min_port = min_port;
            c.max_port = max_port;
            c.render()?
        }
        Command::Mint { secret_file, peer_id, ttl_s, urls } => {
            let turn = TurnServers::new(&urls, Secrets::read(&secret_file)?, Duration::from_secs(ttl_s))?;
            let server = turn.ice_server(&peer_id, SystemTime::now())?;
            let expires_at = credential::expiry_of(server.username.as_deref().unwrap_or_default())?;
            let out = serde_json::json!({
                "urls": server.urls,
                "username": server.username,
                "credential": server.credential,
                "expires_at": expires_at,
            });
            format!("{out:#}\n")
        }
        Command::Verify { secret_file, username, password } => {
            credential::verify(&Secrets::read(&secret_file)?, &username, &password, SystemTime::now())?;
            let left = credential::expiry_of(&username)?
                .saturating_sub(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs());
            format!("ok: valid for {left} more seconds\n")
        }
    })
}
