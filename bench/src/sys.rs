//! What the machine is and what it is doing (Linux /proc; every reader degrades to `None` elsewhere).

use serde::{Deserialize, Serialize};

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// Logical CPUs this process may use.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: Option<String>,
    /// Kernel release.
    pub kernel: Option<String>,
    /// MemTotal, MiB.
    pub mem_mib: Option<u64>,
    /// 1-minute load average when the run started.
    pub load_start: Option<f64>,
    /// 1-minute load average when the run ended.
    pub load_end: Option<f64>,
    /// `rustc` processes running when the run started (other builds share the cores).
    pub rustc_procs_start: Option<usize>,
    /// `debug` or `release`.
    pub profile: String,
}

impl Machine {
    /// Reads everything now (the end-of-run load is filled in later).
    pub fn probe() -> Machine {
        Machine {
            nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu_model: read("/proc/cpuinfo").and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            }),
            kernel: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()),
            mem_mib: read("/proc/meminfo").and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                    .map(|kb| kb / 1024)
            }),
            load_start: load1(),
            load_end: None,
            rustc_procs_start: count_procs("rustc"),
            profile: if cfg!(debug_assertions) { "debug" } else { "release" }.into(),
        }
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The 1-minute load average.
pub fn load1() -> Option<f64> {
    read("/proc/loadavg")?.split_whitespace().next()?.parse().ok()
}

/// Processes whose command name is `name`.
pub fn count_procs(name: &str) -> Option<usize> {
    let dir = std::fs::read_dir("/proc").ok()?;
    Some(
        dir.filter_map(Result::ok)
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
            .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))
            .count(),
    )
}

/// User + system CPU seconds of this process so far (all threads; 10 ms resolution at the usual 100 Hz).
pub fn process_cpu_secs() -> Option<f64> {
    let stat = read("/proc/self/stat")?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / CLK_TCK)
}

/// `sysconf(_SC_CLK_TCK)` is 100 on every mainstream Linux configuration.
const CLK_TCK: f64 = 100.0;

/// `Udp: RcvbufErrors` from /proc/net/snmp (this network namespace): datagrams dropped on full socket buffers.
pub fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = read("/proc/net/snmp")?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn probes_do_not_panic() {
        let m = super::Machine::probe();
        assert!(m.nproc >= 1);
        if cfg!(target_os = "linux") {
            assert!(super::process_cpu_secs().is_some());
        }
    }
}
