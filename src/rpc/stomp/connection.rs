//! One STOMP connection, as VDSM's `StompAdapterImpl` serves it: CONNECT with the version check
//! and the heart-beat swap (1000 ms floor), SUBSCRIBE / UNSUBSCRIBE into the server-wide
//! [`Broker`], SEND routed either to the JSON-RPC registry (the request queues and their
//! children; the reply goes to `reply-to`) or to the destination's subscribers, DISCONNECT with
//! its RECEIPT, and ERROR frames with VDSM's texts. Anything the parser rejects, an unknown
//! command, or a client that misses the heart-beats it promised closes the connection.
//!
//! The reader and the writer are separate tasks joined by a bounded queue. Requests run as
//! their own tasks, at most `max_pending_requests` per connection, a batch counting one per
//! call; when that many are in flight the reader stops reading, so a flooding client slows
//! only itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};
use tokio_util::codec::FramedRead;
use tokio_util::task::TaskTracker;

use super::broker::{Broker, ConnectionId};
use super::frame::{Frame, FrameError, FrameLimits, Incoming, StompCodec};
use super::queue::{self, Outgoing, ReceiveQueue, SendQueue};
use crate::rpc::dispatch::Dispatcher;

/// VDSM's floor for a negotiated heart-beat.
const MIN_HEART_BEAT: Duration = Duration::from_millis(1000);
/// A client is late once it has been silent for this many of its promised intervals.
const HEART_BEAT_GRACE: u32 = 2;
/// A write that makes no progress for this long means the client is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The server's settings for STOMP.
#[derive(Debug, Clone)]
pub struct StompOptions {
    /// Destinations whose SENDs are JSON-RPC requests (with their dot-children).
    pub request_queues: Vec<String>,
    /// Frame size bounds.
    pub limits: FrameLimits,
    /// Requests of one connection running at once, a batch counting one per call.
    pub max_pending_requests: usize,
    /// Most calls in one batch (a larger one is refused without running).
    pub max_batch_calls: usize,
    /// Frames queued for one connection before new ones are dropped.
    pub send_queue_frames: usize,
    /// Bytes queued for one connection before new messages are dropped.
    pub send_queue_bytes: usize,
}

impl Default for StompOptions {
    fn default() -> Self {
        Self {
            request_queues: vec![
                "jms.topic.vdsm_requests".to_owned(),
                "jms.topic.vdsm_irs_requests".to_owned(),
            ],
            limits: FrameLimits::default(),
            max_pending_requests: 64,
            max_batch_calls: 64,
            send_queue_frames: 1024,
            send_queue_bytes: queue::DEFAULT_QUEUE_BYTES,
        }
    }
}

/// Serves STOMP connections; shared by all listeners.
pub struct StompService {
    broker: Arc<Broker>,
    dispatcher: Dispatcher,
    options: StompOptions,
    requests: TaskTracker,
    next_connection: AtomicU64,
}

impl StompService {
    /// A service routing requests to `dispatcher` and messages through `broker`.
    pub fn new(
        broker: Arc<Broker>,
        dispatcher: Dispatcher,
        options: StompOptions,
        requests: TaskTracker,
    ) -> Self {
        Self {
            broker,
            dispatcher,
            options,
            requests,
            next_connection: AtomicU64::new(1),
        }
    }

    /// Serves one connection until the client leaves, breaks the protocol, or `stop` fires.
    pub async fn serve<S>(self: Arc<Self>, stream: S, stop: impl Future<Output = ()>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let (reader, writer) = tokio::io::split(stream);
        let (queue, outgoing) = queue::channel(
            self.options.send_queue_frames,
            self.options.send_queue_bytes,
        );
        let (beat_tx, beat_rx) = watch::channel(None);
        let writing = tokio::spawn(write_frames(writer, outgoing, beat_rx));
        let mut connection = Connection {
            id,
            service: Arc::clone(&self),
            queue: queue.clone(),
            heart_beat_out: beat_tx,
            expected_beat: None,
            pending: Arc::new(Semaphore::new(self.options.max_pending_requests)),
            rpc: self
                .dispatcher
                .connection(u32::try_from(id % u64::from(u32::MAX)).unwrap_or(0)),
        };
        let frames = FramedRead::new(reader, StompCodec::new(self.options.limits));
        tokio::select! {
            () = connection.read_frames(frames) => {}
            () = stop => {}
        }
        self.broker.disconnect(id);
        queue.send(Outgoing::Close).await;
        drop(queue);
        let _ = tokio::time::timeout(WRITE_TIMEOUT, writing).await;
    }

    fn is_request_queue(&self, destination: &str) -> bool {
        self.options.request_queues.iter().any(|queue| {
            destination == queue
                || destination
                    .strip_prefix(queue.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    }
}

struct Connection {
    id: ConnectionId,
    service: Arc<StompService>,
    queue: SendQueue,
    heart_beat_out: watch::Sender<Option<Duration>>,
    expected_beat: Option<Duration>,
    pending: Arc<Semaphore>,
    rpc: jsonrpsee::server::ConnectionState,
}

/// Whether to go on reading after a frame.
enum Next {
    Continue,
    Close,
}

impl Connection {
    async fn read_frames<R: AsyncRead + Unpin>(&mut self, mut frames: FramedRead<R, StompCodec>) {
        loop {
            let next = match self.expected_beat {
                Some(interval) => {
                    match tokio::time::timeout(interval * HEART_BEAT_GRACE, frames.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            tracing::info!(connection = self.id, "client heart-beats stopped");
                            return;
                        }
                    }
                }
                None => frames.next().await,
            };
            match next {
                None => return,
                Some(Ok(Incoming::HeartBeat)) => {}
                Some(Ok(Incoming::Frame(frame))) => {
                    if let Next::Close = self.handle(frame).await {
                        return;
                    }
                }
                // A client that goes away without TLS's close_notify (most do, VDSM's among
                // them) or resets the socket has simply disconnected: not a bad frame.
                Some(Err(FrameError::Io(err))) if is_disconnect(&err) => {
                    tracing::debug!(connection = self.id, error = %err, "client disconnected");
                    return;
                }
                Some(Err(err)) => {
                    tracing::info!(connection = self.id, error = %err, "bad STOMP frame");
                    self.send_error(&err.to_string()).await;
                    return;
                }
            }
        }
    }

    async fn handle(&mut self, frame: Frame) -> Next {
        match frame.command.as_str() {
            "CONNECT" => self.connect(&frame).await,
            "SUBSCRIBE" => self.subscribe(&frame).await,
            "UNSUBSCRIBE" => self.unsubscribe(&frame).await,
            "SEND" => self.send(frame).await,
            "DISCONNECT" => {
                if let Some(receipt) = frame.header("receipt") {
                    self.reply(Frame::new("RECEIPT").with_header("receipt-id", receipt))
                        .await;
                }
                return Next::Close;
            }
            other => {
                tracing::warn!(
                    connection = self.id,
                    command = other,
                    "unknown STOMP command"
                );
                return Next::Close;
            }
        }
        Next::Continue
    }

    async fn connect(&mut self, frame: &Frame) {
        let supported = frame
            .header("accept-version")
            .is_some_and(|versions| versions.split(',').any(|v| v.trim() == "1.2"));
        if !supported {
            self.send_error("Version unsupported").await;
            return;
        }
        let Some((client_sends, client_wants)) = parse_heart_beat(frame.header("heart-beat"))
        else {
            self.send_error("Invalid heart-beat header").await;
            return;
        };
        let server_sends = client_wants.map(|d| d.max(MIN_HEART_BEAT));
        let server_expects = client_sends.map(|d| d.max(MIN_HEART_BEAT));
        let millis = |d: Option<Duration>| d.map_or(0, |d| d.as_millis());
        self.reply(
            Frame::new("CONNECTED")
                .with_header("version", "1.2")
                .with_header(
                    "heart-beat",
                    &format!("{},{}", millis(server_sends), millis(server_expects)),
                ),
        )
        .await;
        self.expected_beat = server_expects;
        let _ = self.heart_beat_out.send(server_sends);
    }

    async fn subscribe(&mut self, frame: &Frame) {
        let (Some(destination), Some(id)) = (frame.header("destination"), frame.header("id"))
        else {
            self.send_error("Missing destination or subscription id header")
                .await;
            return;
        };
        if let Err(err) = self
            .service
            .broker
            .subscribe(self.id, id, destination, &self.queue)
        {
            self.send_error(&err.to_string()).await;
        }
    }

    async fn unsubscribe(&mut self, frame: &Frame) {
        match frame.header("id") {
            Some(id) => self.service.broker.unsubscribe(self.id, id),
            None => self.send_error("Missing id header").await,
        }
    }

    async fn send(&mut self, frame: Frame) {
        let Some(destination) = frame.header("destination").map(str::to_owned) else {
            self.send_error("Missing destination header").await;
            return;
        };
        let broker = &self.service.broker;
        let forwarded = broker.publish(&destination, &frame.headers, &frame.body);
        if self.service.is_request_queue(&destination) {
            self.run_request(frame).await;
        } else if forwarded == 0 {
            self.send_error("Subscription not available").await;
        }
    }

    /// Runs the body as JSON-RPC on its own task; the reply is published to `reply-to`. It
    /// first takes one place among the connection's pending requests per call it holds.
    async fn run_request(&mut self, frame: Frame) {
        let places = self.places_for(&frame.body);
        let Ok(permit) = Arc::clone(&self.pending).acquire_many_owned(places).await else {
            return;
        };
        let service = Arc::clone(&self.service);
        let rpc = self.rpc.clone();
        let reply_to = frame.header("reply-to").map(str::to_owned);
        let flow = frame.header("ovirtCorrelationId").map(str::to_owned);
        self.service.requests.spawn(async move {
            let reply = service.dispatcher.handle(&rpc, frame.body, flow).await;
            drop(permit);
            let Some(reply) = reply else { return };
            let Some(reply_to) = reply_to else {
                tracing::warn!("request without reply-to; reply dropped");
                return;
            };
            let headers = [("content-type".to_owned(), "application/json".to_owned())];
            if service.broker.publish(&reply_to, &headers, &reply) == 0 {
                tracing::warn!(reply_to, "nobody subscribed to reply-to; reply dropped");
            }
        });
    }

    /// How many pending-request places a request body takes: one per call of a batch. A batch
    /// over the limit is refused whole without running anything, and text that is not a batch
    /// is one request (or one parse error): one place. Never more than the connection has, so
    /// that no request can wait forever.
    fn places_for(&self, body: &[u8]) -> u32 {
        let options = &self.service.options;
        let places = match batch_calls(body) {
            Some(calls) if calls <= options.max_batch_calls => calls.max(1),
            _ => 1,
        };
        u32::try_from(places.min(options.max_pending_requests)).unwrap_or(1)
    }

    async fn send_error(&self, message: &str) {
        self.reply(Frame::new("ERROR").with_body(message)).await;
    }

    /// Queues a frame for this connection; waiting here (a full queue) stops reading from a
    /// client that does not read its own replies.
    async fn reply(&self, frame: Frame) {
        self.queue.send(Outgoing::Frame(frame.to_bytes())).await;
    }
}

/// `cx,cy` in milliseconds; 0 means none. A missing header means no heart-beats.
fn parse_heart_beat(header: Option<&str>) -> Option<(Option<Duration>, Option<Duration>)> {
    let Some(header) = header else {
        return Some((None, None));
    };
    let (sends, wants) = header.split_once(',')?;
    let parse = |text: &str| {
        text.trim()
            .parse::<u64>()
            .ok()
            .map(|ms| (ms > 0).then(|| Duration::from_millis(ms)))
    };
    Some((parse(sends)?, parse(wants)?))
}

/// Writes queued frames in order, and a heart-beat (`\n`) whenever nothing was written for
/// the negotiated interval.
async fn write_frames<W: AsyncWrite>(
    writer: W,
    mut outgoing: ReceiveQueue,
    heart_beat: watch::Receiver<Option<Duration>>,
) {
    let mut writer = std::pin::pin!(writer);
    loop {
        let interval = *heart_beat.borrow();
        let next = match interval {
            Some(interval) => match tokio::time::timeout(interval, outgoing.recv()).await {
                Ok(next) => next,
                Err(_) => Some(Outgoing::Frame(bytes::Bytes::from_static(b"\n"))),
            },
            None => outgoing.recv().await,
        };
        let (head, body) = match next {
            Some(Outgoing::Frame(bytes)) => (bytes, None),
            Some(Outgoing::Message { head, body }) => (head, Some(body)),
            Some(Outgoing::Close) | None => break,
        };
        let write = async {
            writer.write_all(&head).await?;
            if let Some(body) = body {
                writer.write_all(&body).await?;
                writer.write_all(b"\0").await?;
            }
            if outgoing.is_empty() {
                writer.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "STOMP write failed");
                return;
            }
            Err(_) => {
                tracing::info!("STOMP client stopped reading; connection closed");
                return;
            }
        }
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.shutdown()).await;
}

/// The number of entries of a JSON-RPC batch (calls, notifications and invalid entries alike,
/// as JSON-RPC and jsonrpsee's limit count them), or `None` when `body` is not a JSON array.
fn batch_calls(body: &[u8]) -> Option<usize> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[start] != b'[' {
        return None;
    }
    serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&body[start..])
        .ok()
        .map(|entries| entries.len())
}

/// Whether a read error only says the peer went away.
fn is_disconnect(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heart_beat_header_is_parsed() {
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(parse_heart_beat(None), Some((None, None)));
        assert_eq!(parse_heart_beat(Some("0,24000")), Some((None, ms(24000))));
        assert_eq!(parse_heart_beat(Some("500, 0")), Some((ms(500), None)));
        assert_eq!(parse_heart_beat(Some("x,1")), None);
        assert_eq!(parse_heart_beat(Some("1")), None);
    }

    #[test]
    fn a_batch_is_counted_by_its_entries() {
        assert_eq!(
            batch_calls(br#"{"jsonrpc":"2.0","method":"a","id":1}"#),
            None
        );
        assert_eq!(batch_calls(b"{not json"), None);
        assert_eq!(batch_calls(b"[not json"), None);
        assert_eq!(batch_calls(b" \n[]"), Some(0));
        let three = br#"[{"method":"a","id":1}, {"method":"b"}, 7]"#;
        assert_eq!(batch_calls(three), Some(3));
        assert_eq!(batch_calls(br#"[[1,2],{"a":[3,4]}]"#), Some(2));
    }
}
