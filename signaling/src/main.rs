use clap::Parser;
use signaling::{Config, Server};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Logs go to stderr; stdout carries only the "listening" line that scripts and tests read.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,warp=warn"))
                // tungstenite's TRACE prints every frame, `auth` messages (join tokens) included: capped even
                // under RUST_LOG=trace, because secrets never reach a log.
                .add_directive("tungstenite::protocol=debug".parse().expect("static directive")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cfg = Config::parse();
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
    println!("signaling listening on http://{addr}");
    if let Some(stun) = stun {
        println!("STUN responder on udp {stun}");
    }
    if addr.ip().is_unspecified() {
        println!("open http://127.0.0.1:{}/#room=demo in two browser windows", addr.port());
    } else {
        println!("open http://{addr}/#room=demo in two browser windows");
    }
    server.run(shutdown_signal()).await;
    std::process::ExitCode::SUCCESS
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
