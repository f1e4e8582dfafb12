//! Fuzzes the STOMP frame decoder: no input may panic it or make it loop, whatever it decodes
//! must encode to bytes that decode to the same frame, and it must never hold more than its
//! limits allow without reporting an error.
//! The property lives in `rvdsm::fuzzing`, where `tests/fuzz_corpus.rs` replays the corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rvdsm::fuzzing::stomp_frame(data));
