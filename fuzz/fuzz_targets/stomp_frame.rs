//! Fuzzes the STOMP frame decoder: no input may panic it or make it loop, whatever it decodes
//! must encode to bytes that decode to the same frame, and it must never hold more than its
//! limits allow without reporting an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rvdsm::rpc::stomp::frame::{FrameLimits, Incoming, StompCodec};
use tokio_util::bytes::BytesMut;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let limits = FrameLimits {
        max_header_bytes: 256,
        max_body_bytes: 512,
    };
    let mut codec = StompCodec::new(limits);
    // Feed in two pieces, as a socket might deliver them.
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
        let Ok(Some(Incoming::Frame(decoded))) = StompCodec::new(FrameLimits::default()).decode(&mut again) else {
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
});
