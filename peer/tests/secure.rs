//! `peer` against the real `signaling` binary serving HTTPS/WSS with a test CA made here (rcgen) and, for some
//! tests, requiring join tokens minted by the real `signaling token`: data channels over wss:// and over SSE
//! and polling on https://, the verification error without the CA, and refused tokens ending the connect.
//!
//! Needs `target/debug/signaling` (`cargo build -p signaling`; `cargo test` does not build other packages'
//! binaries). Every wait is bounded; servers and CLI children are killed when their handle drops. Run on
//! loopback only:
//! `unshare --net -- sh -c 'ip link set lo up && cargo test -p peer --offline --test secure'`.

mod common;

use peer::signaling::Transport;
use peer::{ChannelOptions, Error, Event, Payload, Peer, PeerConfig};
use protocol::{ErrorCode, Secret};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Longest any single step may take (generous: the machine may be busy with other builds).
const WAIT: Duration = Duration::from_secs(30);
/// How long a refused or unverifiable connect may take. The slowest case is a WebSocket join without a token,
/// which the server answers after its `--auth-timeout-ms` (1 s here); the bound leaves room for a busy machine.
const REFUSAL_BOUND: Duration = Duration::from_secs(8);

/// A scratch directory for one test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("peer-secure-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA (its certificate in `ca.pem`) and a leaf for 127.0.0.1/localhost signed by it (`cert.pem` with
/// the chain, `key.pem`), plus `other-ca.pem`: a CA that signed nothing here.
fn make_pki(dir: &Scratch) {
    fn ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), rcgen::Issuer::new(params, key))
    }
    let (ca_pem, issuer) = ca("peer test CA");
    let (other_pem, _) = ca("peer test CA that signed nothing");
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let leaf = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.path("cert.pem"), format!("{}{ca_pem}", leaf.pem())).unwrap();
    std::fs::write(dir.path("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.path("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.path("other-ca.pem"), other_pem).unwrap();
}

/// A 40-byte HS256 secret in `secret` (the server wants at least 32).
fn make_secret(dir: &Scratch) -> PathBuf {
    let path = dir.path("secret");
    let bytes: Vec<u8> = (0..40).map(|_| b'a' + rand::random_range(0..26u8)).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `target/<profile>/signaling`, next to the directory of this test executable.
fn signaling_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("signaling");
    assert!(bin.is_file(), "{} is missing: run `cargo build -p signaling` first", bin.display());
    bin
}

/// Runs `signaling token --room ROOM --auth-secret-file SECRET ARGS…` and returns the token it prints.
fn mint(secret: &Path, room: &str, args: &[&str]) -> String {
    let out = Command::new(signaling_binary())
        .args(["token", "--room", room, "--auth-secret-file"])
        .arg(secret)
        .args(args)
        .env_remove("SIGNALING_AUTH_SECRET_FILE")
        .output()
        .unwrap();
    assert!(out.status.success(), "signaling token failed: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {} chars", token.len());
    token
}

/// The real server over TLS on 127.0.0.1:0. Killed on drop.
struct Server {
    child: Child,
    /// `https://127.0.0.1:PORT`.
    url: String,
}

impl Server {
    fn start(dir: &Scratch, args: &[&str]) -> Server {
        Server::start_at(dir, "127.0.0.1:0", args)
    }

    /// Like [`Server::start`], on `listen`: the address of a server that was killed, to bring one back where
    /// its clients reconnect.
    fn start_at(dir: &Scratch, listen: &str, args: &[&str]) -> Server {
        let mut cmd = Command::new(signaling_binary());
        for (k, _) in std::env::vars() {
            if k.starts_with("SIGNALING_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .args(["--listen", listen, "--stun-listen", "127.0.0.1:0", "--tls-cert"])
            .arg(dir.path("cert.pem"))
            .arg("--tls-key")
            .arg(dir.path("key.pem"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {} // keep draining, so the server never blocks on a full pipe
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                panic!("the server did not start: {other:?}");
            }
        };
        let url = line.trim().strip_prefix("signaling listening on ").expect("the listening line").to_owned();
        assert!(url.starts_with("https://"), "{url}");
        Server { child, url }
    }

    /// `127.0.0.1:PORT`.
    fn addr(&self) -> String {
        self.url.trim_start_matches("https://").to_owned()
    }

    /// `wss://127.0.0.1:PORT`.
    fn wss(&self) -> String {
        self.url.replacen("https://", "wss://", 1)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(url: &str, room: &str, transports: &[Transport], ca: Option<&Path>, token: Option<&str>) -> PeerConfig {
    let mut cfg = PeerConfig::new(url, room);
    cfg.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    cfg.channels = vec![ChannelOptions::reliable("chat")];
    cfg.signaling.transports = transports.to_vec();
    cfg.signaling.short_poll_interval = Duration::from_millis(100);
    cfg.signaling.tls.ca_file = ca.map(Path::to_path_buf);
    cfg.signaling.token = token.map(|t| Secret(t.to_owned()));
    cfg
}

async fn connect(cfg: PeerConfig) -> (Peer, mpsc::Receiver<Event>) {
    match tokio::time::timeout(WAIT, Peer::connect(cfg)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => panic!("connect failed: {}: {e}", e.code()),
        Err(_) => panic!("connect took more than {WAIT:?}"),
    }
}

async fn wait_for<T>(events: &mut mpsc::Receiver<Event>, what: &str, pick: impl FnMut(&Event) -> Option<T>) -> T {
    common::wait_for(events, what, WAIT, pick).await
}

/// Waits for `chat` to open on both sides, sends one text each way, and checks both arrive.
async fn exchange(a: &Peer, a_ev: &mut mpsc::Receiver<Event>, b: &Peer, b_ev: &mut mpsc::Receiver<Event>) {
    for (ev, other) in [(&mut *a_ev, b.id()), (&mut *b_ev, a.id())] {
        wait_for(ev, "chat open", |e| match e {
            Event::ChannelOpen { peer, label } if peer == &other && label == "chat" => Some(()),
            _ => None,
        })
        .await;
    }
    a.send(&b.id(), "chat", Payload::Text("from a".into())).await.unwrap();
    b.send(&a.id(), "chat", Payload::Text("from b".into())).await.unwrap();
    for (ev, want) in [(a_ev, "from b"), (b_ev, "from a")] {
        let got = wait_for(ev, want, |e| match e {
            Event::Message { payload: Payload::Text(t), .. } => Some(t.clone()),
            _ => None,
        })
        .await;
        assert_eq!(got, want);
    }
}

/// Connects with `cfg`, which must fail; returns the error and how long it took (checked against
/// [`REFUSAL_BOUND`]).
async fn connect_fails(cfg: PeerConfig) -> (Error, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(WAIT, Peer::connect(cfg)).await.expect("a refusal, not a hang");
    let took = started.elapsed();
    let e = match result {
        Ok(_) => panic!("connected, but should have failed"),
        Err(e) => e,
    };
    assert!(took < REFUSAL_BOUND, "{e} took {took:?}");
    (e, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_the_ca_file_opens_a_data_channel() {
    let dir = Scratch::new("wss");
    make_pki(&dir);
    let server = Server::start(&dir, &[]);
    let ca = dir.path("ca.pem");
    let (a, mut a_ev) = connect(config(&server.wss(), "wss-room", &[Transport::Ws], Some(&ca), None)).await;
    // The https:// form of the same server reaches the WebSocket as wss:// too.
    let (b, mut b_ev) = connect(config(&server.url, "wss-room", &[Transport::Ws], Some(&ca), None)).await;
    assert_eq!((a.transport(), b.transport()), (Transport::Ws, Transport::Ws));
    let started = Instant::now();
    exchange(&a, &mut a_ev, &b, &mut b_ev).await;
    eprintln!("wss: join → channel open → one message each way: {:?}", started.elapsed());
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_polling_over_https_open_data_channels() {
    let dir = Scratch::new("http");
    make_pki(&dir);
    // No WebSocket on the server (as behind a proxy that blocks it): the default order falls back to SSE.
    let server = Server::start(&dir, &["--transports", "sse,longpoll"]);
    let ca = dir.path("ca.pem");
    let default = [Transport::Ws, Transport::Sse, Transport::LongPoll];
    let (a, mut a_ev) = connect(config(&server.url, "http-room", &default, Some(&ca), None)).await;
    assert_eq!(a.transport(), Transport::Sse);
    let (b, mut b_ev) = connect(config(&server.url, "http-room", &[Transport::LongPoll], Some(&ca), None)).await;
    assert_eq!(b.transport(), Transport::LongPoll);
    let started = Instant::now();
    exchange(&a, &mut a_ev, &b, &mut b_ev).await;
    eprintln!("sse ↔ longpoll over https: channel open → one message each way: {:?}", started.elapsed());
    b.close().await;
    let (c, mut c_ev) = connect(config(&server.url, "http-room", &[Transport::ShortPoll], Some(&ca), None)).await;
    assert_eq!(c.transport(), Transport::ShortPoll);
    let started = Instant::now();
    exchange(&a, &mut a_ev, &c, &mut c_ev).await;
    eprintln!("sse ↔ shortpoll (100 ms) over https: {:?}", started.elapsed());
    a.close().await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_verify_fails_at_once_on_every_transport() {
    let dir = Scratch::new("verify");
    make_pki(&dir);
    let server = Server::start(&dir, &[]);
    let other = dir.path("other-ca.pem");
    let default = [Transport::Ws, Transport::Sse, Transport::LongPoll];
    for transports in [&default[..], &[Transport::Ws], &[Transport::Sse], &[Transport::LongPoll], &[Transport::ShortPoll]] {
        for ca in [None, Some(other.as_path())] {
            let (e, took) = connect_fails(config(&server.url, "verify-room", transports, ca, None)).await;
            assert_eq!(e.code(), "tls-verify-failed", "{transports:?} ca {ca:?}: {e}");
            assert!(e.to_string().contains("unknown issuer"), "{e}");
            let host_port = server.url.trim_start_matches("https://");
            assert!(e.to_string().contains(&format!("s://{host_port}")), "{e}");
            eprintln!("{transports:?}, CA {:?}: {e} after {took:?}", ca.map(|_| "other"));
        }
    }
    // A CA file that cannot be used is its own error, before any traffic.
    let garbage = dir.path("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    for ca in [dir.path("missing.pem"), dir.path("key.pem"), garbage] {
        let (e, _) = connect_fails(config(&server.url, "verify-room", &default, Some(&ca), None)).await;
        assert_eq!(e.code(), "bad-ca-file", "{ca:?}: {e}");
    }
    // http:// to the TLS port is no TLS error: the server answers plain HTTP with a redirect or refusal.
    let plain = server.url.replacen("https://", "http://", 1);
    let (e, _) = connect_fails(config(&plain, "verify-room", &[Transport::Ws], None, None)).await;
    assert_eq!(e.code(), "connect-failed", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_token_joins_over_every_transport() {
    let dir = Scratch::new("token");
    make_pki(&dir);
    let secret = make_secret(&dir);
    let secret_arg = secret.to_str().unwrap();
    let server = Server::start(&dir, &["--auth-secret-file", secret_arg, "--auth-timeout-ms", "1000"]);
    let ca = dir.path("ca.pem");
    let token = mint(&secret, "token-room", &["--ttl", "10m"]);
    for t in [Transport::Ws, Transport::Sse, Transport::LongPoll, Transport::ShortPoll] {
        let (p, _ev) = connect(config(&server.url, "token-room", &[t], Some(&ca), Some(&token))).await;
        assert_eq!(p.transport(), t);
        p.close().await;
    }
    let (a, mut a_ev) = connect(config(&server.wss(), "token-room", &[Transport::Ws], Some(&ca), Some(&token))).await;
    let (b, mut b_ev) =
        connect(config(&server.url, "token-room", &[Transport::LongPoll], Some(&ca), Some(&token))).await;
    exchange(&a, &mut a_ev, &b, &mut b_ev).await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_room_forged_and_expired_tokens_are_refused_in_bounded_time() {
    let dir = Scratch::new("refused");
    make_pki(&dir);
    let secret = make_secret(&dir);
    let secret_arg = secret.to_str().unwrap();
    let server = Server::start(
        &dir,
        &["--auth-secret-file", secret_arg, "--auth-timeout-ms", "1000", "--auth-leeway-secs", "0"],
    );
    let ca = dir.path("ca.pem");
    let wrong_room = mint(&secret, "another-room", &[]);
    let other_secret = Scratch::new("refused-other");
    let forged = mint(&make_secret(&other_secret), "refused-room", &[]);
    let expired = mint(&secret, "refused-room", &["--ttl", "1"]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let cases: [(&str, Option<&str>, ErrorCode); 4] = [
        ("missing", None, ErrorCode::Unauthorized),
        ("wrong room", Some(&wrong_room), ErrorCode::Unauthorized),
        ("forged", Some(&forged), ErrorCode::Unauthorized),
        ("expired", Some(&expired), ErrorCode::TokenExpired),
    ];
    let default = [Transport::Ws, Transport::Sse, Transport::LongPoll];
    for transports in [&default[..], &[Transport::Ws], &[Transport::Sse], &[Transport::LongPoll]] {
        for (what, token, want) in &cases {
            let (e, took) = connect_fails(config(&server.url, "refused-room", transports, Some(&ca), *token)).await;
            match &e {
                Error::Refused { code, .. } => assert_eq!(code, want, "{what} over {transports:?}: {e}"),
                other => panic!("{what} over {transports:?}: {other} (code {})", other.code()),
            }
            if let Some(t) = token {
                assert!(!e.to_string().contains(t), "the token leaked into the error");
            }
            eprintln!("{what} token over {transports:?}: {} after {took:?}", e.code());
        }
    }
    // Not even sent: a token no header could carry.
    let (e, _) = connect_fails(config(&server.url, "refused-room", &default, Some(&ca), Some("a b\nc"))).await;
    assert_eq!(e.code(), "invalid-token", "{e}");
    assert!(!e.to_string().contains("a b"), "{e}");
}

/// After `server` is killed, brings one back on its address with `dir`'s certificate and `args`, and returns
/// the signaling events `ev` reports until the session ends (bounded by [`WAIT`]).
async fn restart_and_collect_until_closed(
    server: Server,
    dir: &Scratch,
    args: &[&str],
    ev: &mut mpsc::Receiver<Event>,
) -> (Server, Vec<Event>, Option<u16>) {
    let addr = server.addr();
    drop(server);
    let back = Server::start_at(dir, &addr, args);
    let started = Instant::now();
    let mut seen = Vec::new();
    let code = wait_for(ev, "the signaling session to end", |e| {
        seen.push(e.clone());
        match e {
            Event::SignalingClosed { code } => Some(*code),
            _ => None,
        }
    })
    .await;
    eprintln!("server back → session ended ({code:?}) after {:?}; events {seen:?}", started.elapsed());
    (back, seen, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_back_with_an_unverifiable_certificate_ends_the_session_instead_of_looping() {
    let dir = Scratch::new("reconnect-tls");
    make_pki(&dir);
    let impostor = Scratch::new("reconnect-tls-impostor");
    make_pki(&impostor);
    let server = Server::start(&dir, &[]);
    let ca = dir.path("ca.pem");
    let (p, mut ev) = connect(config(&server.url, "reconnect-room", &[Transport::Ws], Some(&ca), None)).await;
    let (_back, seen, code) = restart_and_collect_until_closed(server, &impostor, &[], &mut ev).await;
    assert_eq!(code, None);
    assert!(!seen.iter().any(|e| matches!(e, Event::SignalingReconnected { .. })), "{seen:?}");
    p.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expired_by_reconnect_time_ends_the_session_with_4503() {
    let dir = Scratch::new("reconnect-token");
    make_pki(&dir);
    let secret = make_secret(&dir);
    let secret_arg = secret.to_str().unwrap().to_owned();
    let args = ["--auth-secret-file", &secret_arg, "--auth-leeway-secs", "0"];
    let server = Server::start(&dir, &args);
    let ca = dir.path("ca.pem");
    let token = mint(&secret, "reconnect-room", &["--ttl", "2"]);
    let (p, mut ev) =
        connect(config(&server.url, "reconnect-room", &[Transport::Ws], Some(&ca), Some(&token))).await;
    // Expired now; the restarted server has no session to resume, so the resume becomes a join that needs it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_back, seen, code) = restart_and_collect_until_closed(server, &dir, &args, &mut ev).await;
    assert_eq!(code, Some(4503));
    assert!(
        seen.iter().any(|e| matches!(e, Event::Error(Error::Refused { code: ErrorCode::TokenExpired, .. }))),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|e| matches!(e, Event::SignalingReconnected { .. })), "{seen:?}");
    p.close().await;
}

/// A `peer` CLI child; killed on drop.
struct Cli(Child);

impl Cli {
    /// Its stderr lines, read (and echoed to the test's stderr) by a thread until it exits.
    fn stderr_lines(&mut self) -> mpsc::UnboundedReceiver<String> {
        let stderr = self.0.stderr.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                eprintln!("[peer cli] {line}");
                let _ = tx.send(line);
            }
        });
        rx
    }
}

/// Waits (at most [`WAIT`]) for a line containing `needle`.
async fn wait_line(lines: &mut mpsc::UnboundedReceiver<String>, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some(line)) if line.contains(needle) => return line,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the CLI exited before printing {needle:?}"),
            Err(_) => panic!("no {needle:?} from the CLI within {WAIT:?}"),
        }
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(server: &str, room: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PEER_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["--server", server, "--room", room, "--bind", "127.0.0.1"]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Runs a CLI that must fail; returns its exit code and stderr, checking it ended within [`REFUSAL_BOUND`].
async fn cli_fails(mut cmd: Command) -> (i32, String) {
    let started = Instant::now();
    let child = cmd.spawn().unwrap();
    let out = tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || child.wait_with_output()))
        .await
        .expect("the CLI exits instead of reconnecting forever")
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(took < REFUSAL_BOUND, "took {took:?}: {stderr}");
    eprintln!("CLI exited {:?} after {took:?}: {}", out.status.code(), stderr.lines().last().unwrap_or(""));
    (out.status.code().unwrap_or(-1), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_takes_ca_file_and_token_and_fails_clearly_without_them() {
    let dir = Scratch::new("cli");
    make_pki(&dir);
    let secret = make_secret(&dir);
    let secret_arg = secret.to_str().unwrap();
    let server = Server::start(&dir, &["--auth-secret-file", secret_arg, "--auth-timeout-ms", "1000"]);
    let ca = dir.path("ca.pem");
    let ca_arg = ca.to_str().unwrap();
    let token = mint(&secret, "cli-room", &[]);
    let token_file = dir.path("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();

    // `echo` over wss:// with --ca-file and the token from PEER_TOKEN; a library peer talks to it.
    let mut echo = Cli(
        cli(&server.wss(), "cli-room", &["--ca-file", ca_arg, "--transport", "ws", "echo"], &[("PEER_TOKEN", &token)])
            .spawn()
            .unwrap(),
    );
    // The library peer must join second (the later joiner opens the channel): wait for the CLI's join line.
    let mut echo_err = echo.stderr_lines();
    let line = wait_line(&mut echo_err, "joined room").await;
    assert!(line.contains("(over ws)"), "{line:?}");
    let (lib, mut lib_ev) = connect(config(&server.url, "cli-room", &[Transport::Sse], Some(&ca), Some(&token))).await;
    let other = wait_for(&mut lib_ev, "chat open", |e| match e {
        Event::ChannelOpen { peer, label } if label == "chat" => Some(peer.clone()),
        _ => None,
    })
    .await;
    lib.send(&other, "chat", Payload::Text("echo me".into())).await.unwrap();
    let back = wait_for(&mut lib_ev, "the echo", |e| match e {
        Event::Message { payload: Payload::Text(t), .. } => Some(t.clone()),
        _ => None,
    })
    .await;
    assert_eq!(back, "echo me");
    lib.close().await;
    drop(echo);

    // --token-file works the same way (the child exits after joining: no peer ever comes, so kill it).
    let mut from_file = Cli(
        cli(&server.url, "cli-room", &["--ca-file", ca_arg, "--token-file", token_file.to_str().unwrap(), "echo"], &[])
            .spawn()
            .unwrap(),
    );
    let mut err = from_file.stderr_lines();
    wait_line(&mut err, "joined room").await;
    drop(from_file);

    // Without the CA: exit 1, tls-verify-failed.
    let (code, stderr) = cli_fails(cli(&server.url, "cli-room", &["echo"], &[("PEER_TOKEN", &token)])).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("peer: tls-verify-failed: "), "{stderr}");
    // A CA file that does not exist: exit 2 (configuration), bad-ca-file.
    let (code, stderr) = cli_fails(cli(&server.url, "cli-room", &["--ca-file", "/nonexistent/ca.pem", "echo"], &[])).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("peer: bad-ca-file: "), "{stderr}");
    // No token, and a token for another room (with debug logs on): exit 1, unauthorized, token never printed.
    let (code, stderr) = cli_fails(cli(&server.url, "cli-room", &["--ca-file", ca_arg, "echo"], &[])).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("peer: unauthorized: "), "{stderr}");
    let wrong = mint(&secret, "not-cli-room", &[]);
    let (code, stderr) = cli_fails(cli(
        &server.url,
        "cli-room",
        &["--ca-file", ca_arg, "--log", "debug", "--token", &wrong, "echo"],
        &[],
    ))
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("peer: unauthorized: "), "{stderr}");
    assert!(!stderr.contains(&wrong), "the token reached the CLI's output");
    // The token's signature part, in case something printed a part of it.
    let signature = wrong.rsplit('.').next().unwrap();
    assert!(!stderr.contains(signature), "a part of the token reached the CLI's output");
}
