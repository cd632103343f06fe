//! Deep and wide edits through decode, limits, sequencing, store encoding and reload.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::store_reload(data));
