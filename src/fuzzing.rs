//! The properties the fuzz targets check, one function per target (`fuzz/fuzz_targets/`), kept
//! in the library so that `tests/fuzz_corpus.rs` replays every committed corpus with the same
//! checks in every test run, on the stable toolchain. Each function panics when its property
//! fails; no input may make it panic otherwise.

use tokio_util::bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::rpc::stomp::frame::{FrameLimits, Incoming, StompCodec};
use crate::storage::domain_md;
use crate::storage::meta::VolumeMeta;

/// `.meta` text: whatever parses writes back to text that parses to the same metadata
/// (descriptions aside, which writing caps).
pub fn volume_meta(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(meta) = VolumeMeta::parse(text)
        && let Ok(written) = meta.to_text()
    {
        let again = VolumeMeta::parse(&written).expect("written metadata parses");
        assert_eq!(again.capacity, meta.capacity);
        assert_eq!(again.parent, meta.parent);
        assert_eq!(again.legality, meta.legality);
    }
}

/// `dom_md/metadata` text: whatever parses round-trips through the writer.
pub fn domain_metadata(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(keys) = domain_md::parse(text) {
        assert_eq!(
            domain_md::parse(&domain_md::format(&keys)).as_ref(),
            Ok(&keys)
        );
    }
}

/// Bytes to the STOMP decoder, in two pieces as a socket may deliver them: it always
/// progresses, never holds more than its limits without an error, and every frame it accepts
/// encodes to bytes that decode to the same frame.
pub fn stomp_frame(data: &[u8]) {
    let limits = FrameLimits {
        max_header_bytes: 256,
        max_body_bytes: 512,
    };
    let mut codec = StompCodec::new(limits);
    let split = data.len() / 2;
    let mut buf = BytesMut::from(&data[..split]);
    let mut frames = Vec::new();
    for piece in [&[][..], &data[split..]] {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(Incoming::Frame(frame))) => frames.push(frame),
                Ok(Some(Incoming::HeartBeat)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
            assert!(buf.len() < before, "decoder made no progress");
        }
    }
    assert!(buf.len() <= limits.max_header_bytes + limits.max_body_bytes + 1);
    for frame in frames {
        let mut again = BytesMut::from(&frame.to_bytes()[..]);
        let Ok(Some(Incoming::Frame(decoded))) =
            StompCodec::new(FrameLimits::default()).decode(&mut again)
        else {
            panic!("an encoded frame does not decode: {frame:?}");
        };
        assert_eq!(decoded.command, frame.command);
        assert_eq!(decoded.body, frame.body);
        for (name, _) in &frame.headers {
            if name != "content-length" {
                assert_eq!(decoded.header(name), frame.header(name));
            }
        }
    }
}

/// What a manager's request goes through before a verb runs: jsonrpsee's request parser, then
/// rvdsm's parameter conversion. The input is tried as a whole request, and as a verb (picked
/// by the first byte, so every verb is reached without guessing names) with the rest as its
/// parameters; a refusal must say something.
pub fn jsonrpc_request(data: &[u8]) {
    use crate::api::VERBS;
    use crate::rpc::methods::convert_params;
    use jsonrpsee::types::{Params, Request};

    let check = |method: &str, params: Params| {
        if let Some(Err(err)) = convert_params(method, &params) {
            assert!(!err.to_string().is_empty());
        }
    };
    if let Ok(request) = serde_json::from_slice::<Request>(data) {
        let raw = request.params.as_ref().map(|p| p.get());
        check(&request.method, Params::new(raw));
    }
    if let Some((first, rest)) = data.split_first()
        && let Ok(text) = std::str::from_utf8(rest)
    {
        let verb = &VERBS[*first as usize % VERBS.len()];
        assert!(
            convert_params(verb.name, &Params::new(Some(text))).is_some(),
            "{} has no conversion",
            verb.name
        );
        check(verb.name, Params::new(Some(text)));
    }
}
