//! The fuzz targets' inputs on stable, in the normal test command: every seed in `fuzz/seeds/<target>/`, every
//! file of a local `fuzz/corpus/<target>/` (what `cargo fuzz run` grew, when present), and a fixed number of
//! deterministic mutations of the seeds (bit flips, truncations, splices, CR/LF/NUL insertions), through the
//! same `signaling::fuzzing` functions the `cargo fuzz` targets call. See docs/fuzzing.md.

use std::path::{Path, PathBuf};
use std::time::Instant;

/// Mutations per target: a few thousand in all, a few seconds in a debug build. The edge's inputs cost the
/// most (each waits briefly for answers that may still come).
const MUTATIONS: usize = 1500;
const EDGE_MUTATIONS: usize = 500;

/// Corpus files replayed per target at most (a long run's corpus can hold thousands).
const MAX_CORPUS: usize = 2000;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path, max: usize) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    paths.sort();
    paths.truncate(max);
    paths.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

/// xorshift64*: the same mutations on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// One to four edits of `seed`, spliced with `other` sometimes.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(8) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => out.truncate(at),
            2 => {
                let from = rng.below(other.len() + 1);
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            3 => {
                let piece: &[u8] = [&b"\r\n"[..], b"\n", b"\r", b"\0", b"\r\n\r\n"][rng.below(5)];
                out.splice(at..at, piece.iter().copied());
            }
            4 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = [0x00, 0xff, b'"', b'{', b'}', b':', b' ', b'%', 0x7f, 0x80][rng.below(10)];
            }
            5 if at < out.len() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at..end);
            }
            6 if at < out.len() => {
                // Repeat a piece (duplicate headers, nested JSON, several requests).
                let end = (at + 1 + rng.below(64)).min(out.len());
                let piece = out[at..end].to_vec();
                out.splice(at..at, piece);
            }
            _ => {
                let digits = ["0", "-1", "18446744073709551616", "4294967295", "99999999999999999999999", "1e999"];
                out.splice(at..at, digits[rng.below(digits.len())].bytes());
            }
        }
    }
    out
}

/// Replays `target`'s seeds, corpus and mutations through `f`; returns how many inputs ran.
fn replay(target: &str, seeds: &str, mutations: usize, f: fn(&[u8])) -> usize {
    let started = Instant::now();
    let seeds = files(&fuzz_dir().join("seeds").join(seeds), usize::MAX);
    assert!(!seeds.is_empty(), "no seeds for {target} in fuzz/seeds/");
    let corpus = files(&fuzz_dir().join("corpus").join(target), MAX_CORPUS);
    let mut ran = 0;
    for (path, data) in seeds.iter().chain(&corpus) {
        let outcome = std::panic::catch_unwind(|| f(data));
        assert!(outcome.is_ok(), "{target}: {} fails (message above)", path.display());
        ran += 1;
    }
    let mut rng = Rng(0x5eed_0000 ^ target.len() as u64);
    for i in 0..mutations {
        let seed = &seeds[rng.below(seeds.len())].1;
        let other = &seeds[rng.below(seeds.len())].1;
        let input = mutate(&mut rng, seed, other);
        let outcome = std::panic::catch_unwind(|| f(&input));
        if outcome.is_err() {
            let out = std::env::temp_dir().join(format!("fuzz-replay-{target}-{i}"));
            let _ = std::fs::write(&out, &input);
            panic!("{target}: mutation {i} fails (message above); input saved as {}", out.display());
        }
        ran += 1;
    }
    println!(
        "{target}: {ran} inputs ({} seeds, {} corpus files, {mutations} mutations) in {:.2?}",
        seeds.len(),
        corpus.len(),
        started.elapsed()
    );
    ran
}

#[test]
fn decode() {
    replay("decode", "decode", MUTATIONS, signaling::fuzzing::decode);
}

#[test]
fn http_request() {
    replay("http_request", "http_request", EDGE_MUTATIONS, signaling::fuzzing::http_edge);
}

#[test]
fn sse_post_poll() {
    replay("sse_post_poll", "http_request", MUTATIONS, signaling::fuzzing::http_filter);
}

#[test]
fn stun() {
    replay("stun", "stun", MUTATIONS, signaling::fuzzing::stun);
}

/// The inputs the replay feeds must reach the routes they are meant for, or the test proves little: the seeds
/// of each route get that route's answer through the edge (checked on the raw bytes).
#[test]
fn seeds_reach_their_routes() {
    let dir = fuzz_dir().join("seeds/http_request");
    for (name, want) in [
        ("healthz.http", "HTTP/1.1 200 OK"),
        ("sse-join.http", "text/event-stream"),
        ("poll-join.http", "\"welcome\""),
        ("post-signal.http", "HTTP/1.1 204 No Content"),
        ("post-wrong-token.http", "\"unauthorized\""),
        ("post-form.http", "\"unsupported-media-type\""),
        ("poll-short.http", "HTTP/1.1 200 OK"),
        ("no-path.http", "\"bad-message\""),
        ("ws-upgrade.http", "HTTP/1.1 101 Switching Protocols"),
    ] {
        let data = std::fs::read(dir.join(name)).unwrap();
        let got = signaling::fuzzing::http_edge_answer(&data);
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains(want), "{name}: {want:?} not in {text}");
    }
    let dir = fuzz_dir().join("seeds/http_request");
    for (name, want) in [
        ("sse-join.http", vec![200]),
        ("poll-join.http", vec![200]),
        ("post-signal.http", vec![204]),
        ("post-wrong-token.http", vec![401]),
        ("post-form.http", vec![415]),
        ("sse-bad-room.http", vec![200]),
        ("no-path.http", vec![400]),
        ("pipelined.http", vec![204, 200, 204, 200]),
    ] {
        let got = signaling::fuzzing::http_filter_statuses(&std::fs::read(dir.join(name)).unwrap());
        assert_eq!(got, want, "{name} through the routes");
    }
}
