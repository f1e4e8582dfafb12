//! Protocol detection on one port, as VDSM's `protocoldetector` does after the TLS handshake:
//! the first bytes select STOMP (a STOMP command) or HTTP (an HTTP method, which serves
//! JSON-RPC over HTTP and WebSocket). Anything else, or no decision within the deadline, closes
//! the connection. The bytes read to decide are replayed to the chosen protocol through
//! [`Prefixed`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The protocols one port serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// STOMP 1.2 frames carrying JSON-RPC.
    Stomp,
    /// HTTP/1.1: JSON-RPC POSTs and WebSocket upgrades.
    Http,
}

/// Why a connection was not given to any protocol.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The first bytes are neither STOMP nor HTTP.
    #[error("unrecognized protocol: {0:?}")]
    Unrecognized(String),
    /// The client sent too little within the deadline.
    #[error("no protocol detected within {0:?}")]
    Timeout(Duration),
    /// The client closed or the socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// VDSM's StompDetector list (it does not accept `STOMP`).
const STOMP_COMMANDS: [&str; 9] = [
    "CONNECT",
    "SEND",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "MESSAGE",
    "CONNECTED",
    "ERROR",
    "RECEIPT",
    "DISCONNECT",
];
const HTTP_METHODS: [&str; 4] = ["GET", "POST", "PUT", "OPTIONS"];
/// The longest token, plus its terminator.
const MAX_PROBE: usize = 12;

/// What the bytes read so far say.
fn classify(seen: &[u8]) -> Option<Result<Protocol, ()>> {
    let candidates = STOMP_COMMANDS
        .iter()
        .map(|c| (c, Protocol::Stomp, [b'\n', b'\r']))
        .chain(
            HTTP_METHODS
                .iter()
                .map(|m| (m, Protocol::Http, [b' ', b' '])),
        );
    let mut still_possible = false;
    for (token, protocol, ends) in candidates {
        let token = token.as_bytes();
        if seen.len() > token.len() && seen.starts_with(token) && ends.contains(&seen[token.len()])
        {
            return Some(Ok(protocol));
        }
        if seen.len() <= token.len() && token.starts_with(seen) {
            still_possible = true;
        }
    }
    (!still_possible || seen.len() >= MAX_PROBE).then_some(Err(()))
}

/// Reads the first bytes of `stream` until they select a protocol.
pub async fn detect<S: AsyncRead + Unpin>(
    mut stream: S,
    deadline: Duration,
) -> Result<(Protocol, Prefixed<S>), DetectError> {
    let mut seen = Vec::with_capacity(MAX_PROBE);
    let reading = async {
        loop {
            let mut byte = [0u8; MAX_PROBE];
            let want = MAX_PROBE - seen.len();
            let n = stream.read(&mut byte[..want]).await?;
            if n == 0 {
                return Err(DetectError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            seen.extend_from_slice(&byte[..n]);
            // Decide on the longest prefix that decides, byte by byte.
            for len in 1..=seen.len() {
                match classify(&seen[..len]) {
                    Some(Ok(protocol)) => return Ok(protocol),
                    Some(Err(())) => {
                        return Err(DetectError::Unrecognized(
                            String::from_utf8_lossy(&seen).into_owned(),
                        ));
                    }
                    None => {}
                }
            }
        }
    };
    let protocol = tokio::time::timeout(deadline, reading)
        .await
        .map_err(|_| DetectError::Timeout(deadline))??;
    Ok((protocol, Prefixed::new(seen, stream)))
}

/// A stream whose first bytes were already read: they are read again, then the rest.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `prefix` is served before `inner`'s bytes.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.offset < this.prefix.len() {
            let rest = &this.prefix[this.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.offset += n;
            if this.offset == this.prefix.len() {
                this.prefix = Vec::new();
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn detect_bytes(bytes: &'static [u8]) -> Result<(Protocol, Vec<u8>), DetectError> {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(bytes).await.unwrap();
        drop(client);
        let (protocol, mut stream) = detect(server, Duration::from_secs(1)).await?;
        let mut replay = Vec::new();
        stream.read_to_end(&mut replay).await.unwrap();
        Ok((protocol, replay))
    }

    #[tokio::test]
    async fn stomp_and_http_are_recognized_and_replayed() {
        let (protocol, replay) = detect_bytes(b"CONNECT\naccept-version:1.2\n\n\0")
            .await
            .unwrap();
        assert_eq!(protocol, Protocol::Stomp);
        assert_eq!(replay, b"CONNECT\naccept-version:1.2\n\n\0");
        let (protocol, _) = detect_bytes(b"SEND\r\n").await.unwrap();
        assert_eq!(protocol, Protocol::Stomp);
        let (protocol, replay) = detect_bytes(b"POST / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(protocol, Protocol::Http);
        assert_eq!(replay, b"POST / HTTP/1.1\r\n\r\n");
        let (protocol, _) = detect_bytes(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(protocol, Protocol::Http);
    }

    #[tokio::test]
    async fn garbage_and_near_misses_are_refused() {
        for bytes in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"STOMP\naccept-version:1.2\n",
            b"SENDX\n",
            b"get / HTTP/1.1",
            b"UNSUBSCRIBEX",
        ] {
            let (mut client, server) = tokio::io::duplex(64);
            client.write_all(bytes).await.unwrap();
            let result = detect(server, Duration::from_secs(1)).await;
            assert!(
                matches!(result, Err(DetectError::Unrecognized(_))),
                "{bytes:?}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn silence_times_out_and_eof_is_an_error() {
        let (_client, server) = tokio::io::duplex(64);
        assert!(matches!(
            detect(server, Duration::from_millis(50)).await,
            Err(DetectError::Timeout(_))
        ));
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"CONN").await.unwrap();
        drop(client);
        assert!(matches!(
            detect(server, Duration::from_secs(1)).await,
            Err(DetectError::Io(_))
        ));
    }
}
