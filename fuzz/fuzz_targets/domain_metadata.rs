//! Fuzzes the `dom_md/metadata` parser: no input may panic it, and what it accepts must
//! round-trip through the writer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rvdsm::storage::domain_md;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(keys) = domain_md::parse(text) {
        assert_eq!(domain_md::parse(&domain_md::format(&keys)).as_ref(), Ok(&keys));
    }
});
