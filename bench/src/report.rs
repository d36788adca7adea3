//! The results: Markdown tables on stdout, the same data as JSON, and (see `chart`) SVG charts.
//!
//! A row is one technique × message size × number of receivers; it holds one [`Sample`] per pass. Every
//! table cell is the median across the row's samples, with (min–max) when there are several: a `--runs K`
//! run and a `merge` of several files are read the same way.

use crate::harness::{Params, Paced, Rtt, ServerCost, Throughput};
use crate::stats::{Spread, median};
use crate::sys::Machine;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// Version of the JSON layout; `merge` refuses other versions.
pub const FORMAT: u32 = 2;

/// One pass's measurements of a row.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Setup times (ms): the technique's fresh joins for 1 → 1 rows, the one fan-out link for 1 → N rows.
    pub setup_ms: Option<Spread>,
    /// Echo round trips (1 → 1 rows).
    pub rtt: Option<Rtt>,
    /// Paced one-way latency.
    pub paced: Option<Paced>,
    /// Unpaced throughput.
    pub throughput: Option<Throughput>,
    /// Errors, if a phase failed.
    pub errors: Vec<String>,
}

/// One technique × message size × receivers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Technique name.
    pub technique: String,
    /// Payload bytes per message.
    pub size: usize,
    /// Receivers (1, or N of a 1 → N fan-out).
    pub receivers: usize,
    /// Transport frames per message.
    pub frames: usize,
    /// One per pass.
    pub samples: Vec<Sample>,
}

/// A technique and what it means, for the notes under the tables.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TechniqueInfo {
    /// Name.
    pub name: String,
    /// What it is.
    pub description: String,
    /// What its setup time spans.
    pub setup_means: String,
    /// How its fan-out reaches N receivers.
    pub fanout_means: String,
    /// Largest message, if limited.
    pub max_message: Option<usize>,
    /// Counts of its own when they differ from the run's (short polling), in words.
    pub counts: Option<String>,
}

/// One invocation of the benchmark that contributed samples.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Source {
    /// The command line.
    pub command: String,
    /// `full`, `quick` or `tiny`.
    pub mode: String,
    /// Passes it made.
    pub runs: usize,
    /// Seconds since the Unix epoch at the start.
    pub started_unix: u64,
    /// Wall time (s).
    pub elapsed_s: f64,
    /// The machine.
    pub machine: Machine,
}

/// A whole report: one invocation, or several merged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// [`FORMAT`].
    pub format: u32,
    /// `all`, `p2p` or `relay`.
    pub suite: String,
    /// Where the samples come from.
    pub sources: Vec<Source>,
    /// What was measured (of the first source).
    pub params: Params,
    /// The techniques.
    pub techniques: Vec<TechniqueInfo>,
    /// Sizes a technique cannot carry (technique, size, why).
    pub skipped: Vec<(String, usize, String)>,
    /// The rows, in measurement order.
    pub rows: Vec<Row>,
}

pub(crate) fn num(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".into())
}

/// Thousands separators for integers.
pub(crate) fn int(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Median of values in any order (None if empty).
pub(crate) fn med(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(median(&v))
}

/// `median (min–max)` across passes, or the value alone for one pass.
fn cell(values: Vec<f64>, fmt: impl Fn(f64) -> String) -> String {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => "–".into(),
        1 => fmt(v[0]),
        _ => format!("{} ({}–{})", fmt(median(&v)), fmt(v[0]), fmt(v[v.len() - 1])),
    }
}

fn n(values: Vec<f64>) -> String {
    cell(values, num)
}

/// Header of the 1 → 1 latency table (the smoke test looks for these).
pub const LATENCY_HEADER: &str = "| technique | msg bytes | setup ms | one-way p50 µs | one-way p90 µs | one-way p99 µs | one-way max µs | lost | late sends | echo RTT p50 µs | echo RTT p99 µs |";
/// Header of the 1 → 1 throughput table.
pub const THROUGHPUT_HEADER: &str = "| technique | msg bytes | frames/msg | MB/s | msg/s | loss % | CPU cores | send stalled % | longest send ms | UDP drops |";
/// Header of the fan-out table.
pub const FANOUT_HEADER: &str = "| technique | receivers | msg bytes | setup ms | one-way p50 µs | one-way p99 µs | one-way max µs | lost | deliveries/s | MB/s delivered | loss % | longest send ms |";
/// Header of the server-cost table.
pub const COST_HEADER: &str = "| technique | receivers | msg bytes | workload | deliveries | server CPU µs/delivery | server CPU cores | bytes in/delivery | bytes out/delivery | (in + out) / payload | HTTP requests/delivery |";

impl Row {
    fn paced(&self) -> impl Iterator<Item = &Paced> {
        self.samples.iter().filter_map(|s| s.paced.as_ref())
    }
    fn rtt(&self) -> impl Iterator<Item = &Rtt> {
        self.samples.iter().filter_map(|s| s.rtt.as_ref())
    }
    fn tput(&self) -> impl Iterator<Item = &Throughput> {
        self.samples.iter().filter_map(|s| s.throughput.as_ref())
    }
    /// Every setup sample of every pass (ms).
    pub fn setup_samples(&self) -> Vec<f64> {
        self.samples.iter().filter_map(|s| s.setup_ms.as_ref()).flat_map(|s| s.samples.iter().copied()).collect()
    }
    /// Median MB/s across passes.
    pub fn mb_per_s(&self) -> Option<f64> {
        med(&self.tput().map(|t| t.mb_per_s).collect::<Vec<_>>())
    }
    /// Median one-way p50 across passes (µs).
    pub fn one_way_p50(&self) -> Option<f64> {
        med(&self.paced().map(|p| p.p50_us).collect::<Vec<_>>())
    }
    /// Every paced delivery's latency of every pass (µs).
    pub fn paced_samples(&self) -> Vec<f64> {
        self.paced().flat_map(|p| p.samples_us.iter().map(|&v| f64::from(v))).collect()
    }
    fn lost(&self) -> String {
        let p: Vec<&Paced> = self.paced().collect();
        if p.is_empty() {
            return "–".into();
        }
        let lost: u64 = p.iter().map(|p| p.expected - p.delivered).sum();
        let expected: u64 = p.iter().map(|p| p.expected).sum();
        format!("{} / {}", int(lost), int(expected))
    }
    /// Setup time: median (min–max) over every join of every pass.
    fn setup_cell(&self) -> String {
        n(self.setup_samples())
    }
}

impl Report {
    /// The 1 → 1 rows.
    pub fn pairs(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|r| r.receivers == 1)
    }
    /// The 1 → N rows.
    pub fn fanouts(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|r| r.receivers > 1)
    }

    /// Latency of the 1 → 1 rows: paced one-way, echo RTT, setup.
    pub fn latency_table(&self) -> String {
        let mut s = String::new();
        writeln!(s, "{LATENCY_HEADER}\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|").unwrap();
        for r in self.pairs() {
            let p: Vec<&Paced> = r.paced().collect();
            let q: Vec<&Rtt> = r.rtt().collect();
            writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.technique,
                int(r.size as u64),
                r.setup_cell(),
                n(p.iter().map(|p| p.p50_us).collect()),
                n(p.iter().map(|p| p.p90_us).collect()),
                n(p.iter().map(|p| p.p99_us).collect()),
                n(p.iter().map(|p| p.max_us).collect()),
                r.lost(),
                if p.is_empty() { "–".into() } else { int(p.iter().map(|p| p.late_sends).sum()) },
                n(q.iter().map(|x| x.p50_us).collect()),
                n(q.iter().map(|x| x.p99_us).collect()),
            )
            .unwrap();
        }
        s
    }

    /// Throughput of the 1 → 1 rows.
    pub fn throughput_table(&self) -> String {
        let mut s = String::new();
        writeln!(s, "{THROUGHPUT_HEADER}\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|").unwrap();
        for r in self.pairs() {
            let t: Vec<&Throughput> = r.tput().collect();
            writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.technique,
                int(r.size as u64),
                r.frames,
                n(t.iter().map(|t| t.mb_per_s).collect()),
                cell(t.iter().map(|t| t.msg_per_s).collect(), |v| int(v.round() as u64)),
                cell(t.iter().map(|t| t.loss_pct).collect(), |v| format!("{v:.2}")),
                cell(t.iter().filter_map(|t| t.cpu_cores).collect(), |v| format!("{v:.2}")),
                cell(t.iter().map(|t| t.send_stalled_pct).collect(), |v| format!("{v:.1}")),
                n(t.iter().map(|t| t.send_max_ms).collect()),
                if t.is_empty() || t.iter().any(|t| t.udp_rcvbuf_errors.is_none()) {
                    "–".into()
                } else {
                    int(t.iter().filter_map(|t| t.udp_rcvbuf_errors).sum())
                },
            )
            .unwrap();
        }
        s
    }

    /// The 1 → N rows (empty if none).
    pub fn fanout_table(&self) -> String {
        let mut s = String::new();
        if self.fanouts().next().is_none() {
            return s;
        }
        writeln!(s, "{FANOUT_HEADER}\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|").unwrap();
        for r in self.fanouts() {
            let p: Vec<&Paced> = r.paced().collect();
            let t: Vec<&Throughput> = r.tput().collect();
            writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.technique,
                r.receivers,
                int(r.size as u64),
                r.setup_cell(),
                n(p.iter().map(|p| p.p50_us).collect()),
                n(p.iter().map(|p| p.p99_us).collect()),
                n(p.iter().map(|p| p.max_us).collect()),
                r.lost(),
                cell(t.iter().map(|t| t.msg_per_s).collect(), |v| int(v.round() as u64)),
                n(t.iter().map(|t| t.mb_per_s).collect()),
                cell(t.iter().map(|t| t.loss_pct).collect(), |v| format!("{v:.2}")),
                n(t.iter().map(|t| t.send_max_ms).collect()),
            )
            .unwrap();
        }
        s
    }

    /// What the server process spent, per relayed row and workload (empty if no row went through it).
    pub fn cost_table(&self) -> String {
        let mut s = String::new();
        let mut lines = Vec::new();
        for r in &self.rows {
            let paced: Vec<&ServerCost> = r.paced().filter_map(|p| p.server.as_ref()).collect();
            let unpaced: Vec<&ServerCost> = r.tput().filter_map(|t| t.server.as_ref()).collect();
            for (workload, costs) in [(format!("paced {} msg/s", num(self.params.paced_rate)), paced), ("unpaced".into(), unpaced)] {
                if costs.is_empty() {
                    continue;
                }
                lines.push(format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.technique,
                    r.receivers,
                    int(r.size as u64),
                    workload,
                    int(costs.iter().map(|c| c.delivered).sum()),
                    n(costs.iter().map(|c| c.cpu_us_per_msg).collect()),
                    cell(costs.iter().map(|c| c.cpu_cores).collect(), |v| format!("{v:.2}")),
                    cell(costs.iter().map(|c| c.bytes_in_per_msg).collect(), |v| int(v.round() as u64)),
                    cell(costs.iter().map(|c| c.bytes_out_per_msg).collect(), |v| int(v.round() as u64)),
                    cell(
                        costs.iter().map(|c| (c.bytes_in_per_msg + c.bytes_out_per_msg) / r.size as f64).collect(),
                        |v| format!("{v:.2}")
                    ),
                    cell(costs.iter().map(|c| c.requests_per_msg).collect(), |v| format!("{v:.3}")),
                ));
            }
        }
        if lines.is_empty() {
            return s;
        }
        writeln!(s, "{COST_HEADER}\n|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|").unwrap();
        for l in lines {
            writeln!(s, "{l}").unwrap();
        }
        s
    }

    /// Everything printed on stdout: where the numbers come from, the tables, what they mean.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let runs: usize = self.sources.iter().map(|x| x.runs).sum();
        writeln!(s, "## bench {}: {} pass{}\n", self.suite, runs, if runs == 1 { "" } else { "es" }).unwrap();
        for src in &self.sources {
            let m = &src.machine;
            writeln!(
                s,
                "- `{}` ({} mode, {} pass{}, took {:.0} s): {} × {}, {} MiB RAM, kernel {}, {} build; load (1 min) {} → {}, \
                 rustc processes at start: {}",
                src.command,
                src.mode,
                src.runs,
                if src.runs == 1 { "" } else { "es" },
                src.elapsed_s,
                m.nproc,
                m.cpu_model.as_deref().unwrap_or("unknown CPU"),
                opt(m.mem_mib, |v| v.to_string()),
                m.kernel.as_deref().unwrap_or("unknown"),
                m.profile,
                opt(m.load_start, |v| format!("{v:.2}")),
                opt(m.load_end, |v| format!("{v:.2}")),
                opt(m.rustc_procs_start, |v| v.to_string()),
            )
            .unwrap();
        }
        let p = &self.params;
        writeln!(
            s,
            "- per pass: {} fresh links per technique for the setup time; then, on one link per message size, {} + {} echo \
             round trips (lost after {} ms), {} s of paced sending at {} msg/s, {} s + {} s of unpaced sending; \
             fan-out to {:?} receivers with {} B messages (paced, then unpaced). Cells: median across passes, (min–max) when \
             there are several.\n",
            p.joins,
            p.rtt_warmup,
            p.rtt_rounds,
            p.rtt_timeout_ms,
            p.paced_secs,
            num(p.paced_rate),
            p.tput_warmup_s,
            p.tput_secs,
            p.fanout,
            p.fanout_size
        )
        .unwrap();
        writeln!(s, "### Latency, 1 → 1\n").unwrap();
        s.push_str(&self.latency_table());
        writeln!(
            s,
            "\n- one-way = A calls `send` → the message arrives, on one monotonic clock (both ends run in this \
             process), while A sends at {} msg/s; a send that waits for buffer space counts its wait; lost = \
             deliveries missing / expected (over all passes); late sends = sends that started ≥ 2 ms after their \
             scheduled instant (held by the previous send's backpressure). Echo RTT = A sends, B echoes, A waits, one \
             message at a time. Setup = see each technique below.\n",
            num(p.paced_rate)
        )
        .unwrap();
        writeln!(s, "### Throughput, 1 → 1 (unpaced)\n").unwrap();
        s.push_str(&self.throughput_table());
        writeln!(
            s,
            "\n- MB = 10^6 payload bytes, counted by the receiver inside the window; loss % = 1 − received/sent over \
             warm-up + window; CPU cores = this process's CPU time / window (both ends run in it); send stalled = share \
             of the sending phase spent in `send` calls of ≥ 1 ms (waiting for buffer space); UDP drops = change in \
             `Udp: RcvbufErrors` during the phase. Relayed messages are base64 in a JSON string, at most 128 in flight \
             per receiver.\n"
        )
        .unwrap();
        let fan = self.fanout_table();
        if !fan.is_empty() {
            writeln!(s, "### Fan-out, 1 → N\n").unwrap();
            s.push_str(&fan);
            writeln!(
                s,
                "\n- One sender, N receivers; each message counts once per receiver (deliveries). one-way and lost as \
                 above, over every delivery; deliveries/s and MB/s delivered = summed over the N receivers inside the \
                 window. Setup = from the first receiver's connect until all N are usable.\n"
            )
            .unwrap();
        }
        let cost = self.cost_table();
        if !cost.is_empty() {
            writeln!(s, "### Server cost (relayed rows)\n").unwrap();
            s.push_str(&cost);
            writeln!(
                s,
                "\n- Over each phase, per delivery. The server is a separate process (`bench serve-signaling`: the \
                 signaling crate's hub and routes). CPU = its utime + stime (/proc, 10 ms ticks, so paced phases with \
                 few messages are coarse); bytes = TCP payload bytes received / sent on its sockets (`TCP_INFO` \
                 bytes_received / bytes_acked; TCP/IP headers not included), so HTTP headers, JSON, base64, answers \
                 and heartbeats are in; (in + out) / payload ≥ 2 for a 1 → 1 relay (in once, out once); HTTP requests = \
                 requests it routed (a WebSocket counts once, at its upgrade, before the phase). A direct data channel \
                 costs the server nothing per message.\n"
            )
            .unwrap();
        }
        writeln!(s, "### Techniques\n").unwrap();
        for t in &self.techniques {
            writeln!(s, "- **{}**: {}. Setup = {}. Fan-out: {}.", t.name, t.description, t.setup_means, t.fanout_means)
                .unwrap();
            if let Some(c) = &t.counts {
                writeln!(s, "  Its own counts (it delivers on a poll timer): {c}.").unwrap();
            }
        }
        for (t, size, why) in &self.skipped {
            writeln!(s, "- not measured: {t} with {} B messages ({why}).", int(*size as u64)).unwrap();
        }
        for r in &self.rows {
            for e in r.samples.iter().flat_map(|x| &x.errors) {
                writeln!(s, "- ERROR {} {} B × {}: {e}", r.technique, r.size, r.receivers).unwrap();
            }
        }
        s
    }

    /// Several reports as one: their rows' samples side by side (rows matched by technique, size, receivers).
    pub fn merge(reports: Vec<Report>) -> anyhow::Result<Report> {
        let mut it = reports.into_iter();
        let mut out = it.next().ok_or_else(|| anyhow::anyhow!("nothing to merge"))?;
        anyhow::ensure!(out.format == FORMAT, "report format {} (this bench reads {FORMAT}); re-run it", out.format);
        for r in it {
            anyhow::ensure!(r.format == FORMAT, "report format {} (this bench reads {FORMAT}); re-run it", r.format);
            out.sources.extend(r.sources);
            for t in r.techniques {
                if !out.techniques.iter().any(|x| x.name == t.name) {
                    out.techniques.push(t);
                }
            }
            for sk in r.skipped {
                if !out.skipped.contains(&sk) {
                    out.skipped.push(sk);
                }
            }
            for row in r.rows {
                match out
                    .rows
                    .iter_mut()
                    .find(|x| x.technique == row.technique && x.size == row.size && x.receivers == row.receivers)
                {
                    Some(x) => x.samples.extend(row.samples),
                    None => out.rows.push(row),
                }
            }
        }
        if out.sources.len() > 1 {
            out.suite = "merged".into();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(1000), "1,000");
        assert_eq!(int(65536), "65,536");
        assert_eq!(int(1234567), "1,234,567");
    }

    #[test]
    fn cells_show_the_median_and_the_range_across_passes() {
        assert_eq!(n(vec![]), "–");
        assert_eq!(n(vec![5.0]), "5.00");
        assert_eq!(n(vec![300.0, 100.0, 200.0]), "200 (100–300)");
        assert_eq!(n(vec![f64::NAN, 12.0]), "12.0");
    }
}
