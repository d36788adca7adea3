//! `cargo fuzz run stun`: see `signaling::fuzzing::stun` for what it drives and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signaling::fuzzing::stun(data));
