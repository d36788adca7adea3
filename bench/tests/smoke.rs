//! Runs the real binary with minimal counts and checks that every expected row is there with numbers in it,
//! so the benchmark cannot rot. No timing assertions: this only proves each measurement still runs.
//!
//! Runs where the rest of the suite runs, including a network namespace with only `lo`:
//! `unshare --net -- sh -c 'ip link set lo up && cargo test -p bench --offline'`.

use std::process::Command;

/// Rows a whole run must print: (technique, message size as printed). Short polling measures only the first
/// size in `--tiny` mode (each delivery waits for a poll).
const EXPECTED: &[(&str, &str)] = &[
    ("tcp-loopback", "1,024"),
    ("tcp-loopback", "65,535"),
    ("tcp-loopback", "65,536"),
    ("p2p-reliable", "1,024"),
    ("p2p-reliable", "65,535"),
    ("p2p-reliable", "65,536"),
    ("p2p-unreliable", "1,024"),
    ("p2p-unreliable", "65,535"),
    ("relay-ws", "1,024"),
    ("relay-ws", "65,535"),
    ("relay-ws", "65,536"),
    ("relay-sse", "1,024"),
    ("relay-sse", "65,535"),
    ("relay-sse", "65,536"),
    ("relay-longpoll", "1,024"),
    ("relay-longpoll", "65,535"),
    ("relay-longpoll", "65,536"),
    ("relay-shortpoll-1s", "1,024"),
    ("relay-shortpoll-250ms", "1,024"),
];

fn is_number(cell: &str) -> bool {
    let first = cell.split_whitespace().next().unwrap_or("");
    first.replace(',', "").parse::<f64>().is_ok_and(f64::is_finite)
}

#[test]
fn every_technique_prints_its_rows_with_numbers_and_valid_json() {
    let json = std::env::temp_dir().join(format!("bench-smoke-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--tiny", "--json"])
        .arg(&json)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);

    // The header, the machine and the command are printed.
    assert!(stdout.contains("| technique | msg bytes |"), "no table header:\n{stdout}");
    assert!(stdout.contains("- machine: "), "no machine line:\n{stdout}");
    assert!(stdout.contains("- command: `"), "no command line:\n{stdout}");

    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .take_while(|l| !l.starts_with("Server cost"))
        .filter(|l| l.starts_with("| ") && !l.starts_with("| technique"))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    for (tech, size) in EXPECTED {
        let row = rows
            .iter()
            .find(|r| r[0] == *tech && r[1] == *size)
            .unwrap_or_else(|| panic!("no row for {tech} {size}:\n{stdout}"));
        assert_eq!(row.len(), 14, "row {row:?}");
        // frames, setup, RTT p50/p99, one-way, lost, MB/s, msg/s, loss %, CPU cores, send stalls: all numeric (UDP
        // drops may be unavailable outside Linux). A relayed row's tiny window may end while the sender still waits
        // for its first in-flight messages to arrive (a poll, or 128 × 64 KiB in a debug build): its rates may then
        // be 0 and its CPU cores unknown.
        let relayed = tech.starts_with("relay-");
        for (i, cell) in row.iter().enumerate().skip(2).take(11) {
            if relayed && i == 11 {
                continue;
            }
            assert!(is_number(cell), "{tech} {size}: column {i} is {cell:?}:\n{stdout}");
        }
    }
    assert_eq!(rows.len(), EXPECTED.len(), "unexpected rows:\n{stdout}");
    // A 64 KiB message is two frames on a reliable channel (chunked by peer::framing), and cannot go unreliable.
    let frames = |t: &str, s: &str| rows.iter().find(|r| r[0] == t && r[1] == s).unwrap()[2];
    assert_eq!(frames("p2p-reliable", "65,536"), "2");
    assert_eq!(frames("p2p-reliable", "65,535"), "1");
    assert!(stdout.contains("not measured: p2p-unreliable with 65,536 B"), "{stdout}");

    // The server-cost table: one line per relayed row, bytes both ways and requests counted.
    let cost: Vec<Vec<&str>> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("| technique | msg bytes | delivered"))
        .skip(2)
        .take_while(|l| l.starts_with("| "))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    let relayed = EXPECTED.iter().filter(|(t, _)| t.starts_with("relay-")).count();
    assert_eq!(cost.len(), relayed, "server cost table:\n{stdout}");
    for row in &cost {
        for cell in &row[2..] {
            assert!(is_number(cell), "cost row {row:?}:\n{stdout}");
        }
        let bytes_out: f64 = row[6].replace(',', "").parse().unwrap();
        assert!(bytes_out > 0.0, "no bytes counted at the server: {row:?}");
        if row[0] != "relay-ws" {
            let requests: f64 = row[8].parse().unwrap();
            assert!(requests >= 1.0, "HTTP transports make at least one request per message (the POST): {row:?}");
        }
    }

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // `bench merge` (used for docs/benchmarks.md) reads what `--json` wrote.
    let merged = Command::new(env!("CARGO_BIN_EXE_bench")).arg("merge").arg(&json).arg(&json).output().unwrap();
    let merged_out = String::from_utf8_lossy(&merged.stdout);
    assert!(merged.status.success(), "merge failed: {}", String::from_utf8_lossy(&merged.stderr));
    assert!(merged_out.contains("Median across 2 runs"), "{merged_out}");
    for (tech, size) in EXPECTED {
        assert!(merged_out.contains(&format!("| {tech} | {size} |")), "merge lacks {tech} {size}:\n{merged_out}");
    }
    let _ = std::fs::remove_file(&json);
    let json_rows = report["rows"].as_array().unwrap();
    assert_eq!(json_rows.len(), EXPECTED.len());
    for r in json_rows {
        assert!(r["rtt"]["p50_us"].as_f64().is_some(), "{r}");
        assert!(r["throughput"]["mb_per_s"].as_f64().is_some(), "{r}");
        assert!(r["setup_ms"]["median"].as_f64().is_some(), "{r}");
    }
    assert!(report["machine"]["nproc"].as_u64().unwrap() >= 1);
}
