//! Harness for end-to-end tests across real processes: the `signaling` binary and headless Chromium driven
//! through its own chromedriver.
//!
//! Every wait is bounded: a timeout names what was awaited and the last state observed, so a failing run
//! says why without a rerun.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};

pub mod cluster;
pub mod coturn;
pub use coturn::Coturn;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Environment variable that allows running browser tests outside a loopback-only network namespace.
pub const ALLOW_HOST_NETWORK_VAR: &str = "E2E_ALLOW_HOST_NETWORK";

/// Environment variable naming another server binary to test instead of `target/debug/signaling`.
pub const SIGNALING_BIN_VAR: &str = "E2E_SIGNALING_BIN";

/// The Chromium binary the tests drive.
pub const CHROMIUM_BINARY: &str = "/usr/bin/chromium";

/// Every Chromium flag the tests use, in one place. Each profile also gets a fresh `--user-data-dir`.
pub const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    // Chromium's sandbox needs user namespaces, which a root test inside `unshare --net` does not get.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    // Keep the browser from talking to anything but the page under test.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    // WebRTC ignores 127.0.0.0/8 unless told otherwise, and loopback is the only network the tests have.
    "--allow-loopback-in-peer-connection",
    // Auto-grants media permission; with it granted Chromium also stops hiding host candidates behind
    // mDNS names (which nothing in the namespace could resolve).
    "--use-fake-ui-for-media-stream",
    // No name resolves except loopback: nothing can leak out through DNS either.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
];

const WINDOW_WIDTH: u32 = 1024;
const WINDOW_HEIGHT: u32 = 900;
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);
const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(20);
const SESSION_START_TIMEOUT: Duration = Duration::from_secs(60);
const WEBDRIVER_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a [`wait_until`] check saw.
pub enum Check<T> {
    /// The awaited condition holds.
    Done(T),
    /// Not yet; the description of what was observed ends up in the timeout error.
    Pending(String),
}

/// Polls `check` until it is [`Check::Done`], failing after `timeout` with `what` and the last observation.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Check<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("(nothing observed yet)");
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // A check that hangs must not outlive the deadline (plus slack for one in-flight round trip).
        match tokio::time::timeout(remaining + Duration::from_secs(5), check()).await {
            Ok(Ok(Check::Done(value))) => return Ok(value),
            Ok(Ok(Check::Pending(seen))) => last = seen,
            Ok(Err(err)) => return Err(err.context(format!("while waiting for {what}"))),
            Err(_) => bail!(
                "timed out after {timeout:?} waiting for {what}: the check itself hung; last observed: {last}"
            ),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last observed: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The directory for screenshots and process logs: `$CARGO_TARGET_DIR/e2e-artifacts`, or the workspace's
/// `target/e2e-artifacts`. Created on first use.
pub fn artifacts_dir() -> Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("tests/ has a parent directory")?;
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir), // join keeps an absolute path as it is
        None => workspace.join("target"),
    };
    let dir = target.join("e2e-artifacts");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Fails unless the process runs in a network namespace whose only interface with an address is loopback,
/// so browser traffic cannot leave 127.0.0.0/8. Setting `E2E_ALLOW_HOST_NETWORK=1` skips the check.
pub fn require_loopback_only_network() -> Result<()> {
    if std::env::var(ALLOW_HOST_NETWORK_VAR).as_deref() == Ok("1") {
        return Ok(());
    }
    let how = format!(
        "browser tests must run in a network namespace with only loopback, so that no traffic leaves \
         127.0.0.0/8. Run them as root with:\n    \
         cargo build -p signaling && \\\n    \
         unshare --net -- sh -c 'ip link set lo up && cargo test -p e2e --offline'\n\
         or set {ALLOW_HOST_NETWORK_VAR}=1 to run them on the host network anyway"
    );
    // Interface name → its addresses, for every interface but loopback.
    let mut outside: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // `ip -o addr` covers IPv4 and IPv6: "<index>: <name> <family> <address> ...".
    let output = Command::new("ip")
        .args(["-o", "addr"])
        .output()
        .with_context(|| format!("running `ip -o addr` to check the network namespace; {how}"))?;
    if !output.status.success() {
        bail!("`ip -o addr` failed ({}); {how}", output.status);
    }
    let mut loopback_up = false;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let mut fields = line.split_whitespace();
        let (Some(name), Some(family), Some(address)) =
            (fields.nth(1), fields.next(), fields.next())
        else {
            continue;
        };
        if name == "lo" {
            loopback_up |= family == "inet" && address.starts_with("127.0.0.1/");
        } else {
            outside
                .entry(name.to_owned())
                .or_default()
                .push(address.to_owned());
        }
    }
    // /proc/net/if_inet6 (one IPv6 address per line, the interface name last) as a second opinion.
    if let Ok(table) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in table.lines() {
            if let Some(name) = line.split_whitespace().last().filter(|name| *name != "lo") {
                outside.entry(name.to_owned()).or_default();
            }
        }
    }
    if !outside.is_empty() {
        let found: Vec<String> = outside
            .iter()
            .map(|(name, addresses)| format!("{name} ({})", addresses.join(", ")))
            .collect();
        bail!(
            "found non-loopback interfaces with addresses: {}; {how}",
            found.join("; ")
        );
    }
    // `ip -o addr` lists 127.0.0.1 on a down `lo` too, so also prove that loopback can be bound.
    if !loopback_up || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).is_err() {
        bail!("loopback is not usable (run `ip link set lo up` inside the namespace); {how}");
    }
    Ok(())
}

static SERVERS_STARTED: AtomicU32 = AtomicU32::new(0);

/// The real `signaling` binary, listening on an ephemeral loopback port. Killed on drop.
pub struct SignalingServer {
    child: Child,
    url: String,
    log_path: PathBuf,
}

impl SignalingServer {
    /// Starts `target/debug/signaling --listen 127.0.0.1:0 ARGS…` (or `$E2E_SIGNALING_BIN`) and waits for
    /// its `signaling listening on http://…` line. Its stderr goes to `e2e-artifacts/signaling-<n>.log`
    /// (n counts the servers this test process started, so reruns overwrite rather than pile up).
    pub fn start(args: &[&str]) -> Result<Self> {
        Self::start_at("127.0.0.1:0", args)
    }

    /// Like [`start`](Self::start), listening on `listen`: e.g. `127.0.0.1:PORT` of a server that was killed,
    /// to bring it back where its clients reconnect.
    pub fn start_at(listen: &str, args: &[&str]) -> Result<Self> {
        let binary = signaling_binary()?;
        let log_path = artifacts_dir()?.join(format!(
            "signaling-{}.log",
            SERVERS_STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut child = Command::new(&binary)
            // A free STUN port too: servers of tests running side by side must not fight over 3478.
            .args(["--listen", listen, "--stun-listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("the child's stdout is piped")?;

        // A reader thread, so that the wait for the first line has a deadline; it then keeps draining stdout
        // so the server never blocks on a full pipe.
        let (first_line_tx, first_line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = first_line_tx.send(lines.next());
            for _ in lines {}
        });
        let line = match first_line_rx.recv_timeout(SERVER_START_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            Ok(Some(Err(err))) => {
                let _ = child.kill();
                bail!("reading the server's stdout: {err}");
            }
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child
                    .wait()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                bail!(
                    "{} exited ({status}) before printing its listening line; its log: {}",
                    binary.display(),
                    log_path.display()
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} printed nothing within {SERVER_START_TIMEOUT:?}; its log: {}",
                    binary.display(),
                    log_path.display()
                );
            }
        };
        let Some(url) = line.trim().strip_prefix("signaling listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "unexpected first line from the server: {line:?} (expected `signaling listening on http://…`)"
            );
        };
        Ok(Self {
            child,
            url: url.to_owned(),
            log_path,
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The file its stderr (its log) goes to.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl Drop for SignalingServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signaling_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(SIGNALING_BIN_VAR) {
        return Ok(PathBuf::from(path));
    }
    // The test executable is target/<profile>/deps/<name>-<hash>; the binary is target/<profile>/signaling.
    let exe = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("unexpected test executable location {}", exe.display()))?;
    let binary = profile_dir.join("signaling");
    if !binary.is_file() {
        bail!(
            "the signaling server binary {} does not exist: run `cargo build -p signaling` first \
             (cargo test does not build other packages' binaries)",
            binary.display()
        );
    }
    Ok(binary)
}

/// A headless Chromium with its own chromedriver and a throwaway profile. Both are killed on drop;
/// [`Browser::close`] shuts them down gracefully first.
pub struct Browser {
    name: String,
    client: Option<fantoccini::Client>,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    /// Starts `chromedriver` on a free loopback port and a Chromium session through it.
    /// `name` labels logs, screenshots and errors.
    pub async fn launch(name: &str) -> Result<Self> {
        Self::launch_with_args(name, &[]).await
    }

    /// Like [`launch`](Self::launch), with `extra_args` after [`CHROMIUM_ARGS`] (e.g. a certificate to trust).
    pub async fn launch_with_args(name: &str, extra_args: &[String]) -> Result<Self> {
        let artifacts = artifacts_dir()?;
        let profile =
            std::env::temp_dir().join(format!("e2e-chromium-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&profile)
            .with_context(|| format!("creating {}", profile.display()))?;
        let port = free_port()?;
        let log_path = artifacts.join(format!("chromedriver-{name}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: Chromium and its helpers inherit it, so one signal ends them all
            // even when the test fails before a graceful close.
            .process_group(0)
            .spawn()
            .context("starting chromedriver (is the chromium-driver package installed?)")?;
        let mut browser = Self {
            name: name.to_owned(),
            client: None,
            driver,
            profile,
        };

        let driver_url = format!("http://127.0.0.1:{port}");
        wait_until(
            &format!("chromedriver for {name} to answer /status"),
            DRIVER_START_TIMEOUT,
            || driver_ready(port),
        )
        .await
        .with_context(|| format!("chromedriver log: {}", log_path.display()))?;

        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|arg| arg.to_string()).collect();
        args.push(format!("--user-data-dir={}", browser.profile.display()));
        args.extend(extra_args.iter().cloned());
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM_BINARY, "args": args },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("json! of an object")
        };
        let mut builder = fantoccini::ClientBuilder::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        );
        builder.capabilities(capabilities);
        let client = bounded(SESSION_START_TIMEOUT, builder.connect(&driver_url), || {
            format!(
                "{name}: starting Chromium (chromedriver log: {})",
                log_path.display()
            )
        })
        .await?;
        // Headless windows default to 800×600, too cramped for screenshots that show the whole page.
        let resize = client.set_window_size(WINDOW_WIDTH, WINDOW_HEIGHT);
        bounded(WEBDRIVER_COMMAND_TIMEOUT, resize, || {
            format!("{name}: resizing the window")
        })
        .await?;
        browser.client = Some(client);
        Ok(browser)
    }

    /// The label given to [`Browser::launch`].
    pub fn name(&self) -> &str {
        &self.name
    }

    fn client(&self) -> Result<&fantoccini::Client> {
        self.client
            .as_ref()
            .with_context(|| format!("{} is closed", self.name))
    }

    /// Navigates and waits for the page's load event.
    pub async fn goto(&self, url: &str) -> Result<()> {
        let goto = self.client()?.goto(url);
        bounded(WEBDRIVER_COMMAND_TIMEOUT, goto, || {
            format!("{}: loading {url}", self.name)
        })
        .await
    }

    /// Runs `body` as the body of a JavaScript function (`arguments[i]` are `args`) and returns what it
    /// returns, as JSON.
    pub async fn execute(&self, body: &str, args: Vec<Value>) -> Result<Value> {
        let run = self.client()?.execute(body, args);
        bounded(WEBDRIVER_COMMAND_TIMEOUT, run, || {
            format!("{}: running script: {body}", self.name)
        })
        .await
    }

    /// Evaluates a JavaScript expression and returns its value as JSON.
    pub async fn eval(&self, expression: &str) -> Result<Value> {
        self.execute(&format!("return ({expression});"), Vec::new())
            .await
    }

    /// Evaluates `expression` until `accept` returns `Some`, for at most `timeout`.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        expression: &str,
        accept: impl Fn(&Value) -> Option<T>,
    ) -> Result<T> {
        let what = format!("{}: {what}", self.name);
        let accept = &accept;
        wait_until(&what, timeout, || {
            let value = self.eval(expression);
            async move {
                let value = value.await?;
                Ok(match accept(&value) {
                    Some(done) => Check::Done(done),
                    None => Check::Pending(value.to_string()),
                })
            }
        })
        .await
    }

    /// Saves a PNG screenshot of the page as `file_name` in the artifacts directory; returns its path.
    pub async fn screenshot(&self, file_name: &str) -> Result<PathBuf> {
        let shot = self.client()?.screenshot();
        let png = bounded(WEBDRIVER_COMMAND_TIMEOUT, shot, || {
            format!("{}: taking a screenshot", self.name)
        })
        .await?;
        let path = artifacts_dir()?.join(file_name);
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Ends the WebDriver session, which quits Chromium cleanly; the drop that follows stops chromedriver.
    pub async fn close(mut self) -> Result<()> {
        if let Some(client) = self.client.take() {
            bounded(SHUTDOWN_TIMEOUT, client.close(), || {
                format!("{}: closing Chromium", self.name)
            })
            .await?;
        }
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group id is chromedriver's pid (process_group(0)); Chromium and its helpers are in it.
        if let Ok(pgid) = libc::pid_t::try_from(self.driver.id()) {
            // SAFETY: kill(2) with a negative pid signals that process group only; no memory is involved.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.driver.wait();
        // Chromium's processes may still be exiting and writing to the profile for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir_all(&self.profile).is_err()
            && self.profile.exists()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Awaits `call` for at most `limit`; both a timeout and a failure name `what()`.
async fn bounded<T, E>(
    limit: Duration,
    call: impl Future<Output = std::result::Result<T, E>>,
    what: impl FnOnce() -> String,
) -> Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.with_context(what),
        Err(_) => Err(anyhow!("{}: took longer than {limit:?}", what())),
    }
}

async fn driver_ready(port: u16) -> Result<Check<()>> {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        stream
            .write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        // chromedriver keeps the connection open regardless, so read until the body is complete JSON.
        let mut response = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await?;
            response.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&response).into_owned();
            let status = text
                .split_once("\r\n\r\n")
                .and_then(|(_, body)| serde_json::from_str::<Value>(body).ok());
            if let Some(status) = status {
                return anyhow::Ok((status["value"]["ready"] == true, text));
            }
            if n == 0 || response.len() > 1 << 16 {
                return Ok((false, text));
            }
        }
    };
    Ok(
        match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(Ok((true, _))) => Check::Done(()),
            Ok(Ok((false, response))) => Check::Pending(format!("/status answered {response:?}")),
            Ok(Err(err)) => Check::Pending(format!("/status: {err}")),
            Err(_) => Check::Pending("/status did not answer within 2 s".to_owned()),
        },
    )
}

/// A loopback port that was free a moment ago. Another process could take it before chromedriver binds it;
/// on a test machine that is rare enough not to warrant retries.
/// Stops `child` politely: SIGTERM, up to `grace` to exit, then SIGKILL; always reaped.
pub fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// A process-unique suffix for file names.
pub fn unique() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

// --- The web demo's test hooks (docs/web-demo.md), shared by the browser tests ---

/// The expression that reads the demo page's state (`window.demo.state()`), or null before the page is up.
pub const DEMO_STATE: &str = "window.demo?.state() ?? null";
/// How long a page may take to get its `welcome`.
pub const DEMO_JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long two pages may take to open and ready their chat channel.
pub const DEMO_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

impl SignalingServer {
    /// The port it listens on.
    pub fn port(&self) -> Result<u16> {
        self.url
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .with_context(|| format!("no port in {}", self.url))
    }
}

/// Loads the demo at `url` and waits for its `welcome`; returns the page's peer id.
pub async fn demo_join(browser: &Browser, url: &str) -> Result<String> {
    browser.goto(url).await?;
    browser
        .wait_for(
            "welcome from the server",
            DEMO_JOIN_TIMEOUT,
            DEMO_STATE,
            |state| {
                if state.get("signaling")? != "open" {
                    return None;
                }
                state.get("peerId")?.as_str().map(str::to_owned)
            },
        )
        .await
}

/// Waits until the page's chat channel with `peer` is ready (that peer's `hello` arrived).
pub async fn demo_wait_ready(browser: &Browser, peer: &str) -> Result<()> {
    browser
        .wait_for(
            &format!("the chat channel with {peer} to be ready"),
            DEMO_CONNECT_TIMEOUT,
            DEMO_STATE,
            |state| (state.pointer(&format!("/peers/{peer}/ready"))? == true).then_some(()),
        )
        .await
}

/// `a` joins `url`, then `b`, and both wait until their channel is ready; returns their peer ids.
pub async fn demo_connect_pair(a: &Browser, b: &Browser, url: &str) -> Result<(String, String)> {
    let a_id = demo_join(a, url).await?;
    let b_id = demo_join(b, url).await?;
    demo_wait_ready(a, &b_id).await?;
    demo_wait_ready(b, &a_id).await?;
    Ok((a_id, b_id))
}

/// Sends `text` from `from` (like its composer) and waits until `to` received it from `from_id`.
pub async fn demo_chat(from: &Browser, from_id: &str, to: &Browser, text: &str) -> Result<()> {
    from.execute("return window.demo.send(arguments[0]);", vec![json!(text)])
        .await?;
    to.wait_for(
        &format!("{text:?} from {from_id}"),
        DEMO_CONNECT_TIMEOUT,
        DEMO_STATE,
        |state| {
            state
                .get("received")?
                .as_array()?
                .iter()
                .any(|line| line["from"] == from_id && line["text"] == text)
                .then_some(())
        },
    )
    .await
}

/// On failure, saves a screenshot and the demo state of each browser, and adds both to the error.
pub async fn keep_failure_artifacts<T>(
    outcome: Result<T>,
    browsers: &[&Browser],
    label: &str,
) -> Result<T> {
    let Err(err) = outcome else { return outcome };
    let mut notes = Vec::new();
    for browser in browsers {
        let file = format!("failure-{label}-{}.png", browser.name());
        match browser.screenshot(&file).await {
            Ok(path) => notes.push(format!("screenshot {}", path.display())),
            Err(shot) => notes.push(format!("no screenshot of {}: {shot:#}", browser.name())),
        }
        match browser.eval(DEMO_STATE).await {
            Ok(state) => notes.push(format!("{} state: {state}", browser.name())),
            Err(eval) => notes.push(format!("no state from {}: {eval:#}", browser.name())),
        }
    }
    Err(anyhow!("{err:?}\n\nartifacts:\n{}", notes.join("\n")))
}

/// The `signaling` binary the tests run (`$E2E_SIGNALING_BIN` or `target/<profile>/signaling`), e.g. for its
/// `token` subcommand.
pub fn signaling_binary_path() -> Result<PathBuf> {
    signaling_binary()
}

// --- Memory of the server child, for the slow-consumer tests ---

/// Resident memory of a process, from `/proc/<pid>/status` (Linux), in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the peak resident size since start (or since [`SignalingServer::reset_peak_memory`]).
    pub hwm_kib: u64,
}

impl SignalingServer {
    /// The server process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory now and its peak.
    pub fn memory(&self) -> Result<Memory> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in {path}"))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }

    /// Resets `VmHWM` to the current RSS (writes `5` to `/proc/<pid>/clear_refs`, Linux ≥ 4.0), so the next
    /// [`memory`](Self::memory) reports the peak of what follows.
    pub fn reset_peak_memory(&self) -> Result<()> {
        let path = format!("/proc/{}/clear_refs", self.child.id());
        std::fs::write(&path, "5").with_context(|| format!("writing {path}"))
    }
}
