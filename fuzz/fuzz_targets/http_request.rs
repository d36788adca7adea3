//! `cargo fuzz run http_request`: see `signaling::fuzzing::http_edge` for what it drives and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signaling::fuzzing::http_edge(data));
