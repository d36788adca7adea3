//! Runs the real binary with minimal counts and checks that every expected row is there with numbers in it,
//! that the JSON parses and merges, and that the charts are written, so the benchmark cannot rot. No timing
//! assertions: this only proves each measurement still runs.
//!
//! Runs where the rest of the suite runs, including a network namespace with only `lo`:
//! `unshare --net -- sh -c 'ip link set lo up && cargo test -p bench --offline'`.

use std::process::Command;

/// Every technique, in table order.
const TECHNIQUES: &[&str] = &[
    "tcp-loopback",
    "p2p-reliable",
    "p2p-unreliable",
    "relay-ws",
    "relay-sse",
    "relay-longpoll",
    "relay-shortpoll-1s",
    "relay-shortpoll-250ms",
];
/// The default sizes, as printed.
const SIZES: &[&str] = &["64", "1,024", "16,384", "65,536"];

/// Rows of the 1 → 1 tables: every technique × size, except that an unreliable channel cannot carry 64 KiB
/// (it cannot chunk) and short polling measures only 1 KiB in `--tiny` mode (each delivery waits for a
/// poll).
fn expected_pairs() -> Vec<(&'static str, &'static str)> {
    let mut v = Vec::new();
    for &t in TECHNIQUES {
        for &s in SIZES {
            if (t == "p2p-unreliable" && s == "65,536") || (t.starts_with("relay-shortpoll") && s != "1,024") {
                continue;
            }
            v.push((t, s));
        }
    }
    v
}

fn is_number(cell: &str) -> bool {
    let first = cell.split_whitespace().next().unwrap_or("");
    first.replace(',', "").parse::<f64>().is_ok_and(f64::is_finite)
}

/// The data rows of the table whose header line starts with `header`.
fn table<'a>(stdout: &'a str, header: &str) -> Vec<Vec<&'a str>> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with(header))
        .skip(2)
        .take_while(|l| l.starts_with("| "))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect()
}

#[test]
fn every_technique_prints_its_rows_with_numbers_json_and_charts() {
    let dir = std::env::temp_dir().join(format!("bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("run.json");
    let svg = dir.join("svg");
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--tiny", "--json"])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(stdout.contains("tiny mode, 1 pass"), "no source line:\n{stdout}");
    assert!(!stdout.contains("ERROR"), "{stdout}");

    // Latency: setup, one-way p50/p90/p99/max, lost, late sends, echo RTT p50/p99 — all numbers, nothing lost
    // (every technique is reliable at 100 msg/s on loopback except p2p-unreliable, which may lose).
    let latency = table(&stdout, "| technique | msg bytes | setup ms | one-way p50");
    let throughput = table(&stdout, "| technique | msg bytes | frames/msg | MB/s");
    let expected = expected_pairs();
    for rows in [&latency, &throughput] {
        assert_eq!(rows.len(), expected.len(), "rows:\n{stdout}");
    }
    for (tech, size) in &expected {
        let row = latency
            .iter()
            .find(|r| r[0] == *tech && r[1] == *size)
            .unwrap_or_else(|| panic!("no latency row for {tech} {size}:\n{stdout}"));
        assert_eq!(row.len(), 11, "row {row:?}");
        for (i, cell) in row.iter().enumerate().skip(2) {
            if i == 7 {
                let (lost, of) = cell.split_once(" / ").unwrap_or_else(|| panic!("lost cell {cell:?}"));
                assert!(is_number(of) && of != "0", "{tech} {size}: nothing expected? {cell:?}");
                if *tech != "p2p-unreliable" {
                    assert_eq!(lost, "0", "{tech} {size} lost messages:\n{stdout}");
                }
                continue;
            }
            assert!(is_number(cell), "{tech} {size}: latency column {i} is {cell:?}:\n{stdout}");
        }
        let row = throughput.iter().find(|r| r[0] == *tech && r[1] == *size).unwrap();
        assert_eq!(row.len(), 10, "row {row:?}");
        // frames, MB/s, msg/s, loss, CPU, stalled, longest send (UDP drops may be unavailable off Linux). A relayed
        // row's tiny window may end while the sender still waits for its first window of messages to arrive (a
        // poll, or 128 × 64 KiB in a debug build): its rates are then 0 and its CPU cores unknown.
        // The same holds for a direct channel whose window fell inside one SCTP retransmission stall (1 s, on a
        // loaded machine; the row then shows it: 0 msg/s and a ~1000 ms longest send, which is a measurement).
        let nothing_delivered = row[4] == "0";
        for (i, cell) in row.iter().enumerate().skip(2).take(7) {
            if i == 6 && (tech.starts_with("relay-") || nothing_delivered) {
                continue;
            }
            assert!(is_number(cell), "{tech} {size}: throughput column {i} is {cell:?}:\n{stdout}");
        }
    }
    // A 64 KiB message is two frames on a reliable channel (chunked by peer::framing), and cannot go unreliable.
    let frames = |t: &str, s: &str| throughput.iter().find(|r| r[0] == t && r[1] == s).unwrap()[2];
    assert_eq!(frames("p2p-reliable", "65,536"), "2");
    assert_eq!(frames("p2p-reliable", "16,384"), "1");
    assert!(stdout.contains("not measured: p2p-unreliable with 65,536 B"), "{stdout}");

    // Fan-out: one row per technique with 2 receivers (`--tiny`), deliveries counted for both.
    let fan = table(&stdout, "| technique | receivers | msg bytes | setup ms");
    assert_eq!(fan.len(), TECHNIQUES.len(), "fan-out rows:\n{stdout}");
    for row in &fan {
        assert_eq!(row[1], "2", "{row:?}");
        assert!(row[7].ends_with(" / 40") || row[7].ends_with(" / 200") || row[7].ends_with(" / 50"), "{row:?}");
        for (i, cell) in row.iter().enumerate().skip(3) {
            if i != 7 {
                assert!(is_number(cell), "fan-out column {i} is {cell:?} in {row:?}");
            }
        }
    }

    // Server cost: relayed rows only, both workloads, bytes counted, ≥ 1 HTTP request per delivery on the HTTP
    // transports for a 1 → 1 relay (the POST), none per message over WebSocket.
    let cost = table(&stdout, "| technique | receivers | msg bytes | workload");
    let relayed_rows = expected.iter().filter(|(t, _)| t.starts_with("relay-")).count()
        + TECHNIQUES.iter().filter(|t| t.starts_with("relay-")).count();
    assert_eq!(cost.len(), 2 * relayed_rows, "server cost table:\n{stdout}");
    for row in &cost {
        assert!(row[0].starts_with("relay-"), "{row:?}");
        for cell in &row[4..] {
            assert!(is_number(cell), "cost row {row:?}:\n{stdout}");
        }
        let bytes_out: f64 = row[8].replace(',', "").parse().unwrap();
        assert!(bytes_out > 0.0, "no bytes counted at the server: {row:?}");
        let requests: f64 = row[10].parse().unwrap();
        if row[0] == "relay-ws" {
            assert_eq!(requests, 0.0, "{row:?}");
        } else if row[1] == "1" {
            assert!(requests >= 1.0, "HTTP transports make at least one request per message (the POST): {row:?}");
        }
    }

    // JSON: the same rows, with raw latency samples; `merge` reads it back and shows median (min–max).
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), expected.len() + TECHNIQUES.len());
    for r in rows {
        let s = &r["samples"][0];
        assert!(s["paced"]["p99_us"].as_f64().is_some(), "{r}");
        assert!(!s["paced"]["samples_us"].as_array().unwrap().is_empty(), "{r}");
        assert!(s["throughput"]["mb_per_s"].as_f64().is_some(), "{r}");
        assert!(s["setup_ms"]["median"].as_f64().is_some(), "{r}");
    }
    assert!(report["sources"][0]["machine"]["nproc"].as_u64().unwrap() >= 1);
    let merged_svg = dir.join("merged-svg");
    let merged = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("merge")
        .arg(&json)
        .arg(&json)
        .arg("--svg")
        .arg(&merged_svg)
        .output()
        .unwrap();
    let merged_out = String::from_utf8_lossy(&merged.stdout);
    assert!(merged.status.success(), "merge failed: {}", String::from_utf8_lossy(&merged.stderr));
    assert!(merged_out.contains("## bench merged: 2 passes"), "{merged_out}");
    // Two identical passes: every cell shows a range.
    let merged_latency = table(&merged_out, "| technique | msg bytes | setup ms | one-way p50");
    assert_eq!(merged_latency.len(), expected.len());
    assert!(merged_latency.iter().all(|r| r[3].contains('(') && r[3].contains('–')), "{merged_out}");

    // A file of another format is refused with a clear message, not misread.
    let old = dir.join("old.json");
    std::fs::write(&old, r#"{"format": 1, "rows": []}"#).unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_bench")).arg("merge").arg(&old).output().unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("old.json"), "{err}");

    // Charts: three SVG files per output directory, each naming every technique it plots.
    for d in [&svg, &merged_svg] {
        for (file, must_name) in [
            ("latency-cdf.svg", TECHNIQUES),
            // A short-polling row's tiny window may see no poll land inside it (0 MB/s: nothing to plot on a log scale).
            ("throughput.svg", &TECHNIQUES[..6]),
            ("fanout-latency.svg", TECHNIQUES),
        ] {
            let text = std::fs::read_to_string(d.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(text.starts_with("<svg"), "{file}");
            for t in must_name {
                assert!(text.contains(t), "{file} lacks {t}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
