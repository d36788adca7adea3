//! A signaling cluster on loopback ports, all real parts: a `redis-server` with persistence off, N `signaling`
//! nodes started with `--redis-url` and `--trusted-proxy 127.0.0.1`, and nginx (non-daemon, its own prefix
//! directory) round-robining over them with the config `docs/deployment.md` ships
//! (`deploy/nginx-signaling.conf`, only its two placeholders filled in). Everything is killed on drop.
//!
//! Which node served what is read from the parts themselves, never assumed: a node's log has a `joined` /
//! `resumed` line naming the peer id, and nginx's access log (a format set outside the shipped file) names the
//! upstream of every finished request.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::{SignalingServer, artifacts_dir, free_port, unique};

/// The nginx configuration `docs/deployment.md` ships, with `@NODES@` and `@LISTEN@` to fill in.
pub const NGINX_CONF: &str = include_str!("../../deploy/nginx-signaling.conf");
/// Where the Debian package puts nginx.
pub const NGINX_BINARY: &str = "/usr/sbin/nginx";
const START_TIMEOUT: Duration = Duration::from_secs(10);

static STARTED: AtomicU32 = AtomicU32::new(0);

/// Fails unless `docs/deployment.md` contains [`NGINX_CONF`] verbatim, so the doc and the tested config
/// cannot drift apart.
pub fn check_doc_ships_the_nginx_conf() -> Result<()> {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deployment.md");
    let doc = std::fs::read_to_string(&doc_path)
        .with_context(|| format!("reading {}", doc_path.display()))?;
    ensure!(
        doc.contains(&format!("```nginx\n{NGINX_CONF}```")),
        "{} does not contain deploy/nginx-signaling.conf verbatim in a ```nginx block: copy the file into it",
        doc_path.display()
    );
    Ok(())
}

/// A `redis-server` on a free loopback port with its own directory, no RDB snapshots and no AOF.
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
    starts: u32,
}

impl Redis {
    /// Starts it and waits until it answers `PING`.
    pub fn start() -> Result<Self> {
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("e2e-redis-{}-{n}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut redis = Redis {
            child: None,
            port: free_port()?,
            dir,
            log: artifacts_dir()?.join(format!("redis-{n}.log")),
            starts: 0,
        };
        redis.spawn()?;
        Ok(redis)
    }

    fn spawn(&mut self) -> Result<()> {
        // Appending: a restart's log follows the first run's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting redis-server (is the redis-server package installed?)")?;
        self.child = Some(child);
        self.starts += 1;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.ping() {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() >= deadline => {
                    return Err(err.context(format!(
                        "redis-server did not answer PING within {START_TIMEOUT:?}; its log: {}",
                        self.log.display()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Sends an inline `PING` and expects `+PONG`.
    pub fn ping(&self) -> Result<()> {
        let reply = self.command("PING")?;
        ensure!(reply.starts_with("+PONG"), "PING answered {reply:?}");
        Ok(())
    }

    /// Sends one inline command (`DBSIZE`, `KEYS *`…) and returns the raw reply it could read in 1 s.
    pub fn command(&self, line: &str) -> Result<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.write_all(format!("{line}\r\n").as_bytes())?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = stream.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// SIGKILL: the data is gone (nothing is persisted).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request nginx logged: method, path (without the query, which can hold a session token), status and
/// the upstream address(es) that answered (`127.0.0.1:PORT`, or several comma-separated when it moved on).
#[derive(Debug, Clone)]
pub struct AccessEntry {
    /// `GET`, `POST`…
    pub method: String,
    /// `$uri`.
    pub path: String,
    /// The status sent to the client.
    pub status: u16,
    /// `$upstream_addr`.
    pub upstream: String,
}

/// nginx with the shipped config in front of `upstreams`, on a free loopback port.
pub struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
    access_log: PathBuf,
}

impl Nginx {
    /// Writes a main config (temp paths, access log) that includes the shipped file with `@NODES@` and
    /// `@LISTEN@` filled in, and runs `nginx -p DIR -c DIR/nginx.conf -g 'daemon off; …'` in the foreground.
    pub fn start(upstreams: &[u16]) -> Result<Self> {
        check_doc_ships_the_nginx_conf()?;
        if !Path::new(NGINX_BINARY).is_file() {
            bail!("{NGINX_BINARY} is missing: apt-get install nginx (scripts/test does)");
        }
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("e2e-nginx-{}-{n}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let port = free_port()?;
        let nodes: Vec<String> = upstreams
            .iter()
            .map(|p| format!("server 127.0.0.1:{p};"))
            .collect();
        // Only the directive lines are filled in: the header comment names the placeholders too, and a
        // multi-line node list spliced into a comment would leave `server …;` lines outside any block.
        let site = NGINX_CONF
            .replace("\n    @NODES@\n", &format!("\n    {}\n", nodes.join("\n    ")))
            .replace("listen @LISTEN@;", &format!("listen 127.0.0.1:{port};"));
        if site.contains("\n    @NODES@") || site.contains("listen @LISTEN@") {
            bail!("deploy/nginx-signaling.conf: a placeholder line was not filled in");
        }
        std::fs::write(dir.join("signaling.conf"), site)?;
        let access_log = dir.join("access.log");
        let d = dir.display();
        // Everything here is outside the shipped file: what a packaged nginx.conf has (temp paths, logs),
        // moved into the test's directory so nothing needs root or touches /var.
        let main = format!(
            "worker_processes 1;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             \x20   client_body_temp_path {d}/client_body;\n\
             \x20   proxy_temp_path {d}/proxy;\n\
             \x20   fastcgi_temp_path {d}/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/uwsgi;\n\
             \x20   scgi_temp_path {d}/scgi;\n\
             \x20   log_format upstreams '$request_method $uri $status $upstream_addr';\n\
             \x20   access_log {} upstreams;\n\
             \x20   include {d}/signaling.conf;\n\
             }}\n",
            access_log.display()
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, main)?;
        let log_path = artifacts_dir()?.join(format!("nginx-{n}.log"));
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(NGINX_BINARY)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg("stderr")
            .arg("-c")
            .arg(&conf)
            .arg("-g")
            .arg(format!("daemon off; pid {d}/nginx.pid; error_log stderr;"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {NGINX_BINARY}"))?;
        let mut nginx = Nginx {
            child,
            port,
            dir,
            access_log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                bail!("nginx exited ({status}); its log: {}", log_path.display());
            }
            if Instant::now() >= deadline {
                bail!(
                    "nginx did not listen within {START_TIMEOUT:?}; its log: {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request logged so far (nginx logs a request when it ends: a WebSocket when it closes).
    pub fn access_log(&self) -> Result<Vec<AccessEntry>> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        let mut entries = Vec::new();
        for line in text.lines() {
            let mut f = line.splitn(4, ' ');
            let (Some(method), Some(path), Some(status), Some(upstream)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                bail!("unexpected access log line {line:?}");
            };
            entries.push(AccessEntry {
                method: method.to_owned(),
                path: path.to_owned(),
                status: status
                    .parse()
                    .with_context(|| format!("status in {line:?}"))?,
                upstream: upstream.to_owned(),
            });
        }
        Ok(entries)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGKILL reaches the master only; its worker notices the master is gone and exits, but send it
        // SIGTERM first so the worker goes with it at once.
        crate::terminate(&mut self.child, Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Redis, `n` nodes and nginx in front of them.
pub struct Cluster {
    /// The shared Redis (restart it with [`Redis::restart`]); None for [`Cluster::without_redis`].
    pub redis: Option<Redis>,
    nodes: Vec<Option<SignalingServer>>,
    ports: Vec<u16>,
    // Kept apart from the nodes: a killed node's log still says what it served.
    logs: Vec<PathBuf>,
    /// The load balancer; clients use [`Cluster::url`].
    pub nginx: Nginx,
}

impl Cluster {
    /// Starts Redis, `n` nodes with `--redis-url <it> --trusted-proxy 127.0.0.1 ARGS…`, then nginx.
    pub fn start(n: usize, args: &[&str]) -> Result<Self> {
        let redis = Redis::start()?;
        let url = redis.url();
        let mut all = vec!["--redis-url", url.as_str()];
        all.extend_from_slice(args);
        Self::with_nodes(Some(redis), n, &all)
    }

    /// `n` nodes on their own (no `--redis-url`: each keeps its rooms in memory) behind the same nginx.
    pub fn without_redis(n: usize, args: &[&str]) -> Result<Self> {
        Self::with_nodes(None, n, args)
    }

    fn with_nodes(redis: Option<Redis>, n: usize, args: &[&str]) -> Result<Self> {
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        let mut logs = Vec::new();
        for i in 0..n {
            let mut all = vec!["--trusted-proxy", "127.0.0.1"];
            all.extend_from_slice(args);
            let node =
                SignalingServer::start(&all).with_context(|| format!("starting node {i}"))?;
            ports.push(node.port()?);
            logs.push(node.log_path().to_owned());
            nodes.push(Some(node));
        }
        let nginx = Nginx::start(&ports)?;
        Ok(Cluster {
            redis,
            nodes,
            ports,
            logs,
            nginx,
        })
    }

    /// The shared Redis.
    pub fn redis(&mut self) -> Result<&mut Redis> {
        self.redis
            .as_mut()
            .context("this cluster runs without Redis")
    }

    /// nginx's `http://127.0.0.1:PORT`: where every client goes.
    pub fn url(&self) -> String {
        self.nginx.url()
    }

    /// How many nodes were started (killed ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was started.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i` itself, bypassing nginx (None once killed).
    pub fn node(&self, i: usize) -> Option<&SignalingServer> {
        self.nodes.get(i)?.as_ref()
    }

    /// The index of the node listening on `upstream` (`127.0.0.1:PORT`, as nginx logs it).
    pub fn node_at(&self, upstream: &str) -> Option<usize> {
        let port: u16 = upstream.trim().rsplit(':').next()?.parse().ok()?;
        self.ports.iter().position(|p| *p == port)
    }

    /// kill -9 node `i`.
    pub fn kill_node(&mut self, i: usize) {
        // SignalingServer's drop is Child::kill, which is SIGKILL.
        drop(self.nodes.get_mut(i).and_then(Option::take));
    }

    /// The nodes whose log has a line with `event` (e.g. `joined`, `resumed`) for `peer_id`, in node order.
    pub fn nodes_logging(&self, event: &str, peer_id: &str) -> Vec<usize> {
        let needle = format!("peer={peer_id}");
        (0..self.nodes.len())
            .filter(|i| {
                std::fs::read_to_string(&self.logs[*i]).is_ok_and(|log| {
                    log.lines().any(|line| {
                        line.split_whitespace().any(|w| w == needle)
                            && line.contains(&format!(" {event} "))
                    })
                })
            })
            .collect()
    }

    /// The one node that logged `peer_id` as joined, if exactly one did.
    pub fn joined_on(&self, peer_id: &str) -> Result<usize> {
        match self.nodes_logging("joined", peer_id)[..] {
            [i] => Ok(i),
            ref found => {
                bail!("peer {peer_id} is logged as joined on nodes {found:?}, expected exactly one")
            }
        }
    }
}
