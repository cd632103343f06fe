//! Arbitrary op JSON on an arbitrary document: no panic, batches atomic, invariants hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::apply_ops(data));
