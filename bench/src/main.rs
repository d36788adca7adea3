//! `bench`: how fast messages move between two endpoints, per technique, on this machine.
//!
//! `bench` (= `bench all`) measures, in one run: a raw TCP loopback baseline; direct WebRTC data channels
//! between two native `peer::Peer`s (reliable and unreliable) that meet through a signaling server started
//! in-process; and messages relayed by a signaling server (a child process, so its cost can be read apart)
//! over WebSocket, SSE + POST, long polling and short polling. Per message size: setup time, echo RTT, one-way
//! latency under a paced load, unpaced throughput; 1 → N fan-out; for relayed rows the server's CPU, bytes and
//! HTTP requests per delivery. Tables on stdout (median across passes), JSON (`--json`), SVG charts (`--svg`).
//! `bench p2p` and `bench relay` run one half; `bench deflate` measures what WebSocket compression would save
//! on recorded signaling frames; `bench load` puts thousands of WebSocket/SSE clients on the signaling binary.
//! See docs/benchmarks.md.

mod chart;
mod deflate;
mod harness;
mod link;
mod load;
mod report;
mod server;
mod stats;
mod sys;
mod technique;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use harness::Params;
use report::{Report, Row, Sample, Source, TechniqueInfo};
use std::future::Future;
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
    /// What RFC 7692 permessage-deflate would save on the WebSocket frames of a real negotiation (two native
    /// peers; with `--browser`, also two headless Chromium pages on the demo), recorded by a TCP proxy.
    Deflate {
        /// Also capture two Chromium pages (needs `chromium`; run inside a loopback-only namespace).
        #[arg(long)]
        browser: bool,
    },
    /// Thousands of WebSocket or SSE clients in rooms of two against the signaling release binary: connections
    /// held, server RSS per connection, forwarding latency, server CPU per message, errors and losses.
    Load {
        #[command(subcommand)]
        scenario: Box<load::Scenario>,
    },
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
    /// Small counts, one pass: finishes in under 2 minutes (release build, 2 cores).
    #[arg(long, global = true)]
    quick: bool,
    /// Minimal counts, for the smoke test: only proves every row can be measured.
    #[arg(long, global = true)]
    tiny: bool,
    /// Also write the results as JSON here.
    #[arg(long, global = true, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Also write SVG charts (latency CDF, throughput by size, fan-out latency) into this directory.
    #[arg(long, global = true, value_name = "DIR")]
    svg: Option<PathBuf>,
    /// Whole passes over every technique (tables show the median across passes). Default: 3 full, 1 quick.
    #[arg(long, global = true)]
    runs: Option<usize>,
    /// Fresh links per technique for the setup time.
    #[arg(long, global = true)]
    joins: Option<usize>,
    /// Timed echo round trips per row.
    #[arg(long, global = true)]
    rounds: Option<usize>,
    /// Untimed round trips before them.
    #[arg(long, global = true)]
    warmup_rounds: Option<usize>,
    /// Messages per second of the paced latency workload.
    #[arg(long, global = true)]
    rate: Option<f64>,
    /// How long the paced workload sends (s).
    #[arg(long, global = true)]
    paced_secs: Option<f64>,
    /// Unpaced throughput window per row (s).
    #[arg(long, global = true)]
    secs: Option<f64>,
    /// Untimed sending before the window (s).
    #[arg(long, global = true)]
    warmup_secs: Option<f64>,
    /// Message sizes in bytes, comma-separated (each ≥ 8). Default: 64, 1024, 16384, 65536.
    #[arg(long, global = true, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Receivers of the 1 → N fan-out rows, comma-separated (each ≥ 2; 0 alone: no fan-out). Default: 2, 8, 32.
    #[arg(long, global = true, value_delimiter = ',')]
    fanout: Option<Vec<usize>>,
    /// Message size of the fan-out rows (bytes).
    #[arg(long, global = true)]
    fanout_size: Option<usize>,
    /// Only these techniques (comma-separated names as in the tables).
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
        let base = |joins, rtt_warmup, rtt_rounds, paced_secs, tput_warmup_s, tput_secs, fanout: &[usize], runs| Params {
            joins,
            rtt_warmup,
            rtt_rounds,
            rtt_timeout_ms: 500,
            paced_rate: 100.0,
            paced_secs,
            tput_warmup_s,
            tput_secs,
            sizes: vec![64, 1024, 16 * 1024, 64 * 1024],
            fanout: fanout.to_vec(),
            fanout_size: 1024,
            runs,
        };
        let mut p = match self.mode() {
            "tiny" => base(1, 3, 20, 0.2, 0.05, 0.2, &[2], 1),
            // Odd and ≥ 5 joins: about one join in ten hits a ~205 ms timer stall, which must not become the median.
            "quick" => base(5, 20, 200, 0.5, 0.1, 0.5, &[2, 8, 32], 1),
            _ => base(11, 50, 500, 2.0, 0.3, 1.5, &[2, 8, 32], 3),
        };
        if let Some(v) = &self.sizes {
            p.sizes = v.clone();
        }
        if let Some(v) = &self.fanout {
            p.fanout = v.iter().copied().filter(|&n| n != 0).collect();
        }
        macro_rules! set {
            ($($opt:ident => $field:ident),*) => { $(if let Some(v) = self.$opt { p.$field = v; })* };
        }
        set!(joins => joins, rounds => rtt_rounds, warmup_rounds => rtt_warmup, rate => paced_rate,
             paced_secs => paced_secs, secs => tput_secs, warmup_secs => tput_warmup_s, fanout_size => fanout_size,
             runs => runs);
        anyhow::ensure!(p.sizes.iter().chain([&p.fanout_size]).all(|&s| s >= 8), "every size must be at least 8 bytes (the sequence number)");
        anyhow::ensure!(p.joins >= 1 && p.rtt_rounds >= 1 && p.runs >= 1, "--joins, --rounds and --runs must be at least 1");
        anyhow::ensure!(p.fanout.iter().all(|&n| n >= 2), "--fanout: each N must be at least 2 (1 → 1 is the main table)");
        anyhow::ensure!(p.tput_secs > 0.0 && p.tput_warmup_s >= 0.0, "--secs must be positive");
        anyhow::ensure!(p.paced_rate > 0.0 && p.paced_rate <= 100_000.0 && p.paced_secs > 0.0, "--rate must be in (0, 100000] and --paced-secs positive");
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
    if let Some(Cmd::Load { scenario }) = cli.cmd {
        return load::main(*scenario, cli.opts.json);
    }
    if let Some(Cmd::Merge { files }) = &cli.cmd {
        let mut reports = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            reports.push(serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?);
        }
        let merged = Report::merge(reports)?;
        return output(&merged, &cli.opts);
    }
    // Both ends of every link run on this one runtime: one worker per core, as a real app would.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Some(Cmd::Deflate { browser }) = &cli.cmd {
        let command = std::env::args().map(|a| shell_quote(&a)).collect::<Vec<_>>().join(" ");
        let report = rt.block_on(deflate::run(*browser, command))?;
        print!("{}", report.markdown());
        if let Some(path) = &cli.opts.json {
            std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        return Ok(());
    }
    let (report, ok) = rt.block_on(run(cli.cmd.unwrap_or(Cmd::All), &cli.opts))?;
    output(&report, &cli.opts)?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// Prints the tables, writes the JSON and the charts if asked.
fn output(report: &Report, opts: &Opts) -> anyhow::Result<()> {
    print!("{}", report.markdown());
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string(report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(dir) = &opts.svg {
        for f in chart::write_all(report, dir)? {
            eprintln!("wrote {}", f.display());
        }
    }
    Ok(())
}

async fn run(cmd: Cmd, opts: &Opts) -> anyhow::Result<(Report, bool)> {
    let mut machine = sys::Machine::probe();
    let command = std::env::args().map(|a| shell_quote(&a)).collect::<Vec<_>>().join(" ");
    let params = opts.params()?;
    let mode = opts.mode();
    let started = Instant::now();
    let started_unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let suite = match cmd {
        Cmd::All => "all",
        Cmd::P2p => "p2p",
        Cmd::Relay => "relay",
        Cmd::Merge { .. } | Cmd::ServeSignaling | Cmd::Deflate { .. } | Cmd::Load { .. } => {
            unreachable!("handled in main")
        }
    };

    // The signaling server of the P2P rows, in-process on an ephemeral loopback port (only used for setup).
    let mut setup_cfg = signaling::Config::with_listen("127.0.0.1:0".parse()?);
    // Many sessions from one address in a minute: the bench measures techniques, not the join limit.
    setup_cfg.limits = signaling::limits::LimitFlags::unlimited();
    let server = signaling::Server::bind(setup_cfg)
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
    if let Some(only) = &opts.only {
        let known: Vec<&str> = techniques.iter().map(|t| t.name()).collect();
        for name in only {
            anyhow::ensure!(known.contains(&name.as_str()), "unknown technique {name:?}; known: {known:?}");
        }
        techniques.retain(|t| only.iter().any(|n| n == t.name()));
    }
    eprintln!("bench {suite} ({mode} mode, {} pass(es)): {command}", params.runs);

    let mut rows: Vec<Row> = Vec::new();
    let mut skipped = Vec::new();
    let mut ok = true;
    let mut record = |rows: &mut Vec<Row>, tech: &dyn Technique, size: usize, receivers: usize, sample: Sample| {
        ok &= sample.errors.is_empty();
        match rows.iter_mut().find(|r| r.technique == tech.name() && r.size == size && r.receivers == receivers) {
            Some(r) => r.samples.push(sample),
            None => rows.push(Row {
                technique: tech.name().into(),
                size,
                receivers,
                frames: tech.frames(size),
                samples: vec![sample],
            }),
        }
    };
    for pass in 1..=params.runs {
        for tech in &techniques {
            let tech: &dyn Technique = tech.as_ref();
            let q = scaled(tech, &params, mode);
            let pass_note = if params.runs > 1 { format!(" (pass {pass}/{})", params.runs) } else { String::new() };
            eprint!("{}{pass_note}: setup ×{} … ", tech.name(), q.joins);
            let setup_limit = (CONNECT_LIMIT + CLOSE_LIMIT) * q.joins as u32;
            let (setup, setup_err) = match bounded("setup", setup_limit, harness::setup(tech, &q)).await {
                Ok(s) => {
                    eprintln!("median {:.1} ms", s.median);
                    (Some(s), None)
                }
                Err(e) => {
                    eprintln!("FAILED: {e:#}");
                    (None, Some(format!("setup: {e:#}")))
                }
            };
            for &size in &q.sizes {
                if let Some(max) = tech.max_message().filter(|&m| size > m) {
                    let why = format!("largest message is {max} B: this channel cannot chunk");
                    if !skipped.iter().any(|(t, z, _): &(String, usize, String)| t == tech.name() && *z == size) {
                        skipped.push((tech.name().to_owned(), size, why));
                    }
                    continue;
                }
                let mut sample =
                    Sample { setup_ms: setup.clone(), errors: setup_err.iter().cloned().collect(), ..Sample::default() };
                eprint!("{} {size} B: ", tech.name());
                match bounded("connect", CONNECT_LIMIT, tech.connect()).await {
                    Ok(mut link) => {
                        one_to_one(tech, &mut link, size, &q, &mut sample).await;
                        let _ = bounded("close", CLOSE_LIMIT, async { harness::close(link).await; Ok(()) }).await;
                    }
                    Err(e) => sample.errors.push(format!("connect: {e:#}")),
                }
                eprintln!("{}", if sample.errors.is_empty() { "ok" } else { "FAILED" });
                record(&mut rows, tech, size, 1, sample);
            }
            for &n in &q.fanout {
                let size = q.fanout_size;
                let mut sample = Sample::default();
                eprint!("{} 1 → {n}, {size} B: connect … ", tech.name());
                match bounded("connect", CONNECT_LIMIT + Duration::from_secs(2) * n as u32, tech.connect_fanout(n)).await {
                    Ok(mut fan) => {
                        sample.setup_ms = stats::Spread::of(&[fan.setup], 1e3);
                        eprint!("{:.0} ms; ", fan.setup.as_secs_f64() * 1e3);
                        phases(tech, &mut fan.tx, &mut fan.rxs, size, &q, &mut sample).await;
                        let _ = bounded("close", CLOSE_LIMIT, async { harness::close_fan(fan).await; Ok(()) }).await;
                    }
                    Err(e) => sample.errors.push(format!("connect 1 → {n}: {e:#}")),
                }
                eprintln!("{}", if sample.errors.is_empty() { "ok" } else { "FAILED" });
                record(&mut rows, tech, size, n, sample);
            }
        }
    }

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server_task).await;
    drop(relay_server);

    machine.load_end = sys::load1();
    let report = Report {
        format: report::FORMAT,
        suite: suite.into(),
        sources: vec![Source {
            command,
            mode: mode.into(),
            runs: params.runs,
            started_unix,
            elapsed_s: started.elapsed().as_secs_f64(),
            machine,
        }],
        params: params.clone(),
        techniques: techniques
            .iter()
            .map(|t| TechniqueInfo {
                name: t.name().into(),
                description: t.description().into(),
                setup_means: t.setup_means().into(),
                fanout_means: t.fanout_means().into(),
                max_message: t.max_message(),
                counts: t.poll_interval().map(|_| {
                    let q = scaled(t.as_ref(), &params, mode);
                    format!(
                        "{} joins; sizes {:?}; {} + {} echoes (lost after {} ms); {} s paced; {} s window; fan-out {:?}",
                        q.joins, q.sizes, q.rtt_warmup, q.rtt_rounds, q.rtt_timeout_ms, q.paced_secs, q.tput_secs, q.fanout
                    )
                }),
            })
            .collect(),
        skipped,
        rows,
    };
    Ok((report, ok))
}

/// How long a connect may take before it counts as hung (polled transports connect within a few polls).
const CONNECT_LIMIT: Duration = Duration::from_secs(60);
/// How long closing a link may take.
const CLOSE_LIMIT: Duration = Duration::from_secs(15);
/// Added to each phase's own expected length before it counts as hung.
const SLACK: Duration = Duration::from_secs(30);

/// Runs one phase with an upper bound: a phase that hangs becomes an error in the report (naming the phase),
/// never a benchmark that does not end.
async fn bounded<T>(what: &str, limit: Duration, phase: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, phase).await {
        Ok(r) => r,
        Err(_) => {
            eprint!("{what} HUNG; ");
            anyhow::bail!("{what} did not finish within {limit:?}")
        }
    }
}

/// Echo RTT, paced latency and throughput on one 1 → 1 link, each phase's failure recorded and the next tried.
async fn one_to_one(tech: &dyn Technique, link: &mut link::Link, size: usize, q: &Params, sample: &mut Sample) {
    let per_round = Duration::from_millis(q.rtt_timeout_ms) + tech.poll_interval().unwrap_or_default();
    let limit = per_round * (q.rtt_warmup + q.rtt_rounds) as u32 + SLACK;
    match bounded("rtt", limit, harness::rtt(tech, link, size, q)).await {
        Ok(r) => {
            eprint!("rtt p50 {:.0} µs; ", r.p50_us);
            sample.rtt = Some(r);
        }
        Err(e) => sample.errors.push(format!("rtt: {e:#}")),
    }
    // A's own receiver is drained meanwhile: a signaling client whose events nobody reads stops once its queue is
    // full (its server's `pong`s to the confirmation pings an unpaced sender triggers fill it), and then sends
    // nothing more — the relay rows hung on exactly that.
    let drain = link::Drain::start(std::mem::replace(&mut link.a_rx, Box::new(harness::Gone)));
    let mut rxs = vec![std::mem::replace(&mut link.b_rx, Box::new(harness::Gone))];
    phases(tech, &mut link.a_tx, &mut rxs, size, q, sample).await;
    if let Some(rx) = rxs.pop() {
        link.b_rx = rx;
    }
    if let Some(a_rx) = drain.finish().await {
        link.a_rx = a_rx;
    }
}

/// Paced latency, then throughput, from `tx` to every one of `rxs`.
async fn phases(
    tech: &dyn Technique,
    tx: &mut Box<dyn link::MsgTx>,
    rxs: &mut Vec<Box<dyn link::MsgRx>>,
    size: usize,
    q: &Params,
    sample: &mut Sample,
) {
    let limit = Duration::from_secs_f64(q.paced_secs) + harness::drain_limit(tech) + SLACK;
    match bounded("paced", limit, harness::paced(tech, tx, rxs, size, q)).await {
        Ok(p) => {
            eprint!("one-way p50 {:.0} µs; ", p.p50_us);
            sample.paced = Some(p);
        }
        Err(e) => sample.errors.push(format!("paced: {e:#}")),
    }
    let limit = Duration::from_secs_f64(q.tput_warmup_s + q.tput_secs) + harness::drain_limit(tech) * 3 + SLACK;
    match bounded("throughput", limit, harness::throughput(tech, tx, rxs, size, q)).await {
        Ok(t) => {
            eprint!("{:.1} MB/s; ", t.mb_per_s);
            sample.throughput = Some(t);
        }
        Err(e) => sample.errors.push(format!("throughput: {e:#}")),
    }
}

/// The counts for one technique. A technique that delivers on a poll timer (short polling) gets fewer round
/// trips, paced and throughput phases of at least a few polls, and fewer rows — `--tiny`: 1 KiB and the first
/// fan-out; `--quick`: 1 KiB only, no fan-out; full: every size and fan-out — so that every row fits the
/// run's time budget (a delivery waits for a poll, whatever the size).
fn scaled(tech: &dyn Technique, p: &Params, mode: &str) -> Params {
    let Some(interval) = tech.poll_interval() else { return p.clone() };
    let mut q = p.clone();
    let iv = interval.as_secs_f64();
    let (rtt_budget, joins, polls) = match mode {
        "tiny" => (0.5, 1, 1.0),
        "quick" => (4.5, 3, 2.0),
        _ => (10.0, p.joins.min(5), 4.0),
    };
    // A round trip waits for about one poll interval (half of one on each side, on average), after a random
    // pause of half of one on average (see `harness::rtt`).
    let rounds = (rtt_budget / (1.5 * iv)).floor() as usize;
    q.joins = q.joins.min(joins);
    q.rtt_warmup = q.rtt_warmup.min(if mode == "tiny" { 0 } else { 1 });
    q.rtt_rounds = q.rtt_rounds.min(rounds.max(if mode == "tiny" { 1 } else { 2 }));
    q.rtt_timeout_ms = q.rtt_timeout_ms.max(4 * interval.as_millis() as u64 + 1000);
    q.paced_secs = q.paced_secs.max(polls * iv);
    q.tput_secs = q.tput_secs.max(polls * iv);
    // 1 KiB is the size the latency CDF shows.
    let one = if q.sizes.contains(&1024) { 1024 } else { q.sizes[0] };
    match mode {
        "tiny" => {
            q.sizes = vec![one];
            q.fanout.truncate(1);
        }
        "quick" => {
            q.sizes = vec![one];
            q.fanout.clear();
        }
        _ => {}
    }
    q
}

/// Quotes an argument for display only when the shell would need it.
pub(crate) fn shell_quote(a: &str) -> String {
    if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=,:@+".contains(&b)) {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}
