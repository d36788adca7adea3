//! `bench`: how fast messages move between two endpoints, per technique, on this machine.
//!
//! `bench` (= `bench all`) measures, in one run and one table: a raw TCP loopback baseline; direct WebRTC
//! data channels between two native `peer::Peer`s (reliable and unreliable) that meet through a signaling
//! server started in-process; and messages relayed by a signaling server (a child process, so its cost can be
//! read apart) over WebSocket, SSE + POST, long polling and short polling. Per message size: setup time,
//! echo RTT and one-way latency, throughput, and for relayed rows the server's CPU, bytes and HTTP requests
//! per delivered message. `bench p2p` and `bench relay` run one half. See docs/benchmarks.md.

mod harness;
mod link;
mod report;
mod server;
mod stats;
mod sys;
mod technique;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use harness::Params;
use report::{Report, Row, TechniqueInfo};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use technique::Technique;

#[derive(Debug, Parser)]
#[command(name = "bench", about = "Message latency, throughput and server cost per technique (TCP, P2P data channels, server relay)")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every technique: TCP baseline, P2P data channels, server relay on every transport (the default).
    All,
    /// Direct data channels (reliable, unreliable) vs a raw TCP loopback baseline.
    P2p,
    /// Server-relayed messages over WebSocket, SSE, long polling and short polling (1 s, 250 ms).
    Relay,
    /// The signaling server of the relayed techniques (run by the benchmark itself as a child process).
    #[command(hide = true)]
    ServeSignaling,
    /// Combines the `--json` files of several runs into one table (median and range per row).
    Merge {
        /// JSON reports written by `--json`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Args)]
struct Opts {
    /// Small counts: finishes in under 2 minutes (release build, 2 cores).
    #[arg(long, global = true)]
    quick: bool,
    /// Minimal counts, for the smoke test: only proves every row can be measured.
    #[arg(long, global = true)]
    tiny: bool,
    /// Also write the results as JSON here.
    #[arg(long, global = true, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Fresh links per technique for the setup time.
    #[arg(long, global = true)]
    joins: Option<usize>,
    /// Timed round trips per row.
    #[arg(long, global = true)]
    rounds: Option<usize>,
    /// Untimed round trips before them.
    #[arg(long, global = true)]
    warmup_rounds: Option<usize>,
    /// Throughput window per row (s).
    #[arg(long, global = true)]
    secs: Option<f64>,
    /// Untimed sending before the window (s).
    #[arg(long, global = true)]
    warmup_secs: Option<f64>,
    /// Message sizes in bytes, comma-separated (each ≥ 8). Default: 1024, 65535 (largest single-frame binary
    /// message of peer::framing), 65536 (64 KiB: two frames on a reliable channel).
    #[arg(long, global = true, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Only these techniques (comma-separated names as in the table).
    #[arg(long, global = true, value_delimiter = ',')]
    only: Option<Vec<String>>,
}

impl Opts {
    fn mode(&self) -> &'static str {
        if self.tiny {
            "tiny"
        } else if self.quick {
            "quick"
        } else {
            "full"
        }
    }

    fn params(&self) -> anyhow::Result<Params> {
        let mut p = match self.mode() {
            "tiny" => Params {
                joins: 1,
                rtt_warmup: 3,
                rtt_rounds: 20,
                rtt_timeout_ms: 500,
                tput_warmup_s: 0.05,
                tput_secs: 0.2,
                sizes: Vec::new(),
            },
            "quick" => Params {
                // Odd and ≥ 5: about one join in ten hits a ~205 ms timer stall, which must not become the median.
                joins: 5,
                rtt_warmup: 20,
                rtt_rounds: 200,
                rtt_timeout_ms: 500,
                tput_warmup_s: 0.2,
                tput_secs: 1.0,
                sizes: Vec::new(),
            },
            _ => Params {
                joins: 10,
                rtt_warmup: 100,
                rtt_rounds: 1000,
                rtt_timeout_ms: 500,
                tput_warmup_s: 0.5,
                tput_secs: 3.0,
                sizes: Vec::new(),
            },
        };
        p.sizes = self.sizes.clone().unwrap_or_else(|| vec![1024, peer::framing::MAX_FRAME - 1, 64 * 1024]);
        if let Some(v) = self.joins {
            p.joins = v;
        }
        if let Some(v) = self.rounds {
            p.rtt_rounds = v;
        }
        if let Some(v) = self.warmup_rounds {
            p.rtt_warmup = v;
        }
        if let Some(v) = self.secs {
            p.tput_secs = v;
        }
        if let Some(v) = self.warmup_secs {
            p.tput_warmup_s = v;
        }
        anyhow::ensure!(p.sizes.iter().all(|&s| s >= 8), "every size must be at least 8 bytes (the sequence number)");
        anyhow::ensure!(p.joins >= 1 && p.rtt_rounds >= 1, "--joins and --rounds must be at least 1");
        anyhow::ensure!(p.tput_secs > 0.0 && p.tput_warmup_s >= 0.0, "--secs must be positive");
        Ok(p)
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // webrtc-rs warns about routine setup steps on every connection; keep stderr readable.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error,bench=warn,peer=warn,signaling=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(Cmd::ServeSignaling) = &cli.cmd {
        return server::serve_main();
    }
    if let Some(Cmd::Merge { files }) = &cli.cmd {
        let mut reports = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            reports.push(serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?);
        }
        print!("{}", report::merged(&reports));
        return Ok(());
    }
    // Both ends of every link run on this one runtime: one worker per core, as a real app would.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let ok = rt.block_on(run(cli))?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let machine = sys::Machine::probe();
    let command = std::env::args().map(|a| shell_quote(&a)).collect::<Vec<_>>().join(" ");
    let params = cli.opts.params()?;
    let started = Instant::now();
    let started_unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let suite = match cli.cmd.unwrap_or(Cmd::All) {
        Cmd::All => "all",
        Cmd::P2p => "p2p",
        Cmd::Relay => "relay",
        Cmd::Merge { .. } | Cmd::ServeSignaling => unreachable!("handled in main"),
    };

    // The signaling server, in-process on an ephemeral loopback port.
    let server = signaling::Server::bind(signaling::Config::with_listen("127.0.0.1:0".parse()?))
        .await
        .context("starting the signaling server")?;
    let env = technique::Env::new(format!("http://{}", server.local_addr()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    // The relays' server: a child process (this binary), so its CPU time and writes are its own.
    let relay_server = if suite == "p2p" { None } else { Some(Arc::new(server::ServerProc::start().await?)) };
    let mut techniques = if suite == "relay" { Vec::new() } else { technique::p2p_suite(&env) };
    if let Some(rs) = &relay_server {
        techniques.extend(technique::relay_suite(&env, rs));
    }
    if let Some(only) = &cli.opts.only {
        let known: Vec<&str> = techniques.iter().map(|t| t.name()).collect();
        for name in only {
            anyhow::ensure!(known.contains(&name.as_str()), "unknown technique {name:?}; known: {known:?}");
        }
        techniques.retain(|t| only.iter().any(|n| n == t.name()));
    }
    eprintln!("bench {suite} ({} mode): {}", cli.opts.mode(), command);

    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut ok = true;
    for tech in &techniques {
        let tech: &dyn Technique = tech.as_ref();
        let params = scaled(tech, &params, cli.opts.mode());
        eprint!("{}: setup ×{} … ", tech.name(), params.joins);
        let setup = harness::setup(tech, &params).await;
        let (setup_ms, setup_err) = match setup {
            Ok(s) => {
                eprintln!("median {:.1} ms", s.median);
                (Some(s), None)
            }
            Err(e) => {
                eprintln!("FAILED: {e:#}");
                (None, Some(format!("setup: {e:#}")))
            }
        };
        for &size in &params.sizes {
            if let Some(max) = tech.max_message().filter(|&m| size > m) {
                skipped.push((tech.name().to_owned(), size, format!("largest message is {max} B: this channel cannot chunk")));
                continue;
            }
            let mut row = Row {
                technique: tech.name().to_owned(),
                size,
                frames: tech.frames(size),
                setup_ms: setup_ms.clone(),
                rtt: None,
                throughput: None,
                errors: setup_err.iter().cloned().collect(),
            };
            eprint!("{} {size} B: rtt … ", tech.name());
            match harness::rtt(tech, size, &params).await {
                Ok(r) => {
                    eprint!("p50 {:.0} µs; throughput … ", r.p50_us);
                    row.rtt = Some(r);
                }
                Err(e) => {
                    eprint!("FAILED ({e:#}); throughput … ");
                    row.errors.push(format!("rtt: {e:#}"));
                }
            }
            match harness::throughput(tech, size, &params).await {
                Ok(t) => {
                    eprintln!("{:.1} MB/s", t.mb_per_s);
                    row.throughput = Some(t);
                }
                Err(e) => {
                    eprintln!("FAILED ({e:#})");
                    row.errors.push(format!("throughput: {e:#}"));
                }
            }
            ok &= row.errors.is_empty();
            rows.push(row);
        }
    }

    let _ = stop.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server_task).await;
    drop(relay_server);

    let mut machine = machine;
    machine.load_end = sys::load1();
    let report = Report {
        format: 1,
        suite: suite.into(),
        mode: cli.opts.mode().into(),
        command,
        started_unix,
        elapsed_s: started.elapsed().as_secs_f64(),
        machine,
        params: params.clone(),
        techniques: techniques
            .iter()
            .map(|t| TechniqueInfo {
                name: t.name().into(),
                description: t.description().into(),
                setup_means: t.setup_means().into(),
                max_message: t.max_message(),
                counts: t.poll_interval().map(|_| {
                    let q = scaled(t.as_ref(), &params, cli.opts.mode());
                    format!(
                        "{} joins, {} + {} echoes (lost after {} ms), {} s window, sizes {:?}",
                        q.joins, q.rtt_warmup, q.rtt_rounds, q.rtt_timeout_ms, q.tput_secs, q.sizes
                    )
                }),
            })
            .collect(),
        skipped,
        rows,
    };
    print!("{}", report.markdown());
    if let Some(path) = &cli.opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(ok)
}

/// The counts for one technique: a technique that delivers on a poll timer (short polling) gets fewer round
/// trips, more time per round trip, a throughput window of at least two polls, and in `--tiny` mode only the
/// first message size, so that every row fits the run's time budget.
fn scaled(tech: &dyn Technique, p: &Params, mode: &str) -> Params {
    let Some(interval) = tech.poll_interval() else { return p.clone() };
    let mut q = p.clone();
    let (rtt_budget, joins) = match mode {
        "tiny" => (Duration::from_millis(500), 1),
        "quick" => (Duration::from_millis(4500), 3),
        _ => (Duration::from_secs(20), p.joins),
    };
    // A round trip waits for about one poll interval (half of one on each side, on average), after a random
    // pause of half of one on average (see `harness::rtt`).
    let rounds = (rtt_budget.as_secs_f64() / (1.5 * interval.as_secs_f64())).floor() as usize;
    q.joins = q.joins.min(joins);
    q.rtt_warmup = q.rtt_warmup.min(if mode == "tiny" { 0 } else { 1 });
    q.rtt_rounds = q.rtt_rounds.min(rounds.max(if mode == "tiny" { 1 } else { 2 }));
    q.rtt_timeout_ms = q.rtt_timeout_ms.max(4 * interval.as_millis() as u64 + 1000);
    if mode != "tiny" {
        q.tput_secs = q.tput_secs.max(2.0 * interval.as_secs_f64());
    } else {
        q.sizes.truncate(1);
    }
    q
}

/// Quotes an argument for display only when the shell would need it.
fn shell_quote(a: &str) -> String {
    if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=,:@+".contains(&b)) {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}
