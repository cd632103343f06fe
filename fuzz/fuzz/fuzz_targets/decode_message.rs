//! Arbitrary bytes through the message and op decoders: no panic, exact round trips.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::decode_message(data));
