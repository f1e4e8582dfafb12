//! Fuzzes the `dom_md/metadata` parser: no input may panic it, and what it accepts must
//! round-trip through the writer.
//! The property lives in `rvdsm::fuzzing`, where `tests/fuzz_corpus.rs` replays the corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rvdsm::fuzzing::domain_metadata(data));
