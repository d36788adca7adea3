//! `bench load`: many WebSocket or SSE clients in rooms of two against the `signaling` release binary, measuring
//! what one node holds and what forwarding costs it.
//!
//! Scenarios: `idle` (N connections that only keep their heartbeat), `forward` (pairs that signal or relay to
//! each other at a set total rate), `churn` (forwarding while pairs leave and new ones join). The bench starts the
//! server itself on loopback (one or `--nodes` processes, with the limits it needs raised and printed), or is
//! pointed at `--target URL` (repeatable: pairs are spread round robin) with `--server-pid` for the figures read
//! from /proc. Every client runs in this process; it raises its own `RLIMIT_NOFILE` (and the server's, which
//! inherits it) and spreads its sockets over several loopback source addresses so that 20,000+ connections do
//! not run out of ephemeral ports.
//!
//! Latency is measured by the clients: each signal or relay carries the phase and the send instant (this
//! process's monotonic clock), and the receiving client takes the difference. Lost = sent − received per pair
//! after a drain. Server RSS comes from /proc/<pid>/status (VmRSS), server CPU from /proc/<pid>/stat.

use crate::report::{int, num};
use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::{
    self, Message, client::IntoClientRequest, protocol::WebSocketConfig,
};

/// Version of the JSON layout.
pub const FORMAT: u32 = 1;

/// Client sockets per loopback source address: well inside the 28,232 ports of Linux's default ephemeral range,
/// with room for sockets in TIME_WAIT after churn.
const PER_SOURCE: usize = 12_000;

/// What `bench load` runs.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Scenario {
    /// Connections that only keep their heartbeat (a `ping` every interval): what the server holds per connection.
    Idle {
        /// Connections (rooms of two).
        #[arg(long, default_value_t = 20_000)]
        connections: usize,
        /// How long to hold them once all are connected before reading the server's memory and CPU (s).
        #[arg(long, default_value_t = 12.0)]
        hold: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Pairs that send each other signals (`candidate`) or relays at a set total rate.
    Forward {
        /// Pairs (rooms of two).
        #[arg(long, default_value_t = 1000)]
        pairs: usize,
        /// Forwarded messages per second, all pairs together (comma-separated: one phase each).
        #[arg(long, value_delimiter = ',', default_value = "2000,10000")]
        msg_rate: Vec<f64>,
        /// What the pairs send (comma-separated: one phase each, for every rate).
        #[arg(long, value_delimiter = ',', default_value = "signal,relay")]
        kind: Vec<MsgKind>,
        /// Length of each phase (s).
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Forwarding while pairs leave and new pairs join.
    Churn {
        /// Pairs kept connected (each one that leaves is replaced).
        #[arg(long, default_value_t = 1000)]
        pairs: usize,
        /// Joins per second (and as many leaves): one pair replaced every 2 / churn seconds.
        #[arg(long, default_value_t = 100.0)]
        churn: f64,
        /// Forwarded messages per second meanwhile, all pairs together.
        #[arg(long, default_value_t = 2000.0)]
        msg_rate: f64,
        /// What the pairs send.
        #[arg(long, default_value = "signal")]
        kind: MsgKind,
        /// Length of the phase (s).
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[command(flatten)]
        common: Common,
    },
}

/// Options of every scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// `ws` (WebSocket) or `sse` (SSE stream down, one POST per message up on a keep-alive connection).
    #[arg(long, default_value = "ws")]
    pub transport: LoadTransport,
    /// A running server (`http://host:port`, plain HTTP); repeatable: pairs go to them round robin. Without it the
    /// bench starts the signaling release binary itself.
    #[arg(long = "target", value_name = "URL")]
    pub targets: Vec<String>,
    /// Process id of a `--target` server, for its RSS and CPU (repeatable).
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pids: Vec<u32>,
    /// Servers to start when no `--target` is given (pairs round robin; each room stays on one node unless
    /// `--cross-node`).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// The signaling binary to start (default: `signaling` next to this executable, i.e. target/release).
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// Cluster mode: start a `redis-server` on a free loopback port (no persistence) and give every started node
    /// `--redis-url` for it; its CPU is reported per forwarded message.
    #[arg(long)]
    pub redis: bool,
    /// The Redis server binary for `--redis`.
    #[arg(long, value_name = "PATH", default_value = "redis-server")]
    pub redis_bin: PathBuf,
    /// Process id of the Redis server behind `--target` nodes, for its CPU.
    #[arg(long = "redis-pid", value_name = "PID")]
    pub redis_pid: Option<u32>,
    /// Put the two peers of each room on different nodes (the second on the next node round robin), so every
    /// message crosses nodes through the broker. Needs two or more nodes sharing one Redis.
    #[arg(long)]
    pub cross_node: bool,
    /// An extra flag for the started server (repeatable), e.g. `--server-arg=--ws-read-buffer-bytes=131072`.
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Loopback source addresses for the client sockets (127.0.0.2, 127.0.0.3, …); 0: one per 12,000 sockets.
    #[arg(long, default_value_t = 0)]
    pub sources: usize,
    /// Connection handshakes in flight at once.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Padding in each relay's data and each signal's candidate line (bytes).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// After sending stops, how long to wait for messages in flight before counting the lost (s).
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
}

/// The client transport of a load run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LoadTransport {
    /// `GET /v1/rooms/{room}/ws`.
    Ws,
    /// `GET /v1/rooms/{room}/sse` + `POST /v1/sessions/{peer}`.
    Sse,
}

/// What forwarding pairs send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MsgKind {
    /// `signal` with a trickled `candidate` (the send instant in its `usernameFragment`).
    Signal,
    /// `relay` with `{"p":phase,"t":ns,"pad":"…"}`.
    Relay,
}

impl LoadTransport {
    fn name(self) -> &'static str {
        match self {
            LoadTransport::Ws => "ws",
            LoadTransport::Sse => "sse",
        }
    }
}

impl MsgKind {
    fn name(self) -> &'static str {
        match self {
            MsgKind::Signal => "signal",
            MsgKind::Relay => "relay",
        }
    }
}

/// One measured phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadRow {
    /// `idle`, `forward` or `churn`.
    pub scenario: String,
    /// `ws` or `sse`.
    pub transport: String,
    /// `signal`, `relay`, or empty for idle.
    pub kind: String,
    /// Clients asked for (2 per pair).
    pub clients: usize,
    /// Client connections holding a session at the end of the phase (welcome received, not closed).
    pub held: usize,
    /// TCP connections the started server(s) had open at the end of the phase (/proc/<pid>/fd sockets).
    pub server_sockets: Option<usize>,
    /// Server RSS before any client connected (KiB, all server processes).
    pub rss_base_kib: Option<u64>,
    /// Server RSS at the end of the phase (KiB).
    pub rss_kib: Option<u64>,
    /// (rss − base) / held, KiB.
    pub rss_per_conn_kib: Option<f64>,
    /// Forwarded messages per second asked for.
    pub target_rate: f64,
    /// Seconds the phase sent (or held, for idle).
    pub secs: f64,
    /// Messages sent (signal/relay, not pings).
    pub sent: u64,
    /// Messages received by the partner within the phase and its drain.
    pub received: u64,
    /// Σ per pair of (sent − received), after the drain.
    pub lost: u64,
    /// Forwarded messages per second received.
    pub rate: f64,
    /// Send → receive, microseconds.
    pub p50_us: Option<f64>,
    /// Microseconds.
    pub p99_us: Option<f64>,
    /// Microseconds.
    pub max_us: Option<f64>,
    /// Server user + system CPU over the phase and its drain (s).
    pub server_cpu_s: Option<f64>,
    /// Server CPU / forwarded message (µs), heartbeats included.
    pub cpu_us_per_msg: Option<f64>,
    /// Server CPU / wall time.
    pub server_cores: Option<f64>,
    /// Redis user + system CPU over the phase and its drain (s), in cluster mode.
    #[serde(default)]
    pub redis_cpu_s: Option<f64>,
    /// Redis CPU / forwarded message (µs).
    #[serde(default)]
    pub redis_cpu_us_per_msg: Option<f64>,
    /// Joins made in the phase (churn) or to set it up.
    pub joins: u64,
    /// Leaves made in the phase (churn).
    pub leaves: u64,
    /// Connect → welcome, milliseconds.
    pub join_p50_ms: Option<f64>,
    /// Milliseconds.
    pub join_p99_ms: Option<f64>,
    /// Errors by code (`error:<code>` from the server, `close:<code>`, `http:<status>`, `connect:<kind>`, …).
    pub errors: BTreeMap<String, u64>,
}

impl LoadRow {
    /// The CPU columns of a sending phase: `cpu` spent over `wall` seconds, per message received.
    fn set_cpu(&mut self, cpu: Cpu, wall: f64) {
        let per_msg = |c: Option<f64>| c.filter(|_| self.received > 0).map(|c| c * 1e6 / self.received as f64);
        self.server_cpu_s = cpu.server;
        self.server_cores = cpu.server.map(|c| c / wall);
        self.cpu_us_per_msg = per_msg(cpu.server);
        self.redis_cpu_s = cpu.redis;
        self.redis_cpu_us_per_msg = per_msg(cpu.redis);
    }
}

/// What the run set up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSetup {
    /// The command line.
    pub command: String,
    /// The machine.
    pub machine: crate::sys::Machine,
    /// Server URLs.
    pub targets: Vec<String>,
    /// Server pids measured.
    pub server_pids: Vec<u32>,
    /// The server command line(s) when the bench started them.
    pub server_command: Option<String>,
    /// The Redis server the nodes share (cluster mode): its command line when started here, and its pid.
    #[serde(default)]
    pub redis: Option<String>,
    /// Whether the two peers of each room were on different nodes.
    #[serde(default)]
    pub cross_node: bool,
    /// RLIMIT_NOFILE (soft, hard) of this process (and of the servers it started) after raising, and what it
    /// was before.
    pub nofile: (u64, u64),
    /// RLIMIT_NOFILE before.
    pub nofile_before: (u64, u64),
    /// Client source addresses.
    pub sources: Vec<String>,
    /// What the run needs from the machine, in words.
    pub needs: Vec<String>,
    /// The drain after each sending phase (s).
    pub drain_s: f64,
}

/// A whole `bench load` report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    /// [`FORMAT`].
    pub format: u32,
    /// The setup.
    pub setup: LoadSetup,
    /// One per phase.
    pub rows: Vec<LoadRow>,
}

/// Header of the table (`bench/tests` and docs read it).
pub const LOAD_HEADER: &str = "| scenario | transport | kind | clients | held | server RSS MiB | RSS/conn KiB | target msg/s | msg/s | sent | lost | p50 µs | p99 µs | max µs | server CPU µs/msg | server cores | Redis CPU µs/msg | joins | join p50/p99 ms | errors |";

impl LoadReport {
    /// The Markdown: setup, then the table.
    pub fn markdown(&self) -> String {
        let s = &self.setup;
        let mut out = String::new();
        let m = &s.machine;
        writeln!(out, "## bench load\n").ok();
        writeln!(out, "- command: `{}`", s.command).ok();
        writeln!(
            out,
            "- machine: {} × {}, {} MiB, kernel {}, load {} → {}, {} build",
            m.nproc,
            m.cpu_model.as_deref().unwrap_or("?"),
            m.mem_mib.unwrap_or(0),
            m.kernel.as_deref().unwrap_or("?"),
            m.load_start.map(num).unwrap_or_default(),
            m.load_end.map(num).unwrap_or_default(),
            m.profile
        )
        .ok();
        writeln!(
            out,
            "- servers: {} (pids {:?})",
            s.targets.join(", "),
            s.server_pids
        )
        .ok();
        if let Some(c) = &s.server_command {
            writeln!(out, "- server command: `{c}`").ok();
        }
        if let Some(r) = &s.redis {
            writeln!(
                out,
                "- cluster: {r}; peers of a room on {} nodes",
                if s.cross_node { "different" } else { "the same" }
            )
            .ok();
        }
        writeln!(
            out,
            "- RLIMIT_NOFILE: {}/{} (soft/hard; was {}/{}); client source addresses: {}",
            s.nofile.0,
            s.nofile.1,
            s.nofile_before.0,
            s.nofile_before.1,
            s.sources.join(", ")
        )
        .ok();
        for n in &s.needs {
            writeln!(out, "- needs: {n}").ok();
        }
        writeln!(out).ok();
        writeln!(out, "{LOAD_HEADER}\n|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|").ok();
        let o = |v: Option<f64>| v.map(num).unwrap_or_else(|| "–".into());
        for r in &self.rows {
            let errors = if r.errors.is_empty() {
                "none".to_owned()
            } else {
                r.errors
                    .iter()
                    .map(|(k, v)| format!("{k} ×{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let forwarding = r.scenario != "idle";
            let f = |v: String| if forwarding { v } else { "–".into() };
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.transport,
                if r.kind.is_empty() { "–" } else { &r.kind },
                int(r.clients as u64),
                int(r.held as u64),
                o(r.rss_kib.map(|k| k as f64 / 1024.0)),
                o(r.rss_per_conn_kib),
                f(int(r.target_rate as u64)),
                f(num(r.rate)),
                f(int(r.sent)),
                f(int(r.lost)),
                o(r.p50_us),
                o(r.p99_us),
                o(r.max_us),
                o(r.cpu_us_per_msg),
                o(r.server_cores),
                o(r.redis_cpu_us_per_msg),
                int(r.joins),
                match (r.join_p50_ms, r.join_p99_ms) {
                    (Some(a), Some(b)) => format!("{} / {}", num(a), num(b)),
                    _ => "–".into(),
                },
                errors
            )
            .ok();
        }
        writeln!(
            out,
            "\nheld: client connections with a session at the end of the phase; RSS/conn: (server RSS − RSS before \
             any client) / held; msg/s: forwarded messages received per second; lost: Σ per pair (sent − received) \
             after a {} s drain; p50/p99/max: send → receive on the clients' clock; server CPU µs/msg: server user + \
             system CPU over the phase and its drain / messages received (heartbeats included), summed over the \
             nodes; Redis CPU µs/msg: the same for the Redis server (cluster mode); join: connect → welcome.",
            num(self.setup.drain_s)
        )
        .ok();
        out
    }
}

/// Runs `bench load <scenario>` and prints the report (JSON too with `--json`).
pub fn main(scenario: Scenario, json: Option<PathBuf>) -> anyhow::Result<()> {
    let command = std::env::args()
        .map(|a| crate::shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
    let (common, clients) = match &scenario {
        Scenario::Idle {
            connections,
            common,
            ..
        } => (common.clone(), *connections),
        Scenario::Forward { pairs, common, .. } | Scenario::Churn { pairs, common, .. } => {
            (common.clone(), pairs * 2)
        }
    };
    anyhow::ensure!(clients >= 2, "at least one pair (2 connections)");
    // Sockets this process opens: one per WebSocket client, two per SSE client (stream + POST connection); the
    // server holds one per client socket.
    let per_client = if common.transport == LoadTransport::Sse {
        2
    } else {
        1
    };
    let sockets = clients * per_client;
    let need_fds = sockets as u64 + 1024;
    let mut needs = Vec::new();
    let nofile_before = nofile();
    let nofile = raise_nofile(need_fds, &mut needs);
    if nofile.0 < need_fds {
        needs.push(format!(
            "RLIMIT_NOFILE ≥ {need_fds} for this process and the server (got {}): run as root, or `ulimit -n {need_fds}` \
             (hard limit ≤ fs.nr_open) first",
            nofile.0
        ));
    }
    let n_sources = if common.sources > 0 {
        common.sources
    } else {
        sockets.div_ceil(PER_SOURCE).max(1)
    };
    anyhow::ensure!(
        n_sources <= 250,
        "--sources at most 250 (127.0.0.2–127.0.0.251)"
    );
    let sources: Vec<IpAddr> = (0..n_sources)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
        .collect();
    needs.push(format!(
        "{} loopback source address(es) ({}; Linux routes all of 127.0.0.0/8 to lo), ≤ {PER_SOURCE} sockets each",
        n_sources,
        sources.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
    ));

    let drain = common.drain;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async move {
        let mut machine = crate::sys::Machine::probe();
        let nodes = Nodes::start(&common, clients, sockets).await?;
        eprintln!("bench load: {command}");
        if let Some(c) = &nodes.command {
            eprintln!("started: {c}");
        }
        let ctx = Arc::new(Ctx::new(&common, sources.clone(), nodes.addrs.clone()));
        let rows = match scenario {
            Scenario::Idle {
                connections, hold, ..
            } => idle(&ctx, &nodes, connections, hold).await?,
            Scenario::Forward {
                pairs,
                msg_rate,
                kind,
                duration,
                ..
            } => forward(&ctx, &nodes, pairs, &msg_rate, &kind, duration).await?,
            Scenario::Churn {
                pairs,
                churn,
                msg_rate,
                kind,
                duration,
                ..
            } => churn_run(&ctx, &nodes, pairs, churn, msg_rate, kind, duration).await?,
        };
        machine.load_end = crate::sys::load1();
        let report = LoadReport {
            format: FORMAT,
            setup: LoadSetup {
                command,
                machine,
                targets: nodes.urls.clone(),
                server_pids: nodes.pids.clone(),
                server_command: nodes.command.clone(),
                redis: nodes.redis.clone(),
                cross_node: common.cross_node,
                nofile,
                nofile_before,
                sources: sources.iter().map(|s| s.to_string()).collect(),
                needs,
                drain_s: drain,
            },
            rows,
        };
        ctx.stop_all();
        drop(nodes);
        anyhow::Ok(report)
    })?;
    // Client tasks may still be closing: do not wait for them.
    rt.shutdown_timeout(Duration::from_secs(2));
    print!("{}", report.markdown());
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

// --- Servers ---

/// The servers under load: started here (killed on drop) or given.
struct Nodes {
    urls: Vec<String>,
    addrs: Vec<SocketAddr>,
    pids: Vec<u32>,
    command: Option<String>,
    _children: Vec<tokio::process::Child>,
    /// The Redis server of a cluster run: its pid and a description; dropped (killed) after the nodes.
    redis_pid: Option<u32>,
    redis: Option<String>,
    _redis: Option<tokio::process::Child>,
}

impl Nodes {
    async fn start(c: &Common, clients: usize, sockets: usize) -> anyhow::Result<Nodes> {
        let nodes = if c.targets.is_empty() { c.nodes } else { c.targets.len() };
        anyhow::ensure!(
            !c.cross_node || nodes >= 2,
            "--cross-node puts a room's peers on different nodes: give --nodes 2 or more (or two --target)"
        );
        anyhow::ensure!(
            !c.cross_node || c.redis || !c.targets.is_empty(),
            "--cross-node needs nodes that share rooms: add --redis (or --target nodes of one cluster)"
        );
        if !c.targets.is_empty() {
            anyhow::ensure!(
                !c.redis,
                "--redis starts Redis for the nodes the bench starts; with --target give --redis-pid instead"
            );
            let mut addrs = Vec::new();
            for t in &c.targets {
                let hostport = t
                    .strip_prefix("http://")
                    .with_context(|| format!("--target {t}: only http:// targets are supported"))?
                    .trim_end_matches('/');
                let addr = tokio::net::lookup_host(hostport)
                    .await
                    .with_context(|| format!("resolving {hostport}"))?
                    .next()
                    .with_context(|| format!("{hostport} resolves to nothing"))?;
                addrs.push(addr);
            }
            return Ok(Nodes {
                urls: c.targets.clone(),
                addrs,
                pids: c.server_pids.clone(),
                command: None,
                _children: Vec::new(),
                redis_pid: c.redis_pid,
                redis: c.redis_pid.map(|p| format!("Redis pid {p}")),
                _redis: None,
            });
        }
        let bin = match &c.server_bin {
            Some(b) => b.clone(),
            None => {
                let exe = std::env::current_exe().context("locating the bench binary")?;
                exe.with_file_name("signaling")
            }
        };
        anyhow::ensure!(
            bin.is_file(),
            "{} does not exist: build it with `cargo build --release -p signaling` (or pass --server-bin)",
            bin.display()
        );
        // Every cap the defaults put on one address or one node, raised so that the load (not a limit) is what is
        // measured: connections (an SSE client holds two), sessions, rooms, joins per address per minute, messages
        // per session per second, and candidates per negotiation (pairs trickle candidates and never offer).
        let per_node = sockets.div_ceil(c.nodes) + 1024;
        let sessions = clients.div_ceil(c.nodes) * 2 + 1024;
        let limits: Vec<String> = [
            ("--listen", "127.0.0.1:0".to_owned()),
            ("--no-stun", String::new()),
            ("--max-connections", per_node.to_string()),
            ("--max-connections-per-ip", per_node.to_string()),
            ("--max-sessions", sessions.to_string()),
            ("--max-rooms", sessions.to_string()),
            ("--join-rate-per-ip-per-min", "100000000".into()),
            ("--rate-per-sec", "100000".into()),
            ("--rate-burst", "100000".into()),
            ("--max-candidates", "4000000000".into()),
        ]
        .into_iter()
        .flat_map(|(k, v)| {
            if v.is_empty() {
                vec![k.to_owned()]
            } else {
                vec![k.to_owned(), v]
            }
        })
        .chain(c.server_args.iter().cloned())
        .collect();
        let (redis_child, redis_url) = if c.redis {
            let (child, url) = start_redis(&c.redis_bin).await?;
            (Some(child), Some(url))
        } else {
            (None, None)
        };
        let limits: Vec<String> = match &redis_url {
            Some(url) => limits.into_iter().chain(["--redis-url".to_owned(), url.clone()]).collect(),
            None => limits,
        };
        let command = format!("RUST_LOG=warn {} {}", bin.display(), limits.join(" "));
        let mut children = Vec::new();
        let (mut urls, mut addrs, mut pids) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..c.nodes {
            let mut child = tokio::process::Command::new(&bin)
                .args(&limits)
                .env("RUST_LOG", "warn")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            let out = child.stdout.take().context("server stdout")?;
            let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(out));
            let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
                .await
                .context("the server did not print its address within 20 s")??
                .context("the server exited before printing its address")?;
            let url = first
                .rsplit(' ')
                .next()
                .filter(|u| u.starts_with("http://"))
                .with_context(|| format!("unexpected first line {first:?}"))?
                .to_owned();
            // Keep reading its stdout, so that it can never block on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            let addr: SocketAddr = url
                .trim_start_matches("http://")
                .parse()
                .context("server address")?;
            pids.push(child.id().context("server pid")?);
            urls.push(url);
            addrs.push(addr);
            children.push(child);
        }
        Ok(Nodes {
            urls,
            addrs,
            pids,
            command: Some(command),
            _children: children,
            redis_pid: redis_child.as_ref().and_then(|r| r.id()),
            redis: redis_url.map(|u| format!("`{} --save '' --appendonly no` at {u}", c.redis_bin.display())),
            _redis: redis_child,
        })
    }

    /// CPU seconds used so far by the nodes (summed) and by Redis.
    fn cpu(&self) -> Cpu {
        Cpu { server: self.cpu_s(), redis: self.redis_pid.and_then(proc_cpu_s) }
    }

    /// CPU seconds used since `mark` (an earlier [`Nodes::cpu`]).
    fn cpu_since(&self, mark: Cpu) -> Cpu {
        let now = self.cpu();
        let diff = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a - b);
        Cpu { server: diff(now.server, mark.server), redis: diff(now.redis, mark.redis) }
    }

    fn rss_kib(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids
            .iter()
            .map(|p| proc_status_kib(*p, "VmRSS:"))
            .sum()
    }

    fn cpu_s(&self) -> Option<f64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|p| proc_cpu_s(*p)).sum()
    }

    fn sockets(&self) -> Option<usize> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|p| proc_sockets(*p)).sum()
    }
}

/// CPU seconds of the servers under load.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    /// All nodes.
    server: Option<f64>,
    /// The Redis server of a cluster run.
    redis: Option<f64>,
}

/// Starts `redis-server` on a free loopback port, without persistence, and waits until it answers `PING`.
async fn start_redis(bin: &std::path::Path) -> anyhow::Result<(tokio::process::Child, String)> {
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
    let child = tokio::process::Command::new(bin)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} (apt-get install redis-server)", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 16];
            if s.write_all(b"PING\r\n").await.is_ok()
                && matches!(tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await, Ok(Ok(n)) if buf[..n].starts_with(b"+PONG"))
            {
                return Ok((child, format!("redis://127.0.0.1:{port}")));
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{} did not answer PING on port {port} within 10 s", bin.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn proc_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command name; 100 ticks a second.
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
}

fn proc_sockets(pid: u32) -> Option<usize> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        dir.filter_map(Result::ok)
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
            })
            .count(),
    )
}

fn nofile() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit to write into.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    (r.rlim_cur, r.rlim_max)
}

/// Raises RLIMIT_NOFILE to `need` (the soft limit up to the hard one; the hard one too when allowed, i.e. as
/// root, up to fs.nr_open). Children started afterwards inherit it.
fn raise_nofile(need: u64, notes: &mut Vec<String>) -> (u64, u64) {
    let (soft, hard) = nofile();
    if soft >= need {
        return (soft, hard);
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let want_hard = if hard >= need {
        hard
    } else {
        need.min(nr_open.unwrap_or(need))
    };
    let r = libc::rlimit {
        rlim_cur: want_hard.min(need.max(soft)) as libc::rlim_t,
        rlim_max: want_hard as libc::rlim_t,
    };
    // SAFETY: plain system call with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        let e = std::io::Error::last_os_error();
        notes.push(format!(
            "raising the hard RLIMIT_NOFILE {hard} → {want_hard} failed ({e}): needs root (CAP_SYS_RESOURCE)"
        ));
        let r = libc::rlimit {
            rlim_cur: hard as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: as above; raising the soft limit to the hard one is always allowed.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    }
    nofile()
}

// --- Clients ---

/// What the writers send now.
#[derive(Debug, Clone, Copy)]
struct Phase {
    id: u32,
    kind: MsgKind,
    /// Per client; `None`: only heartbeats.
    interval: Option<Duration>,
}

/// State shared by every client.
struct Ctx {
    t0: Instant,
    transport: LoadTransport,
    phase: watch::Sender<Phase>,
    held: AtomicUsize,
    latencies: Mutex<Vec<u32>>,
    join_us: Mutex<Vec<u32>>,
    errors: Mutex<BTreeMap<String, u64>>,
    sources: Vec<IpAddr>,
    next_source: AtomicUsize,
    targets: Vec<SocketAddr>,
    /// The second peer of a room joins the next target.
    cross_node: bool,
    gate: Arc<Semaphore>,
    pad: String,
    heartbeat: Duration,
    drain: Duration,
    stopping: AtomicBool,
    clients: Mutex<Vec<Arc<Client>>>,
}

/// One client's counters and its leave order.
struct Client {
    sent: AtomicU64,
    recv: AtomicU64,
    /// Sends only heartbeats (a pair about to leave lets its messages in flight arrive first).
    muted: AtomicBool,
    quit: watch::Sender<bool>,
}

/// What a client's reader learnt, for its writer.
#[derive(Debug, Clone, Default)]
struct Learnt {
    partner: Option<String>,
    /// (peer id, session token): the POST URL and its bearer token (SSE).
    session: Option<(String, String)>,
}

impl Ctx {
    fn new(c: &Common, sources: Vec<IpAddr>, targets: Vec<SocketAddr>) -> Ctx {
        Ctx {
            t0: Instant::now(),
            transport: c.transport,
            phase: watch::channel(Phase {
                id: 0,
                kind: MsgKind::Signal,
                interval: None,
            })
            .0,
            held: AtomicUsize::new(0),
            latencies: Mutex::new(Vec::new()),
            join_us: Mutex::new(Vec::new()),
            errors: Mutex::new(BTreeMap::new()),
            sources,
            next_source: AtomicUsize::new(0),
            targets,
            cross_node: c.cross_node,
            gate: Arc::new(Semaphore::new(c.connect_concurrency.max(1))),
            pad: "x".repeat(c.payload_bytes),
            // The server's default interval; every client pings that often, as the real clients do.
            heartbeat: Duration::from_secs(10),
            drain: Duration::from_secs_f64(c.drain.max(0.0)),
            stopping: AtomicBool::new(false),
            clients: Mutex::new(Vec::new()),
        }
    }

    fn error(&self, key: impl Into<String>) {
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.into())
            .or_default() += 1;
    }

    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    fn source(&self) -> IpAddr {
        self.sources[self.next_source.fetch_add(1, Ordering::Relaxed) % self.sources.len()]
    }

    fn stop_all(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        for c in self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = c.quit.send(true);
        }
    }

    /// Starts the two clients of a new room on `target`; returns them.
    fn spawn_pair(self: &Arc<Self>, room: String, target: usize) -> (Arc<Client>, Arc<Client>) {
        let mk = || {
            Arc::new(Client {
                sent: AtomicU64::new(0),
                recv: AtomicU64::new(0),
                muted: AtomicBool::new(false),
                quit: watch::channel(false).0,
            })
        };
        let (a, b) = (mk(), mk());
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([a.clone(), b.clone()]);
        let addr = self.targets[target % self.targets.len()];
        let addr_b = if self.cross_node { self.targets[(target + 1) % self.targets.len()] } else { addr };
        let ctx = self.clone();
        let (a2, b2) = (a.clone(), b.clone());
        tokio::spawn(async move {
            // B joins once A is in, so that every room has its two peers in a known order.
            let (in_tx, in_rx) = tokio::sync::oneshot::channel();
            let first = tokio::spawn(client(ctx.clone(), addr, room.clone(), a2, Some(in_tx)));
            if in_rx.await.is_ok() {
                client(ctx, addr_b, room, b2, None).await;
            }
            let _ = first.await;
        });
        (a, b)
    }

    fn message(&self, kind: MsgKind, phase: u32, to: &str) -> String {
        let t = self.now_ns();
        match kind {
            MsgKind::Signal => format!(
                r#"{{"type":"signal","to":"{to}","data":{{"kind":"candidate","candidate":{{"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 9 typ host {pad}","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"{phase}.{t}"}}}}}}"#,
                pad = self.pad
            ),
            MsgKind::Relay => format!(
                r#"{{"type":"relay","to":"{to}","data":{{"p":{phase},"t":{t},"pad":"{}"}}}}"#,
                self.pad
            ),
        }
    }

    /// Reads one server message; returns what the writer needs to learn.
    fn on_message(
        &self,
        me: &Client,
        text: &str,
        learnt: &watch::Sender<Learnt>,
        joined: &mut Option<Instant>,
    ) {
        let Ok(env) = protocol::ServerEnvelope::decode(text) else {
            self.error("bad-server-message");
            return;
        };
        use protocol::ServerMessage as M;
        let stamp = |phase: u32, t: u64| {
            if phase == self.phase.borrow().id && phase != 0 {
                me.recv.fetch_add(1, Ordering::Relaxed);
                let us = self.now_ns().saturating_sub(t) / 1000;
                self.latencies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(us.min(u32::MAX as u64) as u32);
            }
        };
        match env.msg {
            M::Welcome(w) => {
                if let Some(start) = joined.take() {
                    let us = start.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    self.join_us
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(us);
                }
                self.held.fetch_add(1, Ordering::Relaxed);
                learnt.send_modify(|l| {
                    l.partner = w.peers.first().cloned();
                    l.session = Some((w.peer_id.clone(), w.session.token.clone()));
                });
            }
            M::PeerJoined { peer_id } => learnt.send_modify(|l| l.partner = Some(peer_id)),
            M::PeerLeft { .. } => learnt.send_modify(|l| l.partner = None),
            M::Signal {
                data: protocol::SignalData::Candidate { candidate },
                ..
            } => {
                if let Some((p, t)) = candidate
                    .username_fragment
                    .as_deref()
                    .and_then(|u| u.split_once('.'))
                    && let (Ok(p), Ok(t)) = (p.parse(), t.parse())
                {
                    stamp(p, t);
                }
            }
            M::Relay { data, .. } => {
                if let (Some(p), Some(t)) = (
                    data.get("p").and_then(|v| v.as_u64()),
                    data.get("t").and_then(|v| v.as_u64()),
                ) {
                    stamp(p as u32, t);
                }
            }
            M::Error { code, .. } => self.error(format!("error:{}", code.as_str())),
            _ => {}
        }
    }
}

async fn connect_tcp(ctx: &Ctx, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    // Lets the kernel pick the port at connect time by the whole 4-tuple, so one source address can reach
    // several servers with the same ports.
    let one: libc::c_int = 1;
    // SAFETY: a valid option value on a valid socket; failure only means the kernel lacks the option.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    sock.bind(SocketAddr::new(ctx.source(), 0))?;
    let s = sock.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn io_key(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EADDRNOTAVAIL) => "connect:EADDRNOTAVAIL".into(),
        Some(libc::EMFILE) => "connect:EMFILE".into(),
        Some(libc::ECONNREFUSED) => "connect:ECONNREFUSED".into(),
        Some(libc::ECONNRESET) => "connect:ECONNRESET".into(),
        _ => format!("connect:{:?}", e.kind()),
    }
}

/// One client from connect to close; `joined` is told once its welcome arrived.
async fn client(
    ctx: Arc<Ctx>,
    addr: SocketAddr,
    room: String,
    me: Arc<Client>,
    joined: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let r = match ctx.transport {
        LoadTransport::Ws => ws_client(&ctx, addr, &room, &me, joined).await,
        LoadTransport::Sse => sse_client(&ctx, addr, &room, &me, joined).await,
    };
    if let Err(key) = r {
        ctx.error(key);
    }
}

/// When the writer sends next: heartbeat pings, and messages of the current phase once the partner is known.
struct Schedule {
    me: Arc<Client>,
    phase: watch::Receiver<Phase>,
    learnt: watch::Receiver<Learnt>,
    quit: watch::Receiver<bool>,
    ping: tokio::time::Interval,
    send: Option<(u32, tokio::time::Interval)>,
}

/// What the writer must do now.
enum Due {
    Ping,
    Send(MsgKind, u32, String),
    Quit,
}

impl Schedule {
    fn new(ctx: &Ctx, me: &Arc<Client>, learnt: watch::Receiver<Learnt>) -> Schedule {
        let start = tokio::time::Instant::now() + ctx.heartbeat.mul_f64(jitter());
        let mut ping = tokio::time::interval_at(start, ctx.heartbeat);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Schedule {
            me: me.clone(),
            phase: ctx.phase.subscribe(),
            learnt,
            quit: me.quit.subscribe(),
            ping,
            send: None,
        }
    }

    async fn next(&mut self) -> Due {
        loop {
            if *self.quit.borrow() {
                return Due::Quit;
            }
            let ph = *self.phase.borrow_and_update();
            let partner = self.learnt.borrow_and_update().partner.clone();
            match (ph.interval, &partner) {
                (Some(iv), Some(_)) if self.send.as_ref().is_none_or(|(id, _)| *id != ph.id) => {
                    // A random phase per client spreads the sends evenly over the interval.
                    let mut t = tokio::time::interval_at(
                        tokio::time::Instant::now() + iv.mul_f64(jitter()),
                        iv,
                    );
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    self.send = Some((ph.id, t));
                }
                (Some(_), Some(_)) => {}
                _ => self.send = None,
            }
            let send = async {
                match &mut self.send {
                    Some((_, t)) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.quit.changed() => return Due::Quit,
                r = self.phase.changed() => if r.is_err() { return Due::Quit },
                _ = self.learnt.changed() => {}
                _ = self.ping.tick() => return Due::Ping,
                _ = send => {
                    if let Some(to) = partner
                        && !self.me.muted.load(Ordering::Relaxed)
                    {
                        return Due::Send(ph.kind, ph.id, to);
                    }
                }
            }
        }
    }
}

fn jitter() -> f64 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_ne_bytes(b) as f64 / (u32::MAX as f64 + 1.0)
}

async fn ws_client(
    ctx: &Arc<Ctx>,
    addr: SocketAddr,
    room: &str,
    me: &Arc<Client>,
    mut joined: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), String> {
    let permit = ctx
        .gate
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| "closed".to_string())?;
    let started = Instant::now();
    let tcp = connect_tcp(ctx, addr).await.map_err(|e| io_key(&e))?;
    let req = format!("ws://{addr}/v1/rooms/{room}/ws")
        .into_client_request()
        .map_err(|e| format!("connect:{e}"))?;
    // A small read buffer: the bench's own memory is not what is measured, but 20,000 × 128 KiB would be 2.5 GB.
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = match tokio_tungstenite::client_async_with_config(req, tcp, Some(cfg)).await {
        Ok(ok) => ok,
        Err(tungstenite::Error::Http(r)) => return Err(format!("http:{}", r.status().as_u16())),
        Err(e) => return Err(format!("handshake:{e}")),
    };
    let (mut sink, mut stream) = ws.split();
    let learnt = watch::channel(Learnt::default()).0;
    let mut sched = Schedule::new(ctx, me, learnt.subscribe());
    let mut join_start = Some(started);
    let ctx2 = ctx.clone();
    let me2 = me.clone();
    let learnt_tx = learnt.clone();
    let mut permit = Some(permit);
    let reader = async move {
        let mut welcomed = false;
        let end = loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => {
                    ctx2.on_message(&me2, t.as_str(), &learnt_tx, &mut join_start);
                    if !welcomed && learnt_tx.borrow().session.is_some() {
                        welcomed = true;
                        permit.take();
                        if let Some(j) = joined.take() {
                            let _ = j.send(());
                        }
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    break f.map(|f| format!("close:{}", u16::from(f.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(format!("ws:{}", ws_err(&e))),
                None => break Some("dropped".into()),
            }
        };
        if welcomed {
            ctx2.held.fetch_sub(1, Ordering::Relaxed);
        }
        end
    };
    let writer = async {
        loop {
            let frame = match sched.next().await {
                Due::Ping => r#"{"type":"ping"}"#.to_owned(),
                Due::Send(kind, phase, to) => ctx.message(kind, phase, &to),
                Due::Quit => {
                    let _ = sink.send(Message::text(r#"{"type":"leave"}"#)).await;
                    let _ = sink.close().await;
                    return;
                }
            };
            let is_msg = !frame.contains(r#""type":"ping""#);
            if sink.send(Message::text(frame)).await.is_err() {
                return;
            }
            if is_msg {
                me.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    tokio::pin!(writer);
    let reader_end = join_reader(tokio::spawn(reader), writer).await;
    let quitting = *me.quit.borrow();
    match reader_end {
        Some(key) if !quitting && !key.starts_with("close:1000") => Err(key),
        _ => Ok(()),
    }
}

/// The reader's end, also when the writer finishes first (a leave: the server then closes the stream).
async fn join_reader(
    mut reader: tokio::task::JoinHandle<Option<String>>,
    writer: impl std::future::Future<Output = ()>,
) -> Option<String> {
    tokio::select! {
        r = &mut reader => r.unwrap_or(None),
        _ = writer => match tokio::time::timeout(Duration::from_secs(3), &mut reader).await {
            Ok(r) => r.unwrap_or(None),
            Err(_) => {
                reader.abort();
                Some("no-close-after-leave".into())
            }
        },
    }
}

fn ws_err(e: &tungstenite::Error) -> &'static str {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed",
        tungstenite::Error::Io(_) => "io",
        tungstenite::Error::Protocol(_) => "protocol",
        tungstenite::Error::Capacity(_) => "capacity",
        _ => "other",
    }
}

type Http1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http1(ctx: &Ctx, addr: SocketAddr) -> Result<Http1, String> {
    let tcp = connect_tcp(ctx, addr).await.map_err(|e| io_key(&e))?;
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| format!("http:{e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

async fn sse_client(
    ctx: &Arc<Ctx>,
    addr: SocketAddr,
    room: &str,
    me: &Arc<Client>,
    mut joined: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), String> {
    let permit = ctx
        .gate
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| "closed".to_string())?;
    let started = Instant::now();
    let tcp = connect_tcp(ctx, addr).await.map_err(|e| io_key(&e))?;
    let (mut get, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| format!("http:{e}"))?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(format!("/v1/rooms/{room}/sse"))
        .header("host", addr.to_string())
        .header("accept", "text/event-stream")
        .body(Empty::new())
        .map_err(|e| format!("http:{e}"))?;
    let res = get
        .send_request(req)
        .await
        .map_err(|e| format!("http:{e}"))?;
    if res.status() != hyper::StatusCode::OK {
        return Err(format!("http:{}", res.status().as_u16()));
    }
    let mut body = res.into_body();
    let learnt = watch::channel(Learnt::default()).0;
    let mut sched = Schedule::new(ctx, me, learnt.subscribe());
    let mut join_start = Some(started);
    let ctx2 = ctx.clone();
    let me2 = me.clone();
    let learnt_tx = learnt.clone();
    let mut permit = Some(permit);
    let reader = async move {
        let mut buf: Vec<u8> = Vec::new();
        let mut welcomed = false;
        let end = 'outer: loop {
            let frame = match body.frame().await {
                Some(Ok(f)) => f,
                Some(Err(_)) => break Some("sse:body".to_owned()),
                None => break Some("dropped".to_owned()),
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(at) = buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buf.drain(..at + 2).collect();
                let Ok(event) = std::str::from_utf8(&event) else {
                    continue;
                };
                let mut name = None;
                let mut text = String::new();
                for line in event.lines() {
                    if let Some(v) = line.strip_prefix("data: ") {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(v);
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        name = Some(v.to_owned());
                    }
                }
                if name.as_deref() == Some("close") {
                    let code = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| v.get("code")?.as_u64())
                        .unwrap_or(0);
                    break 'outer Some(format!("close:{code}"));
                }
                if text.is_empty() {
                    continue;
                }
                ctx2.on_message(&me2, &text, &learnt_tx, &mut join_start);
                if !welcomed && learnt_tx.borrow().session.is_some() {
                    welcomed = true;
                    permit.take();
                    if let Some(j) = joined.take() {
                        let _ = j.send(());
                    }
                }
            }
        };
        if welcomed {
            ctx2.held.fetch_sub(1, Ordering::Relaxed);
        }
        end
    };
    let mut learnt_rx = learnt.subscribe();
    let writer = async {
        let mut post: Option<Http1> = None;
        let session = match learnt_rx.wait_for(|l| l.session.is_some()).await {
            Ok(l) => l.session.clone(),
            Err(_) => None,
        };
        let Some((peer, token)) = session else { return };
        loop {
            let due = sched.next().await;
            let quit = matches!(due, Due::Quit);
            let (body, is_msg) = match due {
                Due::Ping => (r#"{"type":"ping"}"#.to_owned(), false),
                Due::Send(kind, phase, to) => (ctx.message(kind, phase, &to), true),
                Due::Quit => (r#"{"type":"leave"}"#.to_owned(), false),
            };
            // The server closes a keep-alive connection idle for its header timeout (10 s): reconnect as a browser would.
            for attempt in 0..2 {
                if post.as_ref().is_none_or(|p| p.is_closed()) {
                    match http1(ctx, addr).await {
                        Ok(p) => post = Some(p),
                        Err(e) => {
                            ctx.error(e);
                            break;
                        }
                    }
                }
                let Some(p) = post.as_mut() else { break };
                if p.ready().await.is_err() {
                    post = None;
                    continue;
                }
                let req = hyper::Request::post(format!("/v1/sessions/{peer}"))
                    .header("host", addr.to_string())
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {token}"))
                    .body(Full::new(Bytes::from(body.clone())));
                let Ok(req) = req else { break };
                match p.send_request(req).await {
                    Ok(res) => {
                        let status = res.status();
                        let _ = res.into_body().collect().await;
                        if status.is_success() {
                            if is_msg {
                                me.sent.fetch_add(1, Ordering::Relaxed);
                            }
                        } else {
                            ctx.error(format!("http:{}", status.as_u16()));
                        }
                        break;
                    }
                    // A connection the server closed just as we sent: once more on a new one.
                    Err(e)
                        if attempt == 0
                            && (e.is_closed() || e.is_canceled() || e.is_incomplete_message()) =>
                    {
                        post = None;
                    }
                    Err(_) => {
                        ctx.error("post:io");
                        post = None;
                        break;
                    }
                }
            }
            if quit {
                return;
            }
        }
    };
    tokio::pin!(writer);
    let reader_end = join_reader(tokio::spawn(reader), writer).await;
    conn.abort();
    let quitting = *me.quit.borrow();
    match reader_end {
        Some(key) if !quitting && !key.starts_with("close:1000") => Err(key),
        _ => Ok(()),
    }
}

// --- Scenarios ---

/// Connects `pairs` new pairs (round robin over the targets) and waits until all are in or `limit` passed.
async fn connect_pairs(
    ctx: &Arc<Ctx>,
    pairs: usize,
    first_room: usize,
    limit: Duration,
) -> Vec<(Arc<Client>, Arc<Client>)> {
    let base = ctx.held.load(Ordering::Relaxed);
    let tag = std::process::id();
    let out: Vec<_> = (0..pairs)
        .map(|i| ctx.spawn_pair(format!("load-{tag}-{}", first_room + i), first_room + i))
        .collect();
    let deadline = Instant::now() + limit;
    let mut progress = (Instant::now(), base);
    let mut printed = Instant::now();
    loop {
        let held = ctx.held.load(Ordering::Relaxed);
        if held >= base + 2 * pairs || Instant::now() >= deadline {
            break;
        }
        if held != progress.1 {
            progress = (Instant::now(), held);
        } else if progress.0.elapsed() >= Duration::from_secs(10) {
            // No progress in 10 s: whatever failed is in the errors; go on with what is held.
            eprintln!(
                "  no progress for 10 s at {} / {}",
                held.saturating_sub(base),
                2 * pairs
            );
            break;
        }
        if printed.elapsed() >= Duration::from_secs(2) {
            printed = Instant::now();
            eprintln!("  {} / {} connected", held.saturating_sub(base), 2 * pairs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

fn pct(sorted: &[u32], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let v: Vec<f64> = sorted.iter().map(|&x| f64::from(x)).collect();
    Some(crate::stats::percentile(&v, p))
}

fn take_errors(ctx: &Ctx) -> BTreeMap<String, u64> {
    std::mem::take(&mut *ctx.errors.lock().unwrap_or_else(|p| p.into_inner()))
}

fn join_stats(ctx: &Ctx, row: &mut LoadRow) {
    let mut j = std::mem::take(&mut *ctx.join_us.lock().unwrap_or_else(|p| p.into_inner()));
    j.sort_unstable();
    row.joins = j.len() as u64;
    row.join_p50_ms = pct(&j, 50.0).map(|v| v / 1000.0);
    row.join_p99_ms = pct(&j, 99.0).map(|v| v / 1000.0);
}

async fn idle(
    ctx: &Arc<Ctx>,
    nodes: &Nodes,
    connections: usize,
    hold: f64,
) -> anyhow::Result<Vec<LoadRow>> {
    let pairs = connections / 2;
    let base = nodes.rss_kib();
    eprintln!(
        "idle: connecting {} {} clients …",
        2 * pairs,
        ctx.transport.name()
    );
    let t = Instant::now();
    connect_pairs(ctx, pairs, 0, Duration::from_secs(600)).await;
    eprintln!(
        "  {} held after {:.1} s; holding {hold} s",
        ctx.held.load(Ordering::Relaxed),
        t.elapsed().as_secs_f64()
    );
    let cpu0 = nodes.cpu_s();
    let t_hold = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    let secs = t_hold.elapsed().as_secs_f64();
    let cpu = nodes.cpu_s().zip(cpu0).map(|(a, b)| a - b);
    let held = ctx.held.load(Ordering::Relaxed);
    let rss = nodes.rss_kib();
    let mut row = LoadRow {
        scenario: "idle".into(),
        transport: ctx.transport.name().into(),
        clients: 2 * pairs,
        held,
        server_sockets: nodes.sockets(),
        rss_base_kib: base,
        rss_kib: rss,
        rss_per_conn_kib: rss
            .zip(base)
            .filter(|_| held > 0)
            .map(|(r, b)| r.saturating_sub(b) as f64 / held as f64),
        secs,
        server_cpu_s: cpu,
        server_cores: cpu.map(|c| c / secs),
        ..LoadRow::default()
    };
    join_stats(ctx, &mut row);
    row.errors = take_errors(ctx);
    Ok(vec![row])
}

/// Runs one sending phase on every connected client and measures it.
async fn phase(
    ctx: &Arc<Ctx>,
    nodes: &Nodes,
    id: u32,
    kind: MsgKind,
    rate: f64,
    secs: f64,
    all: &[(Arc<Client>, Arc<Client>)],
) -> LoadRow {
    for (a, b) in all {
        for c in [a, b] {
            c.sent.store(0, Ordering::Relaxed);
            c.recv.store(0, Ordering::Relaxed);
        }
    }
    ctx.latencies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    let clients = ctx.held.load(Ordering::Relaxed).max(1);
    let interval = Duration::from_secs_f64(clients as f64 / rate);
    let cpu0 = nodes.cpu();
    let t = Instant::now();
    ctx.phase.send_replace(Phase {
        id,
        kind,
        interval: Some(interval),
    });
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let sent_secs = t.elapsed().as_secs_f64();
    ctx.phase.send_modify(|p| p.interval = None);
    tokio::time::sleep(ctx.drain).await;
    let wall = t.elapsed().as_secs_f64();
    let cpu = nodes.cpu_since(cpu0);
    let mut row = measure(ctx, nodes, all, "forward", kind, rate, sent_secs);
    row.set_cpu(cpu, wall);
    row
}

fn measure(
    ctx: &Ctx,
    nodes: &Nodes,
    all: &[(Arc<Client>, Arc<Client>)],
    scenario: &str,
    kind: MsgKind,
    rate: f64,
    secs: f64,
) -> LoadRow {
    let (mut sent, mut received, mut lost) = (0u64, 0u64, 0u64);
    for (a, b) in all {
        let (sa, ra, sb, rb) = (
            a.sent.load(Ordering::Relaxed),
            a.recv.load(Ordering::Relaxed),
            b.sent.load(Ordering::Relaxed),
            b.recv.load(Ordering::Relaxed),
        );
        sent += sa + sb;
        received += ra + rb;
        lost += sa.saturating_sub(rb) + sb.saturating_sub(ra);
    }
    let mut lat = std::mem::take(&mut *ctx.latencies.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort_unstable();
    LoadRow {
        scenario: scenario.into(),
        transport: ctx.transport.name().into(),
        kind: kind.name().into(),
        clients: all.len() * 2,
        held: ctx.held.load(Ordering::Relaxed),
        server_sockets: nodes.sockets(),
        rss_kib: nodes.rss_kib(),
        target_rate: rate,
        secs,
        sent,
        received,
        lost,
        rate: received as f64 / secs,
        p50_us: pct(&lat, 50.0),
        p99_us: pct(&lat, 99.0),
        max_us: lat.last().map(|&v| f64::from(v)),
        ..LoadRow::default()
    }
}

async fn forward(
    ctx: &Arc<Ctx>,
    nodes: &Nodes,
    pairs: usize,
    rates: &[f64],
    kinds: &[MsgKind],
    secs: f64,
) -> anyhow::Result<Vec<LoadRow>> {
    anyhow::ensure!(
        rates.iter().all(|&r| r > 0.0 && r.is_finite()),
        "--msg-rate must be positive"
    );
    let base = nodes.rss_kib();
    eprintln!(
        "forward: connecting {pairs} {} pairs …",
        ctx.transport.name()
    );
    let all = connect_pairs(ctx, pairs, 0, Duration::from_secs(600)).await;
    let mut setup = LoadRow::default();
    join_stats(ctx, &mut setup);
    let setup_errors = take_errors(ctx);
    let mut rows = Vec::new();
    let mut id = 0;
    for &kind in kinds {
        for &rate in rates {
            id += 1;
            eprintln!("  {} at {rate} msg/s for {secs} s …", kind.name());
            let mut row = phase(ctx, nodes, id, kind, rate, secs, &all).await;
            row.rss_base_kib = base;
            row.rss_per_conn_kib = row
                .rss_kib
                .zip(base)
                .filter(|_| row.held > 0)
                .map(|(r, b)| r.saturating_sub(b) as f64 / row.held as f64);
            row.errors = take_errors(ctx);
            if id == 1 {
                row.joins = setup.joins;
                row.join_p50_ms = setup.join_p50_ms;
                row.join_p99_ms = setup.join_p99_ms;
                for (k, v) in &setup_errors {
                    *row.errors.entry(format!("setup {k}")).or_default() += v;
                }
            }
            eprintln!(
                "    {:.0} msg/s, p99 {} µs, lost {}, {} µs CPU/msg",
                row.rate,
                row.p99_us.map(num).unwrap_or_default(),
                row.lost,
                row.cpu_us_per_msg.map(num).unwrap_or_default()
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

#[allow(clippy::too_many_arguments)]
async fn churn_run(
    ctx: &Arc<Ctx>,
    nodes: &Nodes,
    pairs: usize,
    churn: f64,
    rate: f64,
    kind: MsgKind,
    secs: f64,
) -> anyhow::Result<Vec<LoadRow>> {
    if !(churn > 0.0 && rate > 0.0) {
        bail!("--churn and --msg-rate must be positive");
    }
    let base = nodes.rss_kib();
    eprintln!("churn: connecting {pairs} {} pairs …", ctx.transport.name());
    let mut live = connect_pairs(ctx, pairs, 0, Duration::from_secs(600)).await;
    let rss_start = nodes.rss_kib();
    ctx.join_us
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    let setup_errors = take_errors(ctx);
    ctx.latencies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    let interval = Duration::from_secs_f64((2 * pairs) as f64 / rate);
    let cpu0 = nodes.cpu();
    let t = Instant::now();
    ctx.phase.send_replace(Phase {
        id: 1,
        kind,
        interval: Some(interval),
    });
    // Pairs that left keep their counters for the loss count.
    let mut gone: Vec<(Arc<Client>, Arc<Client>)> = Vec::new();
    let every = Duration::from_secs_f64(2.0 / churn);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut next_room = pairs;
    let mut leaves = 0u64;
    let stop = t + Duration::from_secs_f64(secs);
    while Instant::now() < stop {
        tick.tick().await;
        // The oldest pair leaves (both peers send `leave`), a new one joins in a new room.
        if !live.is_empty() {
            let (a, b) = live.remove(0);
            a.muted.store(true, Ordering::Relaxed);
            b.muted.store(true, Ordering::Relaxed);
            let (a2, b2) = (a.clone(), b.clone());
            let drain = ctx.drain;
            tokio::spawn(async move {
                tokio::time::sleep(drain.min(Duration::from_millis(500))).await;
                let _ = a2.quit.send(true);
                let _ = b2.quit.send(true);
            });
            leaves += 2;
            gone.push((a, b));
        }
        live.push(connect_new_pair(ctx, next_room));
        next_room += 1;
    }
    let sent_secs = t.elapsed().as_secs_f64();
    ctx.phase.send_modify(|p| p.interval = None);
    tokio::time::sleep(ctx.drain).await;
    let wall = t.elapsed().as_secs_f64();
    let cpu = nodes.cpu_since(cpu0);
    let everyone: Vec<_> = live.iter().chain(gone.iter()).cloned().collect();
    let mut row = measure(ctx, nodes, &everyone, "churn", kind, rate, sent_secs);
    row.set_cpu(cpu, wall);
    row.clients = 2 * pairs;
    row.rss_base_kib = base;
    row.rss_per_conn_kib = row
        .rss_kib
        .zip(base)
        .filter(|_| row.held > 0)
        .map(|(r, b)| r.saturating_sub(b) as f64 / row.held as f64);
    row.leaves = leaves;
    join_stats(ctx, &mut row);
    row.errors = take_errors(ctx);
    for (k, v) in setup_errors {
        *row.errors.entry(format!("setup {k}")).or_default() += v;
    }
    if let (Some(a), Some(b)) = (rss_start, row.rss_kib) {
        eprintln!(
            "  RSS {} MiB after connecting, {} MiB after churn",
            a / 1024,
            b / 1024
        );
    }
    Ok(vec![row])
}

fn connect_new_pair(ctx: &Arc<Ctx>, room: usize) -> (Arc<Client>, Arc<Client>) {
    ctx.spawn_pair(format!("load-{}-{room}", std::process::id()), room)
}
