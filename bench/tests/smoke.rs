//! Runs the real binary with minimal counts and checks that every expected row is there with numbers in it,
//! so the benchmark cannot rot. No timing assertions: this only proves each measurement still runs.
//!
//! Runs where the rest of the suite runs, including a network namespace with only `lo`:
//! `unshare --net -- sh -c 'ip link set lo up && cargo test -p bench --offline'`.

use std::process::Command;

/// Rows the `p2p` suite must print: (technique, message size as printed).
const EXPECTED: &[(&str, &str)] = &[
    ("tcp-loopback", "1,024"),
    ("tcp-loopback", "65,535"),
    ("tcp-loopback", "65,536"),
    ("p2p-reliable", "1,024"),
    ("p2p-reliable", "65,535"),
    ("p2p-reliable", "65,536"),
    ("p2p-unreliable", "1,024"),
    ("p2p-unreliable", "65,535"),
];

fn is_number(cell: &str) -> bool {
    let first = cell.split_whitespace().next().unwrap_or("");
    first.replace(',', "").parse::<f64>().is_ok_and(f64::is_finite)
}

#[test]
fn p2p_suite_prints_every_row_with_numbers_and_valid_json() {
    let json = std::env::temp_dir().join(format!("bench-smoke-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["p2p", "--tiny", "--json"])
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
        .filter(|l| l.starts_with("| ") && !l.starts_with("| technique"))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    for (tech, size) in EXPECTED {
        let row = rows
            .iter()
            .find(|r| r[0] == *tech && r[1] == *size)
            .unwrap_or_else(|| panic!("no row for {tech} {size}:\n{stdout}"));
        assert_eq!(row.len(), 13, "row {row:?}");
        // frames, setup, RTT p50/p99/lost, MB/s, msg/s, loss %, CPU cores, send stalls: all numeric. (UDP drops
        // may be unavailable outside Linux.)
        for (i, cell) in row.iter().enumerate().skip(2).take(10) {
            assert!(is_number(cell), "{tech} {size}: column {i} is {cell:?}:\n{stdout}");
        }
    }
    assert_eq!(rows.len(), EXPECTED.len(), "unexpected rows:\n{stdout}");
    // A 64 KiB message is two frames on a reliable channel (chunked by peer::framing), and cannot go unreliable.
    let frames = |t: &str, s: &str| rows.iter().find(|r| r[0] == t && r[1] == s).unwrap()[2];
    assert_eq!(frames("p2p-reliable", "65,536"), "2");
    assert_eq!(frames("p2p-reliable", "65,535"), "1");
    assert!(stdout.contains("not measured: p2p-unreliable with 65,536 B"), "{stdout}");

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
