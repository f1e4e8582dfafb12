//! STOMP 1.2 frames as VDSM reads and writes them (`lib/yajsonrpc/stomp.py`): a command line,
//! `key:value` header lines with 1.2 value escaping (applied to every frame, CONNECT included),
//! an empty line, a body and a NUL. The body is read by `content-length` when the header is
//! there, else up to the first NUL. CR before LF is tolerated, a bare EOL between frames is a
//! heart-beat, and when headers repeat the first one wins. Both sizes are bounded, so a peer
//! cannot make the server buffer without limit.
//!
//! No crate on crates.io does this with the bounds and VDSM's exact escaping rules and is kept
//! up to date, so this is a small [`tokio_util::codec`] decoder/encoder, tested on its own.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// A STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    /// The command (`CONNECT`, `SEND`, `MESSAGE`, ...).
    pub command: String,
    /// Headers in wire order, decoded.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Frame {
    /// A frame with no headers and no body.
    pub fn new(command: &str) -> Self {
        Self {
            command: command.to_owned(),
            ..Self::default()
        }
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body (builder style).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The value of the first header with this name (STOMP 1.2: the first occurrence wins).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Writes the frame; with a body, `content-length` is (re)written to its real length.
    pub fn encode_into(&self, out: &mut BytesMut) {
        let headers = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        encode_frame(out, &self.command, headers, &self.body);
    }

    /// The frame as bytes.
    pub fn to_bytes(&self) -> bytes::Bytes {
        let mut out = BytesMut::new();
        self.encode_into(&mut out);
        out.freeze()
    }
}

/// Writes a frame from its parts, as [`Frame::encode_into`] does, without building a
/// [`Frame`] (the broker's hot path).
pub fn encode_frame<'h>(
    out: &mut BytesMut,
    command: &str,
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    body: &[u8],
) {
    out.reserve(command.len() + 128 + body.len());
    encode_head(out, command, headers, body.len());
    out.put_slice(body);
    out.put_u8(0);
}

/// The command, headers (with `content-length` for a body of `body_len` bytes) and blank line
/// of a frame: [`encode_frame`] without its body and NUL, for a body shared by many frames.
pub fn encode_head<'h>(
    out: &mut BytesMut,
    command: &str,
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    body_len: usize,
) {
    out.put_slice(command.as_bytes());
    out.put_u8(b'\n');
    for (name, value) in headers {
        if body_len > 0 && name == "content-length" {
            continue;
        }
        escape_into(name, out);
        out.put_u8(b':');
        escape_into(value, out);
        out.put_u8(b'\n');
    }
    if body_len > 0 {
        out.put_slice(b"content-length:");
        out.put_slice(body_len.to_string().as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A whole frame.
    Frame(Frame),
    /// A bare EOL between frames.
    HeartBeat,
}

/// Why bytes are not a valid frame. After any of these the stream cannot be resynchronized.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The command and headers are longer than allowed.
    #[error("frame headers larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// The body is longer than allowed.
    #[error("frame body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The command line is empty or not an upper-case word.
    #[error("invalid command line")]
    InvalidCommand,
    /// A header line has no colon, a raw colon in its value, or is not UTF-8.
    #[error("invalid header line")]
    InvalidHeader,
    /// A backslash followed by something STOMP 1.2 does not define.
    #[error("invalid escape sequence in header")]
    InvalidEscape,
    /// `content-length` is not a number.
    #[error("invalid content-length")]
    InvalidContentLength,
    /// The byte after a `content-length` body is not NUL.
    #[error("frame body not terminated by NUL")]
    MissingNul,
}

/// Sizes the decoder accepts.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Command plus headers, in bytes.
    pub max_header_bytes: usize,
    /// Body, in bytes.
    pub max_body_bytes: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
        }
    }
}

/// The codec: decodes [`Incoming`], encodes [`Frame`]s and heart-beats.
#[derive(Debug, Clone, Default)]
pub struct StompCodec {
    limits: FrameLimits,
}

impl StompCodec {
    /// A codec with these limits.
    pub fn new(limits: FrameLimits) -> Self {
        Self { limits }
    }
}

impl Decoder for StompCodec {
    type Item = Incoming;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        match buf.first() {
            None => return Ok(None),
            Some(b'\n') => {
                buf.advance(1);
                return Ok(Some(Incoming::HeartBeat));
            }
            Some(b'\r') => {
                return match buf.get(1) {
                    None => Ok(None),
                    Some(b'\n') => {
                        buf.advance(2);
                        Ok(Some(Incoming::HeartBeat))
                    }
                    Some(_) => Err(FrameError::InvalidCommand),
                };
            }
            Some(_) => {}
        }
        let Some(head_len) = find_head_end(buf, self.limits.max_header_bytes)? else {
            return Ok(None);
        };
        let (command, headers) = parse_head(&buf[..head_len])?;
        let declared = headers
            .iter()
            .find(|(key, _)| key == "content-length")
            .map(|(_, value)| value.trim().parse::<usize>())
            .transpose()
            .map_err(|_| FrameError::InvalidContentLength)?;
        let body_len = match declared {
            Some(len) => {
                if len > self.limits.max_body_bytes {
                    return Err(FrameError::BodyTooLarge(self.limits.max_body_bytes));
                }
                if buf.len() < head_len + len + 1 {
                    buf.reserve(head_len + len + 1 - buf.len());
                    return Ok(None);
                }
                if buf[head_len + len] != 0 {
                    return Err(FrameError::MissingNul);
                }
                len
            }
            None => match buf[head_len..].iter().position(|&b| b == 0) {
                Some(len) if len <= self.limits.max_body_bytes => len,
                Some(_) => return Err(FrameError::BodyTooLarge(self.limits.max_body_bytes)),
                None if buf.len() - head_len > self.limits.max_body_bytes => {
                    return Err(FrameError::BodyTooLarge(self.limits.max_body_bytes));
                }
                None => return Ok(None),
            },
        };
        buf.advance(head_len);
        let body = buf.split_to(body_len).to_vec();
        buf.advance(1);
        Ok(Some(Incoming::Frame(Frame {
            command,
            headers,
            body,
        })))
    }
}

impl Encoder<&Frame> for StompCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), FrameError> {
        frame.encode_into(out);
        Ok(())
    }
}

/// The length of the command and header lines including the blank line that ends them, once
/// it is all buffered.
fn find_head_end(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let mut line_start = 0;
    let mut first = true;
    while let Some(offset) = buf[line_start..].iter().position(|&b| b == b'\n') {
        let line_end = line_start + offset;
        let line = strip_cr(&buf[line_start..line_end]);
        if line.is_empty() && !first {
            let head_len = line_end + 1;
            return if head_len > max {
                Err(FrameError::HeadersTooLarge(max))
            } else {
                Ok(Some(head_len))
            };
        }
        first = false;
        line_start = line_end + 1;
    }
    if buf.len() > max {
        return Err(FrameError::HeadersTooLarge(max));
    }
    Ok(None)
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

type Head = (String, Vec<(String, String)>);

fn parse_head(head: &[u8]) -> Result<Head, FrameError> {
    let mut lines = head.split(|&b| b == b'\n').map(strip_cr);
    let command = lines.next().unwrap_or_default();
    if command.is_empty() || !command.iter().all(u8::is_ascii_uppercase) {
        return Err(FrameError::InvalidCommand);
    }
    let command = String::from_utf8_lossy(command).into_owned();
    let mut headers = Vec::new();
    for line in lines.filter(|line| !line.is_empty()) {
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(FrameError::InvalidHeader)?;
        let name = unescape(&line[..colon])?;
        let value = unescape(&line[colon + 1..])?;
        headers.push((name, value));
    }
    Ok((command, headers))
}

/// Decodes STOMP 1.2 escapes; a raw colon is refused, as VDSM does.
fn unescape(raw: &[u8]) -> Result<String, FrameError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => out.push(match bytes.next() {
                Some(b'\\') => b'\\',
                Some(b'n') => b'\n',
                Some(b'r') => b'\r',
                Some(b'c') => b':',
                _ => return Err(FrameError::InvalidEscape),
            }),
            b':' => return Err(FrameError::InvalidHeader),
            other => out.push(other),
        }
    }
    String::from_utf8(out).map_err(|_| FrameError::InvalidHeader)
}

fn escape_into(text: &str, out: &mut BytesMut) {
    for &b in text.as_bytes() {
        match b {
            b'\\' => out.put_slice(b"\\\\"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b':' => out.put_slice(b"\\c"),
            other => out.put_u8(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Incoming>, FrameError> {
        let mut codec = StompCodec::default();
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(item) = codec.decode(&mut buf)? {
            out.push(item);
        }
        Ok(out)
    }

    fn one_frame(bytes: &[u8]) -> Frame {
        match decode_all(bytes).unwrap().as_slice() {
            [Incoming::Frame(frame)] => frame.clone(),
            other => panic!("expected one frame, got {other:?}"),
        }
    }

    #[test]
    fn frame_by_content_length_may_hold_nul() {
        let frame = one_frame(b"SEND\ndestination:a\ncontent-length:3\n\na\0b\0");
        assert_eq!(frame.command, "SEND");
        assert_eq!(frame.header("destination"), Some("a"));
        assert_eq!(frame.body, b"a\0b");
    }

    #[test]
    fn frame_without_content_length_ends_at_nul() {
        let frame = one_frame(b"SEND\ndestination:a\n\nhello\0");
        assert_eq!(frame.body, b"hello");
    }

    #[test]
    fn crlf_lines_are_tolerated() {
        let frame = one_frame(b"CONNECT\r\naccept-version:1.2\r\n\r\n\0");
        assert_eq!(frame.command, "CONNECT");
        assert_eq!(frame.header("accept-version"), Some("1.2"));
        assert!(frame.body.is_empty());
    }

    #[test]
    fn heart_beats_between_frames_are_reported_and_skipped() {
        let items = decode_all(b"\n\r\nSEND\n\n\0\nSEND\n\n\0").unwrap();
        assert_eq!(items.len(), 5);
        assert_eq!(items[0], Incoming::HeartBeat);
        assert_eq!(items[1], Incoming::HeartBeat);
        assert!(matches!(items[2], Incoming::Frame(_)));
        assert_eq!(items[3], Incoming::HeartBeat);
        assert!(matches!(items[4], Incoming::Frame(_)));
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let whole = b"SEND\ndestination:q\ncontent-length:5\n\nhello\0";
        let mut codec = StompCodec::default();
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            buf.put_u8(*byte);
            let item = codec.decode(&mut buf).unwrap();
            if i + 1 < whole.len() {
                assert!(item.is_none(), "decoded early at byte {i}");
            } else {
                assert!(matches!(item, Some(Incoming::Frame(f)) if f.body == b"hello"));
            }
        }
    }

    #[test]
    fn first_header_wins() {
        let frame = one_frame(b"SEND\nfoo:1\nfoo:2\n\n\0");
        assert_eq!(frame.header("foo"), Some("1"));
    }

    #[test]
    fn escapes_are_decoded() {
        let frame = one_frame(b"SEND\nk\\cx:a\\nb\\\\c\\rd\\ce\n\n\0");
        assert_eq!(frame.header("k:x"), Some("a\nb\\c\rd:e"));
    }

    #[test]
    fn invalid_escape_is_an_error() {
        assert!(matches!(
            decode_all(b"SEND\nk:a\\tb\n\n\0"),
            Err(FrameError::InvalidEscape)
        ));
        assert!(matches!(
            decode_all(b"SEND\nk:a\\\n\n\0"),
            Err(FrameError::InvalidEscape)
        ));
    }

    #[test]
    fn raw_colon_in_value_and_line_without_colon_are_errors() {
        assert!(matches!(
            decode_all(b"SEND\nk:a:b\n\n\0"),
            Err(FrameError::InvalidHeader)
        ));
        assert!(matches!(
            decode_all(b"SEND\nnocolon\n\n\0"),
            Err(FrameError::InvalidHeader)
        ));
    }

    #[test]
    fn wrong_content_length_is_an_error() {
        assert!(matches!(
            decode_all(b"SEND\ncontent-length:2\n\nhello\0"),
            Err(FrameError::MissingNul)
        ));
        assert!(matches!(
            decode_all(b"SEND\ncontent-length:x\n\nhello\0"),
            Err(FrameError::InvalidContentLength)
        ));
        assert!(matches!(
            decode_all(b"SEND\ncontent-length:-1\n\n\0"),
            Err(FrameError::InvalidContentLength)
        ));
    }

    #[test]
    fn garbage_commands_are_errors() {
        assert!(matches!(
            decode_all(b"send\n\n\0"),
            Err(FrameError::InvalidCommand)
        ));
        assert!(matches!(
            decode_all(b"\rX"),
            Err(FrameError::InvalidCommand)
        ));
        assert!(matches!(
            decode_all(b"\x00\x01\n\n\0"),
            Err(FrameError::InvalidCommand)
        ));
    }

    #[test]
    fn oversized_headers_and_bodies_are_refused_before_they_are_buffered() {
        let limits = FrameLimits {
            max_header_bytes: 32,
            max_body_bytes: 8,
        };
        let mut codec = StompCodec::new(limits);
        let mut buf = BytesMut::from(&b"SEND\nk:"[..]);
        buf.put_slice(&[b'v'; 40]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::HeadersTooLarge(32))
        ));
        let mut buf = BytesMut::from(&b"SEND\ncontent-length:9\n\n"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::BodyTooLarge(8))
        ));
        let mut buf = BytesMut::from(&b"SEND\n\n0123456789"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::BodyTooLarge(8))
        ));
    }

    #[test]
    fn encoding_escapes_and_fixes_content_length() {
        let frame = Frame::new("MESSAGE")
            .with_header("destination", "a:b\\c\nd")
            .with_header("content-length", "999")
            .with_body("{}");
        assert_eq!(
            &frame.to_bytes()[..],
            b"MESSAGE\ndestination:a\\cb\\\\c\\nd\ncontent-length:2\n\n{}\0"
        );
    }

    #[test]
    fn encoding_then_decoding_gives_the_frame_back() {
        let frame = Frame::new("SEND")
            .with_header("destination", "jms.topic.vdsm_requests")
            .with_header("weird:key", "line\nbreak\\")
            .with_body(vec![0, 1, 2, 0]);
        let decoded = one_frame(&frame.to_bytes());
        assert_eq!(decoded.command, frame.command);
        assert_eq!(decoded.header("weird:key"), Some("line\nbreak\\"));
        assert_eq!(decoded.header("content-length"), Some("4"));
        assert_eq!(decoded.body, frame.body);
    }

    #[test]
    fn empty_body_frame_has_no_content_length() {
        assert_eq!(
            &Frame::new("CONNECTED")
                .with_header("version", "1.2")
                .to_bytes()[..],
            b"CONNECTED\nversion:1.2\n\n\0"
        );
    }
}
