//! The results: one Markdown table on stdout, the same data as JSON.

use crate::harness::{Params, Rtt, Throughput};
use crate::stats::Spread;
use crate::sys::Machine;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// One technique × message size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Technique name.
    pub technique: String,
    /// Payload bytes per message.
    pub size: usize,
    /// Transport frames per message.
    pub frames: usize,
    /// Setup time of the technique (ms; the same for every size of a technique).
    pub setup_ms: Option<Spread>,
    /// Echo round trips.
    pub rtt: Option<Rtt>,
    /// One-way throughput.
    pub throughput: Option<Throughput>,
    /// Errors, if a phase failed.
    pub errors: Vec<String>,
}

/// A technique and what it means, for the notes under the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TechniqueInfo {
    /// Name.
    pub name: String,
    /// What it is.
    pub description: String,
    /// What its setup time spans.
    pub setup_means: String,
    /// Largest message, if limited.
    pub max_message: Option<usize>,
    /// Counts of its own when they differ from the run's (short polling), in words.
    #[serde(default)]
    pub counts: Option<String>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The benchmark's version of this format.
    pub format: u32,
    /// `p2p`, ...
    pub suite: String,
    /// `full`, `quick` or `tiny`.
    pub mode: String,
    /// The command line.
    pub command: String,
    /// Seconds since the Unix epoch at the start.
    pub started_unix: u64,
    /// Wall time of the whole run (s).
    pub elapsed_s: f64,
    /// The machine.
    pub machine: Machine,
    /// What was measured.
    pub params: Params,
    /// The techniques.
    pub techniques: Vec<TechniqueInfo>,
    /// Sizes a technique cannot carry (technique, size, why).
    pub skipped: Vec<(String, usize, String)>,
    /// The table.
    pub rows: Vec<Row>,
}

fn num(v: f64) -> String {
    if v >= 100.0 {
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
fn int(v: u64) -> String {
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

/// The header of the table (also what the smoke test looks for).
pub const HEADER: &str = "| technique | msg bytes | frames/msg | setup ms median (min–max) | RTT p50 µs | RTT p99 µs | one-way p50 (p99) µs | RTT lost | MB/s | msg/s | loss % | CPU cores | send stalled % (max ms) | UDP drops |";

/// The header of the server-cost table (relayed rows).
pub const COST_HEADER: &str = "| technique | msg bytes | delivered | server CPU µs/msg | server CPU cores | server bytes in/msg | server bytes out/msg | (in + out) / payload | HTTP requests/msg |";

impl Report {
    /// The Markdown table alone.
    pub fn table(&self) -> String {
        let mut s = String::new();
        writeln!(s, "{HEADER}").unwrap();
        writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|").unwrap();
        for r in &self.rows {
            let setup = opt(r.setup_ms.as_ref(), |s| format!("{} ({}–{})", num(s.median), num(s.min), num(s.max)));
            let (p50, p99, lost) = match &r.rtt {
                Some(x) => (num(x.p50_us), num(x.p99_us), x.lost.to_string()),
                None => ("–".into(), "–".into(), "–".into()),
            };
            let one_way = match r.rtt.as_ref().map(|x| (x.one_way_p50_us, x.one_way_p99_us)) {
                Some((Some(a), Some(b))) => format!("{} ({})", num(a), num(b)),
                _ => "–".into(),
            };
            let t = r.throughput.as_ref();
            writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.technique,
                int(r.size as u64),
                r.frames,
                setup,
                p50,
                p99,
                one_way,
                lost,
                opt(t, |t| num(t.mb_per_s)),
                opt(t, |t| int(t.msg_per_s.round() as u64)),
                opt(t, |t| format!("{:.2}", t.loss_pct)),
                opt(t.and_then(|t| t.cpu_cores), |c| format!("{c:.2}")),
                opt(t, |t| format!("{:.1} ({})", t.send_stalled_pct, num(t.send_max_ms))),
                opt(t.and_then(|t| t.udp_rcvbuf_errors), |u| u.to_string()),
            )
            .unwrap();
        }
        s
    }

    /// The server-cost table of the rows that went through the server process (empty if none did).
    pub fn cost_table(&self) -> String {
        let mut s = String::new();
        let rows: Vec<_> =
            self.rows.iter().filter_map(|r| Some((r, r.throughput.as_ref()?.server.as_ref()?))).collect();
        if rows.is_empty() {
            return s;
        }
        writeln!(s, "{COST_HEADER}").unwrap();
        writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|--:|").unwrap();
        for (r, c) in rows {
            writeln!(
                s,
                "| {} | {} | {} | {} | {:.2} | {} | {} | {:.2} | {:.3} |",
                r.technique,
                int(r.size as u64),
                int(c.delivered),
                num(c.cpu_us_per_msg),
                c.cpu_cores,
                int(c.bytes_in_per_msg.round() as u64),
                int(c.bytes_out_per_msg.round() as u64),
                (c.bytes_in_per_msg + c.bytes_out_per_msg) / r.size as f64,
                c.requests_per_msg,
            )
            .unwrap();
        }
        s
    }

    /// Everything printed on stdout: machine, command, table, notes.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        writeln!(s, "## bench {} ({} mode)\n", self.suite, self.mode).unwrap();
        writeln!(s, "- command: `{}`", self.command).unwrap();
        writeln!(
            s,
            "- machine: {} × {}, {} MiB RAM, kernel {}; {} build",
            m.nproc,
            m.cpu_model.as_deref().unwrap_or("unknown CPU"),
            opt(m.mem_mib, |v| v.to_string()),
            m.kernel.as_deref().unwrap_or("unknown"),
            m.profile
        )
        .unwrap();
        writeln!(
            s,
            "- load (1 min) at start {} / end {}; rustc processes at start: {}; run took {:.1} s",
            opt(m.load_start, |v| format!("{v:.2}")),
            opt(m.load_end, |v| format!("{v:.2}")),
            opt(m.rustc_procs_start, |v| v.to_string()),
            self.elapsed_s
        )
        .unwrap();
        let p = &self.params;
        writeln!(
            s,
            "- setup: {} fresh links per technique; RTT: {} warm-up + {} timed echoes (lost after {} ms); \
             throughput: {} s warm-up + {} s window\n",
            p.joins, p.rtt_warmup, p.rtt_rounds, p.rtt_timeout_ms, p.tput_warmup_s, p.tput_secs
        )
        .unwrap();
        s.push_str(&self.table());
        s.push('\n');
        for t in &self.techniques {
            writeln!(s, "- **{}**: {}. Setup = {}.", t.name, t.description, t.setup_means).unwrap();
            if let Some(c) = &t.counts {
                writeln!(s, "  Its own counts (it delivers on a poll timer): {c}.").unwrap();
            }
        }
        for (t, size, why) in &self.skipped {
            writeln!(s, "- not measured: {t} with {} B messages ({why}).", int(*size as u64)).unwrap();
        }
        writeln!(
            s,
            "- MB = 10^6 payload bytes, counted by the receiver inside the window; loss % = 1 − received/sent over \
             warm-up + window; CPU cores = process CPU time / window (both ends run in this process); send stalled = share of the sending phase spent in `send` \
             calls of ≥ 1 ms (waiting for buffer space), with the longest one; UDP drops = change in `Udp: RcvbufErrors` during the throughput phase. \
             One-way = A's send → B's receive on the same clock, from the RTT rounds. Relayed messages are base64 in a JSON \
             string, at most 128 in flight per direction."
        )
        .unwrap();
        let cost = self.cost_table();
        if !cost.is_empty() {
            writeln!(s, "\nServer cost over each relayed throughput phase (warm-up + window + drain), per message B received:\n").unwrap();
            s.push_str(&cost);
            writeln!(
                s,
                "\n- The server is a separate process (`bench serve-signaling`: the signaling crate's hub and routes). CPU = its \
                 utime + stime (/proc, 10 ms ticks); bytes = TCP payload bytes received / sent on its sockets \
                 (`TCP_INFO` bytes_received / bytes_acked; headers of TCP/IP not included), so HTTP headers, JSON, base64, \
                 acknowledgements and heartbeats are in; a payload byte relayed once costs ≥ 2 (in and out); HTTP requests = \
                 requests it routed (a WebSocket counts once, at its upgrade, before the phase)."
            )
            .unwrap();
        }
        for r in &self.rows {
            for e in &r.errors {
                writeln!(s, "- ERROR {} {} B: {e}", r.technique, r.size).unwrap();
            }
        }
        s
    }
}


/// Several runs of the same suite side by side: per row, the median across runs with (min–max).
pub fn merged(reports: &[Report]) -> String {
    use crate::stats::median;
    let mut s = String::new();
    let runs = reports.len();
    writeln!(s, "Median across {runs} runs, (min–max) across runs.\n").unwrap();
    for (i, r) in reports.iter().enumerate() {
        let m = &r.machine;
        writeln!(
            s,
            "- run {}: `{}`; load {} → {}, rustc processes {}",
            i + 1,
            r.command,
            opt(m.load_start, |v| format!("{v:.2}")),
            opt(m.load_end, |v| format!("{v:.2}")),
            opt(m.rustc_procs_start, |v| v.to_string()),
        )
        .unwrap();
    }
    s.push('\n');
    writeln!(
        s,
        "| technique | msg bytes | frames/msg | setup ms | RTT p50 µs | RTT p99 µs | RTT lost | MB/s | msg/s | loss % | CPU cores | longest send ms |"
    )
    .unwrap();
    writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|").unwrap();
    let mut keys: Vec<(String, usize, usize)> = Vec::new();
    for r in reports.iter().flat_map(|r| &r.rows) {
        if !keys.iter().any(|(t, z, _)| *t == r.technique && *z == r.size) {
            keys.push((r.technique.clone(), r.size, r.frames));
        }
    }
    for (tech, size, frames) in keys {
        let rows: Vec<&Row> =
            reports.iter().flat_map(|r| &r.rows).filter(|r| r.technique == tech && r.size == size).collect();
        let spread = |vals: Vec<f64>| -> String {
            if vals.is_empty() {
                return "–".into();
            }
            let mut v = vals;
            v.sort_by(f64::total_cmp);
            format!("{} ({}–{})", num(median(&v)), num(v[0]), num(v[v.len() - 1]))
        };
        let med = |vals: Vec<f64>| -> String {
            if vals.is_empty() {
                return "–".into();
            }
            let mut v = vals;
            v.sort_by(f64::total_cmp);
            num(median(&v))
        };
        let med_f = |vals: Vec<f64>| -> f64 {
            let mut v = vals;
            v.sort_by(f64::total_cmp);
            if v.is_empty() { 0.0 } else { median(&v) }
        };
        let rtt: Vec<&Rtt> = rows.iter().filter_map(|r| r.rtt.as_ref()).collect();
        let tp: Vec<&Throughput> = rows.iter().filter_map(|r| r.throughput.as_ref()).collect();
        writeln!(
            s,
            "| {tech} | {} | {frames} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            int(size as u64),
            spread(rows.iter().filter_map(|r| r.setup_ms.as_ref().map(|x| x.median)).collect()),
            spread(rtt.iter().map(|x| x.p50_us).collect()),
            spread(rtt.iter().map(|x| x.p99_us).collect()),
            rtt.iter().map(|x| x.lost).sum::<usize>(),
            spread(tp.iter().map(|x| x.mb_per_s).collect()),
            int(med_f(tp.iter().map(|x| x.msg_per_s).collect()).round() as u64),
            spread(tp.iter().map(|x| x.loss_pct).collect()),
            med(tp.iter().filter_map(|x| x.cpu_cores).collect()),
            spread(tp.iter().map(|x| x.send_max_ms).collect()),
        )
        .unwrap();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands() {
        assert_eq!(super::int(0), "0");
        assert_eq!(super::int(999), "999");
        assert_eq!(super::int(1000), "1,000");
        assert_eq!(super::int(65536), "65,536");
        assert_eq!(super::int(1234567), "1,234,567");
    }
}
