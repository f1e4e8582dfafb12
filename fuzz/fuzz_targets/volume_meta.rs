//! Fuzzes the `.meta` parser: no input may panic it, and whatever it accepts must write back
//! to text that parses to the same metadata (descriptions aside, which writing caps).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rvdsm::storage::meta::VolumeMeta;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(meta) = VolumeMeta::parse(text) {
        if let Ok(written) = meta.to_text() {
            let again = VolumeMeta::parse(&written).expect("written metadata parses");
            assert_eq!(again.capacity, meta.capacity);
            assert_eq!(again.parent, meta.parent);
            assert_eq!(again.legality, meta.legality);
        }
    }
});
