//! The signaling server of the relayed techniques, in a child process of its own, so its CPU time and the
//! bytes it writes can be read apart from the clients'.
//!
//! The child is this same binary run as `bench serve-signaling` (hidden): the `signaling` crate's hub and
//! routes, composed as `signaling::Server` composes them, plus a counter of HTTP requests in front of the
//! routes. It prints its URL on stdout, then answers each `stats` line on stdin with one JSON line
//! ([`ServerStats`]) and exits when stdin closes.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use warp::Filter;

/// Longest client message the bench's server accepts: room for a 64 KiB message as base64 inside a `relay`
/// (~87.5 KB). The server's default is 65,536 B.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// Room size limit of the bench's server: a 1 → 32 fan-out is 33 clients in one room (the default is 16).
pub const MAX_PEERS: usize = 64;

/// What the child reports about itself.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ServerStats {
    /// User + system CPU seconds (/proc/self/stat, 10 ms ticks).
    pub cpu_s: f64,
    /// TCP payload bytes sent (and acknowledged) so far, see [`TcpCounters`].
    pub tcp_out: u64,
    /// TCP payload bytes received so far.
    pub tcp_in: u64,
    /// HTTP requests routed (a WebSocket counts once, at its upgrade).
    pub requests: u64,
}

impl ServerStats {
    fn now(requests: u64, tcp: &mut TcpCounters) -> ServerStats {
        let (tcp_out, tcp_in) = tcp.read();
        ServerStats { cpu_s: crate::sys::process_cpu_secs().unwrap_or(f64::NAN), tcp_out, tcp_in, requests }
    }
}

/// Byte counters of this process's TCP sockets that only grow: each reading adds, per socket, what it moved
/// since the previous reading (`tcpi_bytes_acked`, `tcpi_bytes_received`, Linux ≥ 4.2). Keyed by socket inode,
/// so a socket that closes takes away only what it moved since the last reading, not its whole history.
#[derive(Debug, Default)]
struct TcpCounters {
    last: std::collections::HashMap<String, (u64, u64)>,
    out: u64,
    inn: u64,
}

impl TcpCounters {
    fn read(&mut self) -> (u64, u64) {
        let mut now = std::collections::HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            for e in dir.filter_map(Result::ok) {
                let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<libc::c_int>().ok()) else { continue };
                let Ok(link) = std::fs::read_link(e.path()) else { continue };
                let link = link.to_string_lossy().into_owned();
                if !link.starts_with("socket:") {
                    continue;
                }
                // struct tcp_info: tcpi_bytes_acked is the u64 at offset 120, tcpi_bytes_received the one at 128.
                let mut buf = [0u8; 256];
                let mut len = buf.len() as libc::socklen_t;
                // SAFETY: `buf` is writable for `len` bytes; a descriptor that is not a TCP socket just fails.
                let rc = unsafe {
                    libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, buf.as_mut_ptr().cast(), &mut len)
                };
                if rc == 0 && len as usize >= 136 {
                    let at = |o: usize| u64::from_ne_bytes(buf[o..o + 8].try_into().unwrap_or_default());
                    now.insert(link, (at(120), at(128)));
                }
            }
        }
        for (k, (o, i)) in &now {
            let (o0, i0) = self.last.get(k).copied().unwrap_or_default();
            self.out += o.saturating_sub(o0);
            self.inn += i.saturating_sub(i0);
        }
        self.last = now;
        (self.out, self.inn)
    }
}

/// The child's side: serves until stdin closes.
pub fn serve_main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let mut cfg = signaling::Config::with_listen("127.0.0.1:0".parse()?);
        cfg.max_message_bytes = MAX_MESSAGE_BYTES;
        cfg.max_peers = MAX_PEERS;
        cfg.validate()?;
        let hub = Arc::new(signaling::hub::Hub::new(signaling::hub::HubConfig {
            limits: protocol::Limits { max_message_bytes: cfg.max_message_bytes, max_peers: cfg.max_peers },
            heartbeat: protocol::Heartbeat {
                interval_ms: cfg.heartbeat_interval_ms,
                timeout_ms: cfg.heartbeat_timeout_ms,
            },
            outbox: cfg.outbox,
            resume_window: Duration::from_millis(cfg.resume_window_ms),
            // No ICE servers: relayed messages never need them.
            ice_servers: Default::default(),
            // The bench measures the transports: its load must never meet a rate or outbox limit.
            node: signaling::limits::LimitFlags::unlimited(),
            sse_gzip: cfg.sse_gzip,
        }));
        let requests = Arc::new(AtomicU64::new(0));
        let counted = {
            let requests = requests.clone();
            warp::any().map(move || {
                requests.fetch_add(1, Ordering::Relaxed);
            })
        }
        .untuple_one()
        .and(signaling::routes::routes(hub.clone(), signaling::web::WebRoot::Embedded, &cfg.transports));
        let listener = signaling::bind_listener(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let reaper = {
            let hub = hub.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    hub.reap(std::time::Instant::now());
                }
            })
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            warp::serve(counted)
                .incoming(listener)
                .graceful(async move {
                    let _ = stop_rx.await;
                })
                .run(),
        );
        let mut out = tokio::io::stdout();
        out.write_all(format!("http://{addr}\n").as_bytes()).await?;
        out.flush().await?;
        let mut tcp = TcpCounters::default();
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            if line.trim() == "stats" {
                let s = ServerStats::now(requests.load(Ordering::Relaxed), &mut tcp);
                out.write_all((serde_json::to_string(&s)? + "\n").as_bytes()).await?;
                out.flush().await?;
            }
        }
        hub.shutdown();
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
        reaper.abort();
        Ok(())
    })
}

/// The parent's handle on the child; killed when dropped.
#[derive(Debug)]
pub struct ServerProc {
    /// `http://127.0.0.1:port`.
    pub url: String,
    io: tokio::sync::Mutex<(ChildStdin, tokio::io::Lines<BufReader<ChildStdout>>)>,
    _child: Child,
}

impl ServerProc {
    /// Starts `bench serve-signaling` and waits for its URL.
    pub async fn start() -> anyhow::Result<ServerProc> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("serve-signaling")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the signaling child process")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let mut lines = BufReader::new(child.stdout.take().context("child stdout")?).lines();
        let url = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .context("the signaling child did not start in time")??
            .context("the signaling child exited before printing its URL")?;
        Ok(ServerProc { url, io: tokio::sync::Mutex::new((stdin, lines)), _child: child })
    }

    /// Asks the child for its counters.
    pub async fn stats(&self) -> Option<ServerStats> {
        let mut io = self.io.lock().await;
        io.0.write_all(b"stats\n").await.ok()?;
        io.0.flush().await.ok()?;
        let line = tokio::time::timeout(Duration::from_secs(5), io.1.next_line()).await.ok()?.ok()??;
        serde_json::from_str(&line).ok()
    }
}
