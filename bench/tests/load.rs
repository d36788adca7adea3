//! Runs `bench load forward` on a tiny cluster (a real `redis-server` and three signaling nodes, started by the
//! bench on loopback ports) with every room split across two nodes, and checks that the table has its rows, that
//! every message crossed (none lost, no error) and that the Redis column is filled. No timing assertions.
//!
//! Needs the `signaling` binary next to the bench's (`cargo build --workspace`, which `scripts/test` runs first)
//! and `redis-server` (which `scripts/test` installs).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn a_cross_node_forward_run_loses_nothing_and_reports_redis_cpu() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_bench"));
    let signaling = bench.with_file_name("signaling");
    assert!(
        signaling.is_file(),
        "{} is missing: run `cargo build --workspace` first (scripts/test does)",
        signaling.display()
    );
    let json = std::env::temp_dir().join(format!("bench-load-{}.json", std::process::id()));
    let out = Command::new(&bench)
        .args(["load", "forward", "--pairs", "6", "--msg-rate", "120", "--kind", "signal,relay"])
        .args(["--duration", "1", "--drain", "1", "--nodes", "3", "--redis", "--cross-node", "--json"])
        .arg(&json)
        .output()
        .expect("run bench load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench load failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(stdout.contains("peers of a room on different nodes"), "{stdout}");
    assert!(stdout.contains("--redis-url redis://127.0.0.1:"), "the nodes were not given Redis:\n{stdout}");

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    let _ = std::fs::remove_file(&json);
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "one row per kind:\n{stdout}");
    for row in rows {
        let kind = row["kind"].as_str().unwrap_or("?");
        assert_eq!(row["held"], 12, "{kind}: every client holds a session:\n{stdout}");
        assert!(row["received"].as_u64().unwrap_or(0) > 0, "{kind}: nothing arrived:\n{stdout}");
        assert_eq!(row["lost"], 0, "{kind}: messages lost crossing nodes:\n{stdout}");
        assert_eq!(row["errors"], serde_json::json!({}), "{kind}: errors:\n{stdout}");
        assert!(row["redis_cpu_s"].is_number(), "{kind}: no Redis CPU:\n{stdout}");
        assert!(row["cpu_us_per_msg"].is_number(), "{kind}: no node CPU:\n{stdout}");
    }
}
