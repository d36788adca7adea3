//! The web demo over HTTPS/WSS and with join tokens, in real headless Chromium against the real `signaling`
//! binary: a certificate made here (a test CA and a leaf for 127.0.0.1, with rcgen) is served with
//! `--tls-cert`/`--tls-key` and trusted by Chromium through `--ignore-certificate-errors-spki-list` (the
//! leaf's SPKI hash); tokens are minted by the binary's own `signaling token` subcommand.
//!
//! Run inside a loopback-only network namespace (see `e2e::require_loopback_only_network`):
//!     cargo build -p signaling
//!     unshare --net -- sh -c 'ip link set lo up && cargo test -p e2e --offline --test browser_secure'

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use e2e::{
    Browser, DEMO_STATE as STATE, SignalingServer, demo_chat, demo_connect_pair, demo_join,
    keep_failure_artifacts, require_loopback_only_network, signaling_binary_path,
};
use sha2::{Digest, Sha256};

/// A refused page must have settled (closed, with the refusal shown) within this: the WebSocket without a
/// token is refused after `AUTH_TIMEOUT_MS`, everything else at once.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused page is then watched for a retry: the shortest reconnect delay is 0.5–1 s (backoff.js).
const NO_RETRY_WATCH: Duration = Duration::from_secs(2);
/// Well below the page's own 5 s connect timeout, so a tokenless WebSocket is refused by the server (4503)
/// before the page would give up on it and try SSE.
const AUTH_TIMEOUT_MS: &str = "1000";
const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// One test at a time: each drives two Chromium processes.
static BROWSERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A certificate chain for 127.0.0.1 on disk and what Chromium needs to trust it.
struct TestCert {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// base64(SHA-256(SubjectPublicKeyInfo)) of the leaf.
    spki_sha256: String,
}

impl TestCert {
    /// A fresh test CA and a leaf for 127.0.0.1 and localhost signed by it, as cert.pem (leaf, then CA) and
    /// key.pem in a new temporary directory.
    fn generate(label: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("e2e-tls-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "e2e test CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        let leaf = params.signed_by(&key, &issuer)?;
        let cert = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert, format!("{}{}", leaf.pem(), ca_cert.pem()))?;
        std::fs::write(&key_path, key.serialize_pem())?;
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let spki_sha256 = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki));
        Ok(Self {
            dir,
            cert,
            key: key_path,
            spki_sha256,
        })
    }

    fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".to_owned(),
            self.cert.display().to_string(),
            "--tls-key".to_owned(),
            self.key.display().to_string(),
        ]
    }

    /// The Chromium flag that accepts this leaf (and only it) without a trusted root.
    fn chromium_args(&self) -> Vec<String> {
        vec![format!(
            "--ignore-certificate-errors-spki-list={}",
            self.spki_sha256
        )]
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_server(args: &[String]) -> Result<SignalingServer> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = SignalingServer::start(&args)?;
    ensure!(
        server.url().starts_with("https://127.0.0.1:"),
        "the server listens on {}, expected https",
        server.url()
    );
    Ok(server)
}

/// The page is on https and signals over a WebSocket (which an https page can only open as wss://), and
/// every request it made went over https.
async fn check_secure_page(browser: &Browser) -> Result<()> {
    let seen = browser
        .eval(
            "({protocol: location.protocol, transport: window.demo.state().transport, \
              insecure: performance.getEntriesByType('resource').map((e) => e.name) \
                .filter((u) => !u.startsWith('https://'))})",
        )
        .await?;
    ensure!(
        seen["protocol"] == "https:"
            && seen["transport"] == "ws"
            && seen["insecure"] == serde_json::json!([]),
        "{}: expected an https page signalling over wss with no plain requests, saw {seen}",
        browser.name()
    );
    Ok(())
}

/// The selected candidate pair with `peer` is host ↔ host on 127.0.0.1: the chat channel is direct.
async fn check_direct(browser: &Browser, peer: &str) -> Result<()> {
    let stats = browser
        .wait_for(
            &format!("a selected candidate pair with {peer}"),
            STATS_TIMEOUT,
            STATE,
            |state| {
                let stats = state.pointer(&format!("/peers/{peer}"))?;
                (!stats["pairType"].is_null() && !stats["remoteAddress"].is_null())
                    .then(|| stats.clone())
            },
        )
        .await?;
    let on_loopback = |field: &str| {
        stats[field]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    };
    ensure!(
        stats["pairType"] == "host" && on_loopback("localAddress") && on_loopback("remoteAddress"),
        "{}: expected a direct host pair on 127.0.0.1, got {stats}",
        browser.name()
    );
    Ok(())
}

#[tokio::test]
async fn two_browsers_chat_over_https_and_wss() -> Result<()> {
    require_loopback_only_network()?;
    let _one_at_a_time = BROWSERS.lock().await;
    let cert = TestCert::generate("chat")?;
    let server = start_server(&cert.server_args())?;
    let a = Browser::launch_with_args("tls-a", &cert.chromium_args()).await?;
    let b = Browser::launch_with_args("tls-b", &cert.chromium_args()).await?;
    let url = format!("{}/#room=e2e-tls-{}", server.url(), std::process::id());

    let outcome = async {
        let started = Instant::now();
        let (a_id, b_id) = demo_connect_pair(&a, &b, &url).await?;
        let ready_ms = started.elapsed().as_millis();
        for browser in [&a, &b] {
            check_secure_page(browser).await?;
        }
        check_direct(&a, &b_id).await?;
        check_direct(&b, &a_id).await?;
        demo_chat(&a, &a_id, &b, "over https: a → b, héllo ✓").await?;
        demo_chat(&b, &b_id, &a, "over https: b → a").await?;
        println!(
            "https/wss: both pages loaded, joined and their direct channel ready in {ready_ms} ms"
        );
        Ok(())
    }
    .await;
    keep_failure_artifacts(outcome, &[&a, &b], "tls-chat").await?;
    let shot = a.screenshot("tls-chat-a.png").await?;
    println!("screenshot: {}", shot.display());
    a.close().await?;
    b.close().await?;
    Ok(())
}

/// Runs the real `signaling token` and returns the token it prints.
fn mint(secret: &Path, room: &str, ttl: &str) -> Result<String> {
    let binary = signaling_binary_path()?;
    let out = Command::new(&binary)
        .args(["token", "--room", room, "--ttl", ttl, "--auth-secret-file"])
        .arg(secret)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} token", binary.display()))?;
    if !out.status.success() {
        bail!(
            "signaling token exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    // A JWT (three base64url parts): safe in a query string as it is.
    ensure!(
        token.split('.').count() == 3
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
        "signaling token printed something that is not a JWT ({} bytes)",
        token.len()
    );
    Ok(token)
}

/// 32 random bytes (hex) in a file: an HS256 secret for `--auth-secret-file`.
fn write_secret(dir: &Path) -> Result<PathBuf> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    let path = dir.join("auth-secret");
    std::fs::write(
        &path,
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    )?;
    Ok(path)
}

/// Checks that nothing the page shows or exposes contains `token`.
async fn check_token_hidden(browser: &Browser, token: &str) -> Result<()> {
    let visible = browser
        .eval(
            "document.title + '\\n' + document.body.innerText + '\\n' + document.body.outerHTML + '\\n' + \
             JSON.stringify(window.demo.state())",
        )
        .await?;
    let visible = visible.as_str().context("the page text is a string")?;
    ensure!(
        !visible.contains(token),
        "{}: the join token appears on the page or in its state",
        browser.name()
    );
    Ok(())
}

/// A page refused for its token: what it showed, and how often it asked the server.
struct Refusal {
    settle_ms: u128,
    connections: u64,
    http_joins: usize,
}

/// Loads `url` (whose join must be refused with `code`), waits until the page has stopped with the refusal
/// shown, then watches it for `NO_RETRY_WATCH`: it must make exactly one connection in all and no more.
async fn expect_refused(
    browser: &Browser,
    url: &str,
    code: &str,
    token: Option<&str>,
) -> Result<Refusal> {
    let started = Instant::now();
    browser.goto(url).await?;
    browser
        .wait_for(
            &format!("the join to be refused with {code}"),
            REFUSAL_TIMEOUT,
            STATE,
            |state| {
                (state.get("joinRefused")? == code && state.get("signaling")? == "closed")
                    .then_some(())
            },
        )
        .await?;
    let settle_ms = started.elapsed().as_millis();
    let notice = browser
        .eval("document.getElementById('notice').textContent")
        .await?;
    let notice = notice.as_str().unwrap_or_default();
    ensure!(
        notice.contains("invitation") && notice.ends_with("Not retrying."),
        "{}: the refusal notice does not say what happened: {notice:?}",
        browser.name()
    );
    tokio::time::sleep(NO_RETRY_WATCH).await;
    // The page's own count, and the browser's record of HTTP requests to the join endpoints (SSE and polls
    // appear there; a WebSocket does not).
    let seen = browser
        .eval(&format!(
            "({{state: {STATE}, httpJoins: performance.getEntriesByType('resource') \
               .filter((e) => e.name.includes('/v1/rooms/')).length}})"
        ))
        .await?;
    let state = &seen["state"];
    let connections = state["connections"].as_u64().context("state.connections")?;
    let http_joins = seen["httpJoins"].as_u64().context("httpJoins")? as usize;
    ensure!(
        connections == 1 && state["signaling"] == "closed" && state["joinRefused"] == code,
        "{}: a refused join must stop after one connection; {}s later: {state}",
        browser.name(),
        NO_RETRY_WATCH.as_secs()
    );
    if let Some(token) = token {
        check_token_hidden(browser, token).await?;
    }
    Ok(Refusal {
        settle_ms,
        connections,
        http_joins,
    })
}

#[tokio::test]
async fn join_tokens_admit_invited_pages_and_refuse_the_rest_once() -> Result<()> {
    require_loopback_only_network()?;
    let _one_at_a_time = BROWSERS.lock().await;
    let cert = TestCert::generate("auth")?;
    let secret = write_secret(&cert.dir)?;
    let room = format!("e2e-auth-{}", std::process::id());
    let token = mint(&secret, &room, "1h")?;
    let other_room = mint(&secret, "some-other-room", "1h")?;
    let expiring = mint(&secret, &room, "1")?;
    let minted = Instant::now();

    let mut args = cert.server_args();
    args.extend(
        [
            "--auth-secret-file",
            &secret.display().to_string(),
            "--auth-timeout-ms",
            AUTH_TIMEOUT_MS,
            "--auth-leeway-secs",
            "0",
        ]
        .map(str::to_owned),
    );
    let server = start_server(&args)?;
    let base = server.url();
    let a = Browser::launch_with_args("auth-a", &cert.chromium_args()).await?;
    let b = Browser::launch_with_args("auth-b", &cert.chromium_args()).await?;

    let outcome = async {
        let url = format!("{base}/?token={token}#room={room}");
        let (a_id, b_id) = demo_connect_pair(&a, &b, &url).await?;
        for browser in [&a, &b] {
            check_secure_page(browser).await?;
            check_token_hidden(browser, &token).await?;
            ensure!(browser.eval("window.demo.state().joinToken").await? == true, "{} has no token", browser.name());
        }
        demo_chat(&a, &a_id, &b, "invited: a → b").await?;
        demo_chat(&b, &b_id, &a, "invited: b → a").await?;

        // The token also gets through on the HTTP transports (EventSource and poll URLs).
        for transport in ["sse", "longpoll"] {
            demo_join(&b, &format!("{base}/?token={token}&transport={transport}#room={room}")).await?;
            let seen = b.eval(&format!("({STATE}).transport")).await?;
            ensure!(seen == transport, "b joined over {seen}, expected {transport}");
            check_token_hidden(&b, &token).await?;
        }

        // The 1 s token expires (no leeway) once its second has passed.
        tokio::time::sleep(Duration::from_millis(2100).saturating_sub(minted.elapsed())).await;
        let cases: [(&str, String, &str, Option<&str>, usize); 5] = [
            ("no token (WebSocket)", format!("{base}/#room={room}"), "unauthorized", None, 0),
            ("no token (long polling: 401)", format!("{base}/?transport=longpoll#room={room}"), "unauthorized", None, 1),
            ("a token for another room", format!("{base}/?token={other_room}#room={room}"), "unauthorized", Some(other_room.as_str()), 0),
            ("a token for another room (SSE)", format!("{base}/?token={other_room}&transport=sse#room={room}"), "unauthorized", Some(other_room.as_str()), 1),
            ("an expired token", format!("{base}/?token={expiring}#room={room}"), "token-expired", Some(expiring.as_str()), 0),
        ];
        for (what, url, code, secret, http_joins) in cases {
            let refusal = expect_refused(&b, &url, code, secret).await.with_context(|| what.to_owned())?;
            ensure!(
                refusal.http_joins == http_joins,
                "{what}: the browser made {} HTTP join requests, expected {http_joins}",
                refusal.http_joins
            );
            println!(
                "{what}: refused ({code}) and stopped {} ms after the page load; {} connection(s), {} HTTP \
                 join request(s), none more in {} s",
                refusal.settle_ms,
                refusal.connections,
                refusal.http_joins,
                NO_RETRY_WATCH.as_secs()
            );
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    keep_failure_artifacts(outcome, &[&a, &b], "auth").await?;
    let shot = b.screenshot("auth-refused-b.png").await?;
    println!("screenshot of a refused page: {}", shot.display());
    a.close().await?;
    b.close().await?;
    Ok(())
}
