//! `cargo fuzz run sse_post_poll`: see `signaling::fuzzing::http_filter` for what it drives and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signaling::fuzzing::http_filter(data));
