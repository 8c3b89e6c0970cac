//! Broker-neutral publisher: bounded in-flight unconfirmed messages, a
//! connection kept up with backoff, and re-sending of unconfirmed messages
//! after a reconnect.
//!
//! A broker plugs in by implementing [`Transport`]; [`Publisher<T>`] is then
//! its `tower::Service<Event>`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::error::PublishError;
use super::event::{ContentMode, Event};
use crate::error::BoxError;

mod queue;
mod service;
#[cfg(test)]
mod tests;
mod worker;

pub use self::service::{Publisher, ResponseFuture};

/// One broker's client, driven by a [`Publisher`].
///
/// The publisher owns the transport in its connection task, a worker fed by
/// a bounded channel (the shape of `tower::buffer`'s worker): it calls
/// [`connect`](Transport::connect) (again after a connection is lost, with
/// backoff), then [`publish`](Transport::publish) for every message in
/// order, and waits for the returned confirmations. Callers only queue
/// their messages; the transport is used by that task alone, on the
/// runtime the publisher was started on.
///
/// Errors tell the publisher what to do: a [`PublishError::ConnectionLost`]
/// or [`PublishError::ConfirmTimeout`] from `publish` or from a confirmation
/// means the connection is broken — the publisher reconnects and sends every
/// unconfirmed message again, in order (a re-send if it was
/// [written](Transport::written) to the broken connection, else a first
/// send; a `publish` that failed did not hand its message over). Any other
/// error fails that message alone.
///
/// # Example
///
/// An in-memory broker that takes messages in batches and confirms them in
/// order:
///
/// ```
/// use std::future::Future;
/// use std::pin::Pin;
/// use std::sync::{Arc, Mutex};
///
/// use tokio::sync::oneshot;
/// use tower::{Service, ServiceExt};
/// use tower_mesh::publish::{
///     Confirmation, Event, LostSignal, Outgoing, PublishError, Publisher, PublisherConfig, Transport,
/// };
/// use tower_mesh::BoxError;
///
/// type Reply = oneshot::Sender<Result<Confirmation, PublishError>>;
///
/// #[derive(Clone, Default)]
/// struct Memory {
///     batches: Arc<Mutex<Vec<Vec<String>>>>,
/// }
///
/// /// The messages `publish` added since the last flush.
/// #[derive(Default)]
/// struct Session {
///     batch: Vec<(String, Reply)>,
/// }
///
/// impl Transport for Memory {
///     const BROKER: &'static str = "memory";
///     const BATCHES: bool = true;
///     const CONFIRMS_IN_ORDER: bool = true;
///     type Connection = Session;
///     type Confirm = Pin<Box<dyn Future<Output = Result<Confirmation, PublishError>> + Send>>;
///
///     async fn connect(&mut self, _lost: LostSignal) -> Result<Session, BoxError> {
///         Ok(Session::default())
///     }
///
///     fn publish<'a>(
///         &'a mut self,
///         conn: &'a mut Session,
///         msg: &'a Outgoing,
///     ) -> impl Future<Output = Result<Self::Confirm, PublishError>> + Send + 'a {
///         let (tx, rx) = oneshot::channel();
///         conn.batch.push((msg.event.id().to_owned(), tx));
///         let lost = PublishError::ConnectionLost { broker: "memory", attempts: 0 };
///         let confirm: Self::Confirm = Box::pin(async move { rx.await.unwrap_or(Err(lost)) });
///         std::future::ready(Ok(confirm))
///     }
///
///     fn flush<'a>(&'a mut self, conn: &'a mut Session) -> impl Future<Output = ()> + Send + 'a {
///         let (ids, replies): (Vec<_>, Vec<_>) = conn.batch.drain(..).unzip();
///         self.batches.lock().unwrap().push(ids);
///         for (n, reply) in replies.into_iter().enumerate() {
///             let _ = reply.send(Ok(Confirmation { sequence: Some(n as u64), ..Default::default() }));
///         }
///         std::future::ready(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let memory = Memory::default();
/// let mut publisher = Publisher::new(memory.clone(), PublisherConfig::default()).unwrap();
/// let mut receipts = Vec::new();
/// for n in 0..3 {
///     let event = Event::builder("/demo", "demo.created").id(format!("e{n}")).build().unwrap();
///     receipts.push(publisher.ready().await.unwrap().call(event));
/// }
/// for (n, receipt) in receipts.into_iter().enumerate() {
///     assert_eq!(receipt.await.unwrap().confirmation.sequence, Some(n as u64));
/// }
/// // Handed in without a pause in between: one batch.
/// assert_eq!(*memory.batches.lock().unwrap(), [vec!["e0", "e1", "e2"]]);
/// # }
/// ```
pub trait Transport: Send + 'static {
    /// Broker name for errors, metrics (`broker` label) and logs.
    const BROKER: &'static str;
    /// An open connection (and channel / session).
    type Connection: Send + 'static;
    /// Resolves when the broker confirms (or refuses) one message.
    type Confirm: Future<Output = Result<Confirmation, PublishError>> + Unpin + Send + 'static;

    /// `true` when the broker confirms the messages of a connection in the
    /// order they were sent (Redis replies, MQTT `PUBACK`s, RabbitMQ
    /// delivery tags). The publisher then polls only the oldest
    /// confirmation, and keeps the others in a plain queue instead of giving
    /// each a waker of its own (one allocation per message less). A
    /// confirmation that comes early is only seen after the older ones.
    const CONFIRMS_IN_ORDER: bool = false;

    /// Open a connection. Call [`LostSignal::fire`] (from the client's
    /// error / disconnect callback) when it breaks while idle.
    fn connect(&mut self, lost: LostSignal) -> impl Future<Output = Result<Self::Connection, BoxError>> + Send;

    /// Hand one message to the connection; the returned future resolves on
    /// the broker's confirmation.
    fn publish<'a>(
        &'a mut self,
        conn: &'a mut Self::Connection,
        msg: &'a Outgoing,
    ) -> impl Future<Output = Result<Self::Confirm, PublishError>> + Send + 'a;

    /// `true` when [`publish`](Transport::publish) only adds the message to
    /// a batch that [`flush`](Transport::flush) sends. The connection task
    /// then hands every message that is waiting to `publish` before it
    /// calls `flush`: the messages callers hand in while it is busy go out
    /// together.
    const BATCHES: bool = false;

    /// Send the messages [`publish`](Transport::publish) added since the
    /// last flush, in order. Called after one or more `publish` calls, when
    /// no other message is waiting; a failure shows in the messages'
    /// confirmations. Does nothing by default.
    fn flush<'a>(&'a mut self, conn: &'a mut Self::Connection) -> impl Future<Output = ()> + Send + 'a {
        let _ = conn;
        std::future::ready(())
    }

    /// Whether the message of `confirm` was written to its connection.
    /// Asked when the connection broke before the message was confirmed: of
    /// a confirmation still pending, or one that failed with the connection
    /// error (never polled again after that).
    ///
    /// A message that was written may be stored by the broker: the publisher
    /// sends it again and counts the send ([`Receipt::sends`],
    /// [`max_resends`](super::PublisherConfig::max_resends)). One that was not is
    /// sent on the next connection as if for the first time. The default,
    /// `true`, is right for a transport that cannot tell (at least once);
    /// RabbitMQ knows which frames reached the socket.
    fn written(_confirm: &mut Self::Confirm) -> bool {
        true
    }
}

/// What a broker says about a confirmed message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Confirmation {
    /// Stream sequence, delivery tag or offset, when the broker gives one.
    pub sequence: Option<u64>,
    /// Partition, when the broker has them.
    pub partition: Option<i32>,
    /// The broker recognised the message as a duplicate (same event id) and
    /// did not store it again.
    pub duplicate: bool,
}

/// A message on its way to a broker: the event and its encoded body.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The event.
    pub event: Event,
    /// The message body for [`mode`](Outgoing::mode).
    pub body: Bytes,
    /// Structured or binary.
    pub mode: ContentMode,
    /// How many times this message has been handed to a connection before
    /// (0 on the first send); a re-send after a reconnect has `attempt > 0`.
    pub attempt: u32,
}

impl Outgoing {
    /// Encode `event` for `mode`.
    pub fn new(event: Event, mode: ContentMode) -> Self {
        let (body, _) = event.body(mode);
        Outgoing { event, body, mode, attempt: 0 }
    }

    /// The message content type (see [`Event::body`]).
    pub fn content_type(&self) -> Option<&str> {
        match self.mode {
            ContentMode::Structured => Some(super::event::STRUCTURED_CONTENT_TYPE),
            ContentMode::Binary => match (self.event.datacontenttype(), self.event.data()) {
                (Some(ct), _) => Some(ct),
                (None, Some(_)) => Some("application/json"),
                (None, None) => None,
            },
        }
    }
}

/// A confirmed publish: the response of every publisher.
#[derive(Clone, Debug)]
pub struct Receipt {
    /// The event that was confirmed.
    pub event: Event,
    /// The broker that confirmed it.
    pub broker: &'static str,
    /// What the broker said.
    pub confirmation: Confirmation,
    /// How many connections the message was written to: 1, or more when a
    /// connection broke after the message was written and before the broker
    /// confirmed it, and the publisher sent it again. The broker may hold
    /// that many copies (unless it drops copies by event id, as JetStream
    /// and an idempotent Kafka producer do). A message that never reached a
    /// broken connection is not counted again.
    pub sends: u32,
}

impl Receipt {
    /// `true` when the message was sent more than once
    /// ([`sends`](Receipt::sends) > 1): the broker may have stored a copy
    /// (same event id) besides the confirmed one.
    pub fn resent(&self) -> bool {
        self.sends > 1
    }
}

/// Tells a [`Publisher`] that its connection broke while idle. Cheap to
/// clone; each connection gets its own, so a late callback of an old
/// connection does nothing.
#[derive(Clone, Debug, Default)]
pub struct LostSignal {
    inner: Arc<LostInner>,
}

#[derive(Debug, Default)]
struct LostInner {
    fired: AtomicBool,
    waker: AtomicWaker,
}

impl LostSignal {
    /// Report the connection as broken.
    pub fn fire(&self) {
        self.inner.fired.store(true, Ordering::Release);
        self.inner.waker.wake();
    }

    /// `true` once [`fire`](LostSignal::fire) was called.
    pub fn is_fired(&self) -> bool {
        self.inner.fired.load(Ordering::Acquire)
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_fired() {
            return Poll::Ready(());
        }
        self.inner.waker.register(cx.waker());
        if self.is_fired() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// The connection state a [`Publisher`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connecting (first time or after a loss); no attempt has failed yet.
    /// `poll_ready` is ready (given in-flight room); a message handed in
    /// waits in its response future for the connection.
    Connecting,
    /// Connected: `poll_ready` waits only for in-flight capacity.
    Connected,
    /// The last connection attempt failed; reconnecting in the background.
    /// `poll_ready` is ready and calls fail at once with
    /// [`PublishError::Unavailable`], so a circuit breaker above sees them —
    /// unless [`outage_wait`](super::PublisherConfig::outage_wait) is set: then
    /// calls are accepted (up to `max_in_flight`) and wait for the broker.
    Down,
}

impl ConnectionState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => ConnectionState::Connected,
            2 => ConnectionState::Down,
            _ => ConnectionState::Connecting,
        }
    }
    fn as_u8(self) -> u8 {
        match self {
            ConnectionState::Connecting => 0,
            ConnectionState::Connected => 1,
            ConnectionState::Down => 2,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Down => "down",
        }
    }
}

/// What a publisher's handles and its connection task share.
struct Shared {
    broker: &'static str,
    name: Arc<str>,
    state: AtomicU8,
    changed: Arc<Notify>,
    last_error: Mutex<Option<Arc<dyn std::error::Error + Send + Sync>>>,
}

impl Shared {
    fn state(&self) -> ConnectionState {
        ConnectionState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, state: ConnectionState) {
        let old = ConnectionState::from_u8(self.state.swap(state.as_u8(), Ordering::AcqRel));
        if old != state {
            tracing::info!(service = %self.name, broker = self.broker, from = old.as_str(), to = state.as_str(), "publisher connection state changed");
            metrics::gauge!("tower_mesh_publish_connected", "service" => self.name.to_string(), "broker" => self.broker)
                .set(if state == ConnectionState::Connected { 1.0 } else { 0.0 });
        }
        self.changed.notify_waiters();
    }

    fn unavailable(&self) -> PublishError {
        let source = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| Arc::new(std::io::Error::other("not connected")));
        PublishError::Unavailable { broker: self.broker, source }
    }
}

/// A message handed in, with its caller's reply and its capacity permit.
struct Job {
    out: Outgoing,
    reply: oneshot::Sender<Result<Receipt, PublishError>>,
    /// When the message was last handed to a connection (set by `send`).
    sent_at: Option<Instant>,
    /// How many connections it was written to.
    sends: u32,
    /// When `call` handed it in, if the publisher was not connected then:
    /// it fails after [`outage_wait`](super::PublisherConfig::outage_wait)
    /// unless a connection takes it. `None`: handed in while connected, it
    /// waits for the next connection however long that takes (like a
    /// message already sent); the clock is not read for it.
    queued_unconnected: Option<Instant>,
    _permit: OwnedSemaphorePermit,
}
