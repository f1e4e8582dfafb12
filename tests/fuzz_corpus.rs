//! Every committed fuzz corpus, replayed through its target's property (`rvdsm::fuzzing`) on
//! the stable toolchain: the inputs the fuzzers kept as interesting stay checked in every
//! test run, without cargo-fuzz.

use std::path::Path;

fn replay(target: &str, property: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| property(&data));
        assert!(
            outcome.is_ok(),
            "{target}: {} fails its property",
            path.display()
        );
        inputs += 1;
    }
    assert!(
        inputs > 100,
        "{target}: only {inputs} inputs in {}",
        dir.display()
    );
}

#[test]
fn volume_meta_corpus() {
    replay("volume_meta", rvdsm::fuzzing::volume_meta);
}

#[test]
fn domain_metadata_corpus() {
    replay("domain_metadata", rvdsm::fuzzing::domain_metadata);
}

#[test]
fn stomp_frame_corpus() {
    replay("stomp_frame", rvdsm::fuzzing::stomp_frame);
}

#[test]
fn jsonrpc_request_corpus() {
    replay("jsonrpc_request", rvdsm::fuzzing::jsonrpc_request);
}
