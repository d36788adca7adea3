use clap::Parser;
use signaling::{Config, LogFormat, Server};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cfg = Config::parse();
    if let Err(e) = init_logs(&cfg) {
        eprintln!("signaling: {e}");
        return std::process::ExitCode::from(2);
    }
    if let Some(signaling::auth::Command::Token(args)) = &cfg.command {
        return match args.mint() {
            Ok(token) => {
                println!("{token}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("signaling token: {e}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let server = match Server::bind(cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("signaling: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let addr = server.local_addr();
    let stun = server.stun_addr();
    let scheme = server.scheme();
    // The first line's format is read by tests/src/lib.rs, bench and scripts: only the scheme may change.
    println!("signaling listening on {scheme}://{addr}");
    let tls = server.tls();
    if let Some(info) = tls.as_ref().and_then(|t| t.self_signed_info()) {
        println!("self-signed certificate SHA-256 fingerprint {}", info.sha256_fingerprint);
        println!("self-signed certificate SPKI SHA-256 (base64) {}", info.spki_sha256_base64);
    }
    if let Some(stun) = stun {
        println!("STUN responder on udp {stun}");
    }
    if addr.ip().is_unspecified() {
        println!("open {scheme}://127.0.0.1:{}/#room=demo in two browser windows", addr.port());
    } else {
        println!("open {scheme}://{addr}/#room=demo in two browser windows");
    }
    #[cfg(unix)]
    if let Some(tls) = tls {
        tokio::spawn(reload_on_sighup(tls));
    }
    server.run(shutdown_signal()).await;
    std::process::ExitCode::SUCCESS
}

/// Logs go to stderr; stdout carries only the "listening" line that scripts and tests read.
fn init_logs(cfg: &Config) -> Result<(), String> {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => EnvFilter::try_new(&cfg.log_level).map_err(|e| format!("--log-level {:?}: {e}", cfg.log_level))?,
    }
    // tungstenite's TRACE prints every frame, `auth` messages (join tokens) included: capped even under
    // RUST_LOG=trace, because secrets never reach a log.
    .add_directive("tungstenite::protocol=debug".parse().map_err(|e| format!("{e}"))?);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
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

/// Re-reads `--tls-cert`/`--tls-key` on each SIGHUP; new handshakes use the new certificate, open
/// connections keep theirs, and a file that does not load leaves the old certificate in use.
#[cfg(unix)]
async fn reload_on_sighup(tls: std::sync::Arc<signaling::edge::tls::TlsState>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP: certificate reload is off");
        return;
    };
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!("TLS certificate reloaded"),
            Err(e) => tracing::error!(error = %e, "TLS certificate reload failed; keeping the previous certificate"),
        }
    }
}
