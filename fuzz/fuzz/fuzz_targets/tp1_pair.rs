//! An arbitrary concurrent pair on an arbitrary document: TP1 holds and transforms apply cleanly.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::tp1_pair(data));
