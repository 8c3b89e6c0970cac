//! Redis publisher (`redis` feature, [redis-rs]): Redis Streams or pub/sub.
//!
//! **Streams** (default): each event is appended with `XADD <key> [MAXLEN ~ n] *`
//! to the stream named by [`RedisBuilder::stream`] (default: the event type);
//! the response future resolves on the command's reply, the new entry id
//! (Redis has written the entry). `MAXLEN ~ n` ([`RedisBuilder::max_len`])
//! trims the stream approximately, as Redis does cheaply.
//!
//! Entry fields: `id`, `source`, `type`, `specversion`, `time`, … — every
//! CloudEvents attribute under its own name (the pairs of
//! [`Event::header_pairs`], `traceparent` and `tracestate` included) — then
//! `content-type` and `body` (the encoded message, see
//! [`ContentMode`](super::ContentMode)). A consumer reads it back with
//! [`Redis::event_from_fields`].
//!
//! **Pub/sub** ([`RedisBuilder::pubsub`]): `PUBLISH <channel> <body>`; pub/sub
//! has no headers, so use the structured (JSON envelope) mode there. The reply
//! is the number of subscribers that received the message; with
//! [`RedisBuilder::require_subscriber`] a message nobody received is
//! [`PublishError::Unroutable`].
//!
//! Commands go over one multiplexed connection, in order. The messages
//! waiting when the publisher's connection task gets to them (handed in
//! while it was busy, or before it was scheduled) are sent together, as one pipeline (one write and one request
//! of the connection for all of them), each still with its own reply: a command the server
//! refuses (`WRONGTYPE`...) fails its own message only. A broken connection
//! fails the outstanding commands: the publisher reconnects with backoff and
//! sends them again (at least once; a stream may then hold a message twice,
//! with the same event id). A reply slower than
//! [`PublisherConfig::confirm_timeout`] counts as a broken connection.
//!
//! ```no_run
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_mesh::publish::Event;
//! use tower_mesh::publish::redis::Redis;
//!
//! # async fn demo() -> Result<(), tower_mesh::BoxError> {
//! let publisher = Redis::builder("redis://127.0.0.1:6379")
//!     .stream(|e: &Event| format!("orders:{}", e.ty()))
//!     .max_len(100_000)
//!     .build()?;
//! let svc = ServiceBuilder::new()
//!     // .layer(timeout).layer(retry).layer(circuit breaker)...
//!     .service(publisher);
//! let event = Event::builder("/orders", "created").json(&serde_json::json!({"id": 42}))?.build()?;
//! let receipt = svc.oneshot(event).await?;
//! println!("appended {}", receipt.event.id());
//! # Ok(()) }
//! ```
//!
//! [redis-rs]: https://docs.rs/redis

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::task::{Context, Poll, Wake, Waker};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, Value};

use super::{
    Confirmation, Event, InvalidEvent, LostSignal, Outgoing, PublishError, Publisher, PublisherConfig, Transport,
};
use crate::error::BoxError;

const BROKER: &str = "redis";

/// Stream entry field holding the encoded message.
pub const BODY_FIELD: &str = "body";
/// Stream entry field holding the content type of [`BODY_FIELD`].
pub const CONTENT_TYPE_FIELD: &str = "content-type";

/// Longest stream key or channel name accepted (Redis allows 512 MB; a key
/// this long is a bug).
const MAX_KEY_LEN: usize = 1024;

/// A Redis publisher: [`Publisher`] over [`Redis`].
pub type RedisPublisher = Publisher<Redis>;

/// How the stream key or channel of an event is chosen.
pub type KeyFn = Arc<dyn Fn(&Event) -> String + Send + Sync>;

#[derive(Clone)]
enum Target {
    Stream { key: KeyFn, max_len: Option<usize> },
    PubSub { channel: KeyFn, require_subscriber: bool },
}

/// The Redis [`Transport`]: one multiplexed connection.
pub struct Redis {
    client: Result<::redis::Client, Arc<RedisError>>,
    target: Target,
    confirm_timeout: std::time::Duration,
    connect_timeout: std::time::Duration,
    max_in_flight: usize,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: leave it out.
        let target = match &self.target {
            Target::Stream { max_len, .. } => format!("stream (max_len {max_len:?})"),
            Target::PubSub { .. } => "pubsub".to_owned(),
        };
        f.debug_struct("Redis").field("target", &target).finish_non_exhaustive()
    }
}

impl Redis {
    /// Start configuring a publisher for the server at `url`
    /// (`redis://[user:password@]host:6379[/db]`, `rediss://` needs TLS
    /// features of the redis crate).
    pub fn builder(url: impl AsRef<str>) -> RedisBuilder {
        let defaults = PublisherConfig::default();
        RedisBuilder {
            transport: Redis {
                client: ::redis::Client::open(url.as_ref()).map_err(Arc::new),
                target: Target::Stream { key: Arc::new(|e: &Event| e.ty().to_owned()), max_len: None },
                confirm_timeout: defaults.confirm_timeout,
                connect_timeout: defaults.connect_timeout,
                max_in_flight: defaults.max_in_flight,
            },
            config: PublisherConfig { name: BROKER.into(), ..defaults },
        }
    }

    /// The `XADD` field/value pairs of `msg` (public so that a benchmark can
    /// make the raw client send exactly the same entry).
    pub fn fields(msg: &Outgoing) -> Vec<(&str, std::borrow::Cow<'_, [u8]>)> {
        use std::borrow::Cow;
        let mut fields: Vec<(&str, Cow<'_, [u8]>)> = Vec::with_capacity(16);
        for (name, value) in msg.event.header_pairs() {
            let value = match value {
                Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
                Cow::Owned(s) => Cow::Owned(s.into_bytes()),
            };
            fields.push((name, value));
        }
        if let Some(ct) = msg.content_type() {
            fields.push((CONTENT_TYPE_FIELD, Cow::Borrowed(ct.as_bytes())));
        }
        fields.push((BODY_FIELD, Cow::Borrowed(&msg.body[..])));
        fields
    }

    /// The event in a stream entry written by this publisher in structured
    /// mode (its `body` field is the CloudEvents JSON envelope).
    pub fn event_from_fields<'a, I, V>(fields: I) -> Result<Event, InvalidEvent>
    where
        I: IntoIterator<Item = (&'a str, V)>,
        V: AsRef<[u8]>,
    {
        for (name, value) in fields {
            if name == BODY_FIELD {
                return Event::from_structured_json(value.as_ref());
            }
        }
        Err(InvalidEvent::Invalid { attribute: "data", reason: "the entry has no body field" })
    }

    fn command(&self, msg: &Outgoing) -> Result<(Cmd, Kind), PublishError> {
        match &self.target {
            Target::Stream { key, max_len } => {
                let key = key(&msg.event);
                check_key(&key)?;
                let mut cmd = ::redis::cmd("XADD");
                cmd.arg(&key);
                if let Some(n) = max_len {
                    cmd.arg("MAXLEN").arg("~").arg(*n);
                }
                cmd.arg("*");
                for (name, value) in Redis::fields(msg) {
                    cmd.arg(name).arg(&value[..]);
                }
                Ok((cmd, Kind::Stream))
            }
            Target::PubSub { channel, require_subscriber } => {
                let channel = channel(&msg.event);
                check_key(&channel)?;
                let mut cmd = ::redis::cmd("PUBLISH");
                cmd.arg(&channel).arg(&msg.body[..]);
                Ok((cmd, Kind::PubSub { require_subscriber: *require_subscriber }))
            }
        }
    }
}

fn check_key(key: &str) -> Result<(), PublishError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(PublishError::InvalidEvent(InvalidEvent::Invalid {
            attribute: "type",
            reason: "does not make a Redis key (empty or longer than 1024 bytes)",
        }));
    }
    Ok(())
}

/// Builder of a [`RedisPublisher`].
pub struct RedisBuilder {
    transport: Redis,
    config: PublisherConfig,
}

impl fmt::Debug for RedisBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBuilder").field("transport", &self.transport).field("config", &self.config).finish()
    }
}

impl RedisBuilder {
    /// Append to Redis Streams (the default), the stream key chosen by `key`
    /// (default: the event type). Keeps a [`max_len`](Self::max_len) set before.
    pub fn stream(mut self, key: impl Fn(&Event) -> String + Send + Sync + 'static) -> Self {
        let max_len = match &self.transport.target {
            Target::Stream { max_len, .. } => *max_len,
            Target::PubSub { .. } => None,
        };
        self.transport.target = Target::Stream { key: Arc::new(key), max_len };
        self
    }

    /// Trim streams to about `n` entries on every append (`MAXLEN ~ n`).
    /// Only for stream mode; switches a pub/sub builder back to streams
    /// keyed by event type.
    pub fn max_len(mut self, n: usize) -> Self {
        match &mut self.transport.target {
            Target::Stream { max_len, .. } => *max_len = Some(n),
            Target::PubSub { .. } => {
                self.transport.target =
                    Target::Stream { key: Arc::new(|e: &Event| e.ty().to_owned()), max_len: Some(n) }
            }
        }
        self
    }

    /// Publish with `PUBLISH` to the channel chosen by `channel` instead of
    /// appending to a stream.
    pub fn pubsub(mut self, channel: impl Fn(&Event) -> String + Send + Sync + 'static) -> Self {
        self.transport.target = Target::PubSub { channel: Arc::new(channel), require_subscriber: false };
        self
    }

    /// In pub/sub mode, fail a message no subscriber received with
    /// [`PublishError::Unroutable`] (default: succeed with nobody listening).
    pub fn require_subscriber(mut self, required: bool) -> Self {
        if let Target::PubSub { require_subscriber, .. } = &mut self.transport.target {
            *require_subscriber = required;
        }
        self
    }

    /// The publisher settings (in-flight bound, reconnect backoff, mode...).
    pub fn config(mut self, config: PublisherConfig) -> Self {
        self.config = config;
        self
    }

    /// Start the publisher (inside a Tokio runtime); it connects in the
    /// background. A malformed URL is a [`PublishError::Config`]-like
    /// [`PublishError::Client`] error here.
    pub fn build(mut self) -> Result<RedisPublisher, PublishError> {
        if let Err(e) = &self.transport.client {
            return Err(PublishError::Client { broker: BROKER, source: Box::new(SharedError(e.clone())) });
        }
        self.transport.confirm_timeout = self.config.confirm_timeout;
        self.transport.connect_timeout = self.config.connect_timeout;
        self.transport.max_in_flight = self.config.max_in_flight;
        Publisher::new(self.transport, self.config)
    }
}

/// A [`RedisError`] shared between the builder and the error it returned.
#[derive(Debug)]
struct SharedError(Arc<RedisError>);

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// An open multiplexed Redis connection, and the commands waiting for the
/// next flush.
pub struct RedisConnection {
    conn: MultiplexedConnection,
    queued: Option<(Pipeline, Arc<Batch>)>,
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection").finish_non_exhaustive()
    }
}

/// The error of a whole batch, for each of its messages: a timeout, a broken
/// connection, a refusal, or a client error.
fn map_error(e: &Arc<RedisError>) -> PublishError {
    if e.is_timeout() {
        PublishError::ConfirmTimeout { broker: BROKER }
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_unrecoverable_error() {
        PublishError::ConnectionLost { broker: BROKER, attempts: 0 }
    } else if e.code().is_some() {
        // The server refused the command (WRONGTYPE, OOM, NOPERM...).
        PublishError::Rejected { broker: BROKER, reason: e.to_string() }
    } else {
        PublishError::Client { broker: BROKER, source: Box::new(SharedError(e.clone())) }
    }
}

impl Transport for Redis {
    const BROKER: &'static str = BROKER;
    // One connection answers its commands in order.
    const CONFIRMS_IN_ORDER: bool = true;
    const BATCHES: bool = true;
    type Connection = RedisConnection;
    type Confirm = RedisConfirm;

    async fn connect(&mut self, _lost: LostSignal) -> Result<RedisConnection, BoxError> {
        // No idle-loss callback: redis-rs reports a dropped connection only
        // to RESP3 push listeners. The next command fails instead, and the
        // publisher reconnects and re-sends it.
        let client = match &self.client {
            Ok(c) => c,
            Err(e) => return Err(Box::new(SharedError(e.clone()))),
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.confirm_timeout))
            // Room for every unconfirmed message: a batch must enter the
            // connection's queue on its first poll (see `flush`). A full
            // queue would hand out places in order but take the batches in
            // the order their futures are polled again, which is not
            // publish order.
            .set_pipeline_buffer_size(self.max_in_flight.max(1));
        let conn = client.get_multiplexed_async_connection_with_config(&config).await?;
        Ok(RedisConnection { conn, queued: None })
    }

    /// Adds the command to the batch that the next [`flush`](Transport::flush)
    /// sends as one pipeline.
    fn publish<'a>(
        &'a mut self,
        conn: &'a mut RedisConnection,
        msg: &'a Outgoing,
    ) -> impl Future<Output = Result<RedisConfirm, PublishError>> + Send + 'a {
        let queued = self.command(msg).map(|(cmd, kind)| {
            let (pipeline, batch) = conn.queued.get_or_insert_with(|| (Pipeline::new(), Arc::new(Batch::default())));
            let index = pipeline.len();
            pipeline.add_command(cmd);
            RedisConfirm { batch: batch.clone(), index, kind, waiting: None }
        });
        std::future::ready(queued)
    }

    fn flush<'a>(&'a mut self, conn: &'a mut RedisConnection) -> impl Future<Output = ()> + Send + 'a {
        let queued = conn.queued.take().map(|(pipeline, batch)| (pipeline, batch, conn.conn.clone()));
        async move {
            let Some((pipeline, batch, mut c)) = queued else { return };
            let count = pipeline.len();
            // redis-rs's reply future is not nameable: one allocation per
            // batch, next to the command buffer it packs anyway.
            // `unconstrained`: with tokio's cooperative budget spent, the
            // first poll would return Pending without queueing the batch,
            // and a later batch could overtake it.
            let reply: ReplyFuture =
                Box::pin(tokio::task::unconstrained(async move { c.send_packed_commands(&pipeline, 0, count).await }));
            // Poll once here so the batch is queued on the connection now,
            // in publish order, before the next one (the connection's queue
            // has room for `max_in_flight` batches).
            batch.start(reply);
        }
    }
}

type ReplyFuture = Pin<Box<dyn Future<Output = Result<Vec<Value>, RedisError>> + Send>>;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Stream,
    PubSub { require_subscriber: bool },
}

/// The commands of one flush, sent as one pipeline, and their replies.
///
/// The reply future is polled with the batch itself as waker; waking it
/// wakes the confirmations waiting on the batch, and the first of them to
/// run polls the reply.
#[derive(Default)]
struct Batch {
    state: Mutex<BatchState>,
    /// Woken and not yet passed on to the waiting confirmations. Whoever
    /// holds the lock passes it on after unlocking, so a wake-up that comes
    /// while the reply is being polled (even from inside that poll, on the
    /// same thread) never waits for the lock.
    notified: AtomicBool,
}

#[derive(Default)]
struct BatchState {
    /// Set by the flush, until the reply came.
    reply: Option<ReplyFuture>,
    /// The replies, each taken by its confirmation.
    done: Option<Result<Vec<Value>, Arc<RedisError>>>,
    /// Confirmations polled before the reply came.
    waiting: Vec<Waker>,
    /// How many times `waiting` was emptied to wake them: a confirmation
    /// polled again after that adds its waker again.
    woken: u64,
}

impl Batch {
    fn lock(&self) -> std::sync::MutexGuard<'_, BatchState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queue the batch on the connection (its first poll) and keep its reply.
    fn start(self: &Arc<Self>, reply: ReplyFuture) {
        let mut state = self.lock();
        state.reply = Some(reply);
        if state.poll_reply(self) {
            self.notified.store(true, Ordering::Release);
        }
        drop(state);
        self.wake_waiting();
    }

    /// Wake the waiting confirmations if the batch was woken, unless
    /// another thread holds the lock (it does so once it let go).
    fn wake_waiting(&self) {
        while self.notified.load(Ordering::Acquire) {
            let mut state = match self.state.try_lock() {
                Ok(state) => state,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            self.notified.store(false, Ordering::Release);
            let waiting = state.take_waiting();
            drop(state);
            waiting.into_iter().for_each(Waker::wake);
        }
    }
}

impl BatchState {
    /// The waiting confirmations, to be woken once the lock is released.
    fn take_waiting(&mut self) -> Vec<Waker> {
        self.woken += 1;
        std::mem::take(&mut self.waiting)
    }

    /// Poll the reply, with the batch as waker; `true` once it came.
    fn poll_reply(&mut self, batch: &Arc<Batch>) -> bool {
        let Some(reply) = &mut self.reply else { return self.done.is_some() };
        let waker = Waker::from(batch.clone());
        match reply.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Pending => false,
            Poll::Ready(result) => {
                self.reply = None;
                self.done = Some(result.map_err(Arc::new));
                true
            }
        }
    }
}

impl Wake for Batch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.notified.store(true, Ordering::Release);
        self.wake_waiting();
    }
}

/// Resolves on Redis's reply to one `XADD` or `PUBLISH`.
pub struct RedisConfirm {
    batch: Arc<Batch>,
    index: usize,
    kind: Kind,
    /// Its waker is among the batch's waiting ones since this many wake-ups.
    waiting: Option<u64>,
}

impl fmt::Debug for RedisConfirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfirm").field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl Future for RedisConfirm {
    type Output = Result<Confirmation, PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut state = this.batch.lock();
        if !state.poll_reply(&this.batch) {
            if this.waiting != Some(state.woken) {
                state.waiting.push(cx.waker().clone());
                this.waiting = Some(state.woken);
            }
            drop(state);
            this.batch.wake_waiting();
            return Poll::Pending;
        }
        // The others can take their replies now.
        this.batch.notified.store(true, Ordering::Release);
        let result = match state.done.as_mut().expect("the reply came") {
            Err(e) => Err(map_error(e)),
            Ok(values) => match values.get_mut(this.index) {
                Some(value) => confirmation(this.kind, std::mem::replace(value, Value::Nil)),
                None => Err(PublishError::Client {
                    broker: BROKER,
                    source: format!("Redis answered {} commands of a larger pipeline", values.len()).into(),
                }),
            },
        };
        drop(state);
        this.batch.wake_waiting();
        Poll::Ready(result)
    }
}

/// The confirmation in a reply: `XADD` answers the new entry id
/// (`<ms>-<seq>`), `PUBLISH` the number of subscribers reached.
fn confirmation(kind: Kind, value: Value) -> Result<Confirmation, PublishError> {
    match (kind, value) {
        (Kind::Stream, Value::BulkString(_) | Value::SimpleString(_)) => Ok(Confirmation::default()),
        (Kind::PubSub { require_subscriber }, Value::Int(n)) => {
            if require_subscriber && n == 0 {
                Err(PublishError::Unroutable {
                    broker: BROKER,
                    code: None,
                    reason: "no subscriber on the channel".into(),
                })
            } else {
                Ok(Confirmation { sequence: u64::try_from(n).ok(), ..Default::default() })
            }
        }
        (Kind::Stream, Value::Nil) => {
            Err(PublishError::Rejected { broker: BROKER, reason: "XADD added no entry".into() })
        }
        (_, Value::ServerError(e)) => Err(PublishError::Rejected { broker: BROKER, reason: e.to_string() }),
        (_, other) => Err(PublishError::Client {
            broker: BROKER,
            source: format!("unexpected reply from Redis: {other:?}").into(),
        }),
    }
}

#[cfg(test)]
mod tests;
