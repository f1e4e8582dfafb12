//! Fuzzes what a manager's request goes through before a verb runs: jsonrpsee's request
//! parser, then rvdsm's parameter conversion (by name or by position, into the verb's typed
//! parameters). No input may panic either; a refusal must say something. Each input is tried
//! as a whole request, and as the parameters (all but its first byte) of the verb its first
//! byte picks, so that every verb's conversion is reached without guessing its name.
//! The property lives in `rvdsm::fuzzing`, where `tests/fuzz_corpus.rs` replays the corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rvdsm::fuzzing::jsonrpc_request(data));
