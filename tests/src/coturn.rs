//! A real coturn (`turnserver`) on loopback ports, configured with the `turn-config` crate's generated
//! `turnserver.conf` plus the test-only flags that let it relay between loopback peers. Killed on drop.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use turn_config::coturn::CoturnConfig;
use turn_config::credential::Secrets;

/// How long coturn may take to answer its first STUN request.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Relay ports per coturn: a few allocations per test.
const RELAY_PORTS: u16 = 64;

static STARTED: AtomicU32 = AtomicU32::new(0);

/// A running coturn. Its log is `e2e-artifacts/coturn-<n>.log`.
pub struct Coturn {
    child: Child,
    dir: PathBuf,
    port: u16,
    secret_file: PathBuf,
    log: PathBuf,
}

impl Coturn {
    /// Starts coturn on a free loopback UDP port with `secrets` (one a line, newest first) and waits until it
    /// answers a STUN Binding request.
    pub fn start(secrets: &str) -> Result<Coturn> {
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("e2e-coturn-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let secret_file = dir.join("turn-secret");
        std::fs::write(&secret_file, secrets)?;
        let port = free_udp_port()?;
        // A relay range per coturn, so coturns of tests running side by side do not compete for ports.
        let min_port = 20_000 + ((std::process::id() * 8 + n) % 600) as u16 * RELAY_PORTS;
        let mut conf = CoturnConfig::new("e2e.test", Secrets::read(&secret_file)?);
        conf.listening_port = port;
        conf.listening_ips = vec![Ipv4Addr::LOCALHOST.into()];
        conf.min_port = min_port;
        conf.max_port = min_port + RELAY_PORTS - 1;
        let conf_path = dir.join("turnserver.conf");
        std::fs::write(&conf_path, conf.render()?)?;

        let log = crate::artifacts_dir()?.join(format!("coturn-{n}.log"));
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new("turnserver")
            .arg("-c")
            .arg(&conf_path)
            // Test-only: the peers are on loopback, which the generated config (rightly) denies.
            .args(["--allow-loopback-peers", "--allowed-peer-ip=127.0.0.1"])
            // UDP only (what the tests use): a TCP listener on the same port could find it taken by some
            // ephemeral TCP connection, since only the UDP port was checked free.
            .args([
                "--no-tcp",
                "--no-tls",
                "--no-dtls",
                "--log-file",
                "stdout",
                "--simple-log",
            ])
            .arg("--pidfile")
            .arg(dir.join("turnserver.pid"))
            .arg("--db")
            .arg(dir.join("turndb"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting turnserver (is the coturn package installed?)")?;
        let mut coturn = Coturn {
            child,
            dir,
            port,
            secret_file,
            log,
        };
        coturn.wait_ready()?;
        Ok(coturn)
    }

    /// `turn:127.0.0.1:PORT?transport=udp`.
    pub fn turn_url(&self) -> String {
        format!("turn:127.0.0.1:{}?transport=udp", self.port)
    }

    /// The secret file coturn was configured from (the signaling server can read the same one).
    pub fn secret_file(&self) -> &Path {
        &self.secret_file
    }

    /// coturn's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self) -> Result<()> {
        // A Binding request with no attributes: coturn answers it as soon as its listener is up.
        let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        request.extend_from_slice(b"e2e-ready-12");
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let deadline = Instant::now() + START_TIMEOUT;
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "turnserver exited ({status}) before answering; its log {}:\n{}",
                    self.log.display(),
                    self.log()
                );
            }
            sock.send_to(&request, (Ipv4Addr::LOCALHOST, self.port))?;
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && n >= 20
                && buf[8..20] == request[8..20]
            {
                return Ok(());
            }
        }
        bail!(
            "turnserver did not answer STUN within {START_TIMEOUT:?}; its log: {}",
            self.log.display()
        )
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback UDP port that was free a moment ago.
fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}
