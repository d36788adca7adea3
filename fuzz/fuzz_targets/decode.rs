//! `cargo fuzz run decode`: see `signaling::fuzzing::decode` for what it drives and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signaling::fuzzing::decode(data));
