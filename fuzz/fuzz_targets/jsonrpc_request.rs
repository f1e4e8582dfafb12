//! Fuzzes what a manager's request goes through before a verb runs: jsonrpsee's request
//! parser, then rvdsm's parameter conversion (by name or by position, into the verb's typed
//! parameters). No input may panic either; a refusal must say something. Half the inputs are
//! whole requests; the other half pick a verb by their first byte and give the rest as its
//! parameters, so that every verb's conversion is reached without guessing its name.
#![no_main]

use jsonrpsee::types::{Params, Request};
use libfuzzer_sys::fuzz_target;
use rvdsm::api::schema::VERBS;
use rvdsm::rpc::methods::convert_params;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<Request>(data) {
        let raw = request.params.as_ref().map(|p| p.get());
        check(&request.method, Params::new(raw));
    }
    if let Some((first, rest)) = data.split_first()
        && let Ok(text) = std::str::from_utf8(rest)
    {
        let verb = &VERBS[*first as usize % VERBS.len()];
        let converted = convert_params(verb.name, &Params::new(Some(text)));
        assert!(converted.is_some(), "{} has no conversion", verb.name);
        check(verb.name, Params::new(Some(text)));
    }
});

fn check(method: &str, params: Params) {
    if let Some(Err(err)) = convert_params(method, &params) {
        assert!(!err.to_string().is_empty());
    }
}
