//! A STOMP JSON-RPC client as VDSM's `vdsm.client` behaves: CONNECT, SUBSCRIBE to a private
//! reply queue, then SEND one-element batches to `jms.topic.vdsm_requests` with `reply-to` set.
//! It can also subscribe to `jms.queue.events`. Used by the tests, the benchmarks and the CLI's
//! `--stomp` mode; works over any stream (TCP, TLS, Unix socket).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;

use super::ClientError;
use crate::api::events::EVENT_QUEUE;
use crate::rpc::stomp::frame::{Frame, Incoming, StompCodec};

/// The request destination VDSM's clients use.
pub const REQUEST_QUEUE: &str = "jms.topic.vdsm_requests";

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// A connected STOMP client.
pub struct StompClient<S> {
    writer: tokio::sync::Mutex<WriteHalf<S>>,
    reply_queue: String,
    pending: Pending,
    timeout: Duration,
    events: Option<mpsc::Receiver<Value>>,
    reader: tokio::task::JoinHandle<()>,
}

impl<S> Drop for StompClient<S> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> StompClient<S> {
    /// Connects over `stream`, subscribes to a fresh reply queue and, when `events` is set,
    /// to the event queue. Each call then waits at most `timeout`.
    pub async fn connect(stream: S, timeout: Duration, events: bool) -> Result<Self, ClientError> {
        let (reader, writer) = tokio::io::split(stream);
        let mut frames = FramedRead::new(reader, StompCodec::default());
        let mut writer = writer;
        let reply_queue = uuid::Uuid::new_v4().to_string();
        let connect = Frame::new("CONNECT")
            .with_header("accept-version", "1.2")
            .with_header("heart-beat", "0,0");
        write(&mut writer, &connect).await?;
        let connected = tokio::time::timeout(timeout, next_frame(&mut frames))
            .await
            .map_err(|_| ClientError::Transport("no CONNECTED within the timeout".into()))??;
        if connected.command != "CONNECTED" {
            return Err(ClientError::Transport(format!(
                "server answered CONNECT with {}: {}",
                connected.command,
                String::from_utf8_lossy(&connected.body)
            )));
        }
        let subscribe = |destination: &str| {
            Frame::new("SUBSCRIBE")
                .with_header("destination", destination)
                .with_header("id", &uuid::Uuid::new_v4().to_string())
                .with_header("ack", "auto")
        };
        write(&mut writer, &subscribe(&reply_queue)).await?;
        let (event_tx, event_rx) = mpsc::channel(1024);
        if events {
            write(&mut writer, &subscribe(EVENT_QUEUE)).await?;
        }
        let pending: Pending = Arc::default();
        let reader = tokio::spawn(route_messages(frames, Arc::clone(&pending), event_tx));
        Ok(Self {
            writer: tokio::sync::Mutex::new(writer),
            reply_queue,
            pending,
            timeout,
            events: events.then_some(event_rx),
            reader,
        })
    }

    /// Calls `method` with `params` (an object or a list) as a one-element batch, as
    /// vdsm-client does, with an optional flow id.
    pub async fn call(
        &self,
        method: &str,
        params: Value,
        flow: Option<&str>,
    ) -> Result<Value, ClientError> {
        let id = uuid::Uuid::new_v4().to_string();
        let body = json!([{"jsonrpc": "2.0", "method": method, "params": params, "id": id}]);
        let mut frame = Frame::new("SEND")
            .with_header("destination", REQUEST_QUEUE)
            .with_header("content-type", "application/json")
            .with_header("reply-to", &self.reply_queue);
        if let Some(flow) = flow {
            frame = frame.with_header("ovirtCorrelationId", flow);
        }
        let frame = frame.with_body(body.to_string());
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id.clone(), tx);
        if let Err(err) = write(&mut *self.writer.lock().await, &frame).await {
            lock(&self.pending).remove(&id);
            return Err(err);
        }
        let reply = tokio::time::timeout(self.timeout, rx).await;
        lock(&self.pending).remove(&id);
        let reply = reply
            .map_err(|_| ClientError::Transport(format!("no reply to {method} in time")))?
            .map_err(|_| ClientError::Transport("connection closed".into()))?;
        reply_result(reply)
    }

    /// The next event (`{"method": ..., "params": ...}`), if the client subscribed to them.
    pub async fn next_event(&mut self) -> Option<Value> {
        self.events.as_mut()?.recv().await
    }

    /// Sends raw bytes (tests of malformed input).
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<(), ClientError> {
        let mut writer = self.writer.lock().await;
        writer
            .write_all(bytes)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))
    }
}

fn lock(pending: &Pending) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Value>>> {
    pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn reply_result(reply: Value) -> Result<Value, ClientError> {
    if let Some(error) = reply.get("error") {
        return Err(ClientError::Server {
            code: error
                .get("code")
                .and_then(Value::as_i64)
                .and_then(|c| i32::try_from(c).ok())
                .unwrap_or(0),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        });
    }
    Ok(reply.get("result").cloned().unwrap_or(Value::Null))
}

async fn write<W: AsyncWrite + Unpin>(writer: &mut W, frame: &Frame) -> Result<(), ClientError> {
    let bytes = frame.to_bytes();
    writer
        .write_all(&bytes)
        .await
        .and(writer.flush().await)
        .map_err(|e| ClientError::Transport(e.to_string()))
}

async fn next_frame<R: AsyncRead + Unpin>(
    frames: &mut FramedRead<R, StompCodec>,
) -> Result<Frame, ClientError> {
    loop {
        match frames.next().await {
            Some(Ok(Incoming::Frame(frame))) => return Ok(frame),
            Some(Ok(Incoming::HeartBeat)) => {}
            Some(Err(err)) => return Err(ClientError::Transport(err.to_string())),
            None => return Err(ClientError::Transport("connection closed".into())),
        }
    }
}

/// Replies go to the waiting call by id (a bare object or a batch); notifications are events.
async fn route_messages<R: AsyncRead + Unpin>(
    mut frames: FramedRead<R, StompCodec>,
    pending: Pending,
    events: mpsc::Sender<Value>,
) {
    while let Ok(frame) = next_frame(&mut frames).await {
        if frame.command != "MESSAGE" {
            tracing::warn!(command = %frame.command, body = %String::from_utf8_lossy(&frame.body), "STOMP frame from server");
            continue;
        }
        let Ok(body) = serde_json::from_slice::<Value>(&frame.body) else {
            continue;
        };
        let items = match body {
            Value::Array(items) => items,
            one => vec![one],
        };
        for item in items {
            match item.get("id").and_then(Value::as_str) {
                Some(id) => {
                    if let Some(waiter) = lock(&pending).remove(id) {
                        let _ = waiter.send(item);
                    }
                }
                None if item.get("method").is_some() => {
                    let _ = events.try_send(item);
                }
                None => {}
            }
        }
    }
    lock(&pending).clear();
}
