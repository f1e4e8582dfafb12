//! Fuzzes the `.meta` parser: no input may panic it, and whatever it accepts must write back
//! to text that parses to the same metadata (descriptions aside, which writing caps).
//! The property lives in `rvdsm::fuzzing`, where `tests/fuzz_corpus.rs` replays the corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rvdsm::fuzzing::volume_meta(data));
