//! `bench`: how fast messages move between two endpoints, per technique, on this machine.
//!
//! `bench p2p` (the default) starts a signaling server in-process on 127.0.0.1:0 and measures direct WebRTC
//! data channels between two native `peer::Peer`s (reliable and unreliable) next to a raw TCP loopback
//! baseline: setup time, echo RTT p50/p99 and one-way throughput, per message size. See docs/benchmarks.md.

mod harness;
mod link;
mod report;
mod stats;
mod sys;
mod technique;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use harness::Params;
use report::{Report, Row, TechniqueInfo};
use std::path::PathBuf;
use std::time::Instant;
use technique::Technique;

#[derive(Debug, Parser)]
#[command(name = "bench", about = "Message latency and throughput per technique (P2P data channels vs raw TCP)")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Direct data channels (reliable, unreliable) vs a raw TCP loopback baseline (the default).
    P2p,
    /// Combines the `--json` files of several runs into one table (median and range per row).
    Merge {
        /// JSON reports written by `--json`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Args)]
struct Opts {
    /// Small counts: finishes in well under 30 s (release build, 2 cores).
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
    let suite = match cli.cmd.unwrap_or(Cmd::P2p) {
        Cmd::P2p => "p2p",
        Cmd::Merge { .. } => unreachable!("handled in main"),
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

    let mut techniques = technique::p2p_suite(&env);
    if let Some(only) = &cli.opts.only {
        let known: Vec<&str> = technique::all(&env).iter().map(|t| t.name()).collect();
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
        params,
        techniques: techniques
            .iter()
            .map(|t| TechniqueInfo {
                name: t.name().into(),
                description: t.description().into(),
                setup_means: t.setup_means().into(),
                max_message: t.max_message(),
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

/// Quotes an argument for display only when the shell would need it.
fn shell_quote(a: &str) -> String {
    if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=,:@+".contains(&b)) {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}
