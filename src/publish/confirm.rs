//! Broker-neutral publisher: bounded in-flight unconfirmed messages, a
//! connection kept up with backoff, and re-sending of unconfirmed messages
//! after a reconnect.
//!
//! A broker plugs in by implementing [`Transport`]; [`Publisher<T>`] is then
//! its `tower::Service<Event>`.

use std::collections::VecDeque;
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Wake, Waker};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, AcquireError, Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;
use tower_service::Service;

use super::config::PublisherConfig;
use super::error::PublishError;
use super::event::{ContentMode, Event};
use crate::error::BoxError;

/// One broker's client, driven by a [`Publisher`].
///
/// The publisher owns the transport in one state machine, its connection
/// task: it calls [`connect`](Transport::connect) (again after a connection
/// is lost, with backoff), then [`publish`](Transport::publish) for every
/// message in order, and waits for the returned confirmations. The state
/// machine is polled by one thread at a time — the connection task or a
/// caller: right after handing over a message or, when the transport
/// [batches](Transport::BATCHES), at the first poll of its response future
/// that has to wait — always in the context of the runtime the publisher
/// was started on.
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
    /// a batch that [`flush`](Transport::flush) sends. The publisher then
    /// hands every message that is waiting to `publish` before it calls
    /// `flush`. A caller does not send its own message as it hands it in,
    /// so that the messages it hands in before it waits go out together:
    /// the first poll of a response future that has to wait sends the batch
    /// (unless the connection task is at it), as does the connection task,
    /// woken by the first message handed in.
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
    /// [`max_resends`](PublisherConfig::max_resends)). One that was not is
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
    /// unless [`outage_wait`](PublisherConfig::outage_wait) is set: then
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

struct Job {
    out: Outgoing,
    reply: oneshot::Sender<Result<Receipt, PublishError>>,
    /// When the message was last handed to a connection (set by `send`).
    sent_at: Option<Instant>,
    /// How many connections it was written to.
    sends: u32,
    /// When `call` handed it in.
    queued_at: Instant,
    /// Handed in while connected: it waits for the next connection however
    /// long that takes (like a message already sent), instead of failing
    /// after [`outage_wait`](PublisherConfig::outage_wait).
    accepted_connected: bool,
    _permit: OwnedSemaphorePermit,
}

/// A wait for a permit of the in-flight bound (slow path only).
type Acquiring = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A broker publisher as a `tower::Service<Event>`: the future resolves with
/// a [`Receipt`] once the broker confirmed the message.
///
/// - **Backpressure**: at most [`max_in_flight`](PublisherConfig::max_in_flight)
///   messages are unconfirmed at once; `poll_ready` waits for capacity.
/// - **Connection state**: `poll_ready` never waits for a connection: a
///   message handed in while connecting waits in its response future (which
///   a timeout above bounds); once a connection attempt has failed, calls
///   fail at once with [`PublishError::Unavailable`], or wait up to
///   [`outage_wait`](PublisherConfig::outage_wait) (see [`ConnectionState`]).
/// - **At least once**: a broken connection is re-established in the
///   background with [backoff](PublisherConfig::reconnect), and every
///   unconfirmed message is sent again, in order, with the same event id
///   (brokers that de-duplicate by id drop the copy) — counted as a re-send
///   ([`Receipt::sends`]) only if it had been written to the broken
///   connection. A message is failed with [`PublishError::ConnectionLost`]
///   only after [`max_resends`](PublisherConfig::max_resends) re-sends —
///   never dropped silently.
/// - **Cancellation**: dropping the response future does not un-send the
///   message; its capacity is released when the broker confirms it. A
///   message written to a connection that broke is re-sent even if its
///   caller gave up; one never written whose caller gave up is dropped while
///   the broker is unreachable (see [the rules](crate::publish#faults-the-rules)).
///
/// - **Sending**: `call` hands the message to the connection from the
///   caller's task when no other thread is doing the connection's work at
///   that moment (otherwise that thread takes it), so a message does not
///   wait for the connection task to be scheduled. A transport that sends
///   in batches ([`Transport::BATCHES`], Redis) is fed by the connection
///   task instead: it takes every message waiting, then flushes them at once.
///
/// Clones share the connection and the in-flight bound. The connection task
/// ends when every clone is dropped and every accepted message is settled.
pub struct Publisher<T: Transport> {
    /// What the clones share, behind one pointer: a clone (one per call
    /// under a retry layer) costs one reference count.
    handles: Arc<Handles>,
    permit: Option<OwnedSemaphorePermit>,
    /// Waiting for capacity (slow path only: the fast path takes a permit without allocating).
    acquiring: Option<Acquiring>,
    mode: ContentMode,
    _transport: std::marker::PhantomData<fn() -> T>,
}

/// The parts of a [`Publisher`] its clones share.
struct Handles {
    tx: mpsc::Sender<Job>,
    semaphore: Arc<Semaphore>,
    shared: Arc<Shared>,
    driver: Arc<DriverCell>,
    /// [`PublisherConfig::outage_wait`] is not zero: messages wait while down.
    waits_while_down: bool,
}

/// The connection task's future, shared by the task and the publisher's
/// handles: `call` polls it right after handing a message over, so the
/// message goes to the connection from the caller's task instead of waiting
/// for the connection task to be scheduled (one task hop, and the wake-up of
/// that task, less per message).
///
/// One poller at a time: a poller first moves [`DriverWake::state`] from
/// idle to running. It always polls with the [`DriverWake`] waker, so the
/// wake-ups the future registers go to the connection task, never to a caller
/// that happened to poll it once; a wake-up while it runs only marks it
/// notified, and the poller polls again (the connection task) or wakes the
/// connection task (a caller, which gets back to its own work).
struct DriverCell {
    /// Locked only by the poller that set the state to running.
    fut: Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>,
    wake: Arc<DriverWake>,
    waker: Waker,
    /// The runtime the publisher was started on: the future is polled in
    /// its context, whichever thread polls it.
    runtime: tokio::runtime::Handle,
}

const IDLE: u8 = 0;
const RUNNING: u8 = 1;
const NOTIFIED: u8 = 2;

/// Wakes the connection task, unless a poller is at work (then notes that
/// it must poll again).
struct DriverWake {
    task: AtomicWaker,
    state: AtomicU8,
}

impl Wake for DriverWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            match state {
                IDLE => return self.task.wake(),
                RUNNING => match self.state.compare_exchange(RUNNING, NOTIFIED, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return,
                    Err(now) => state = now,
                },
                _ => return,
            }
        }
    }
}

impl DriverCell {
    fn new(fut: impl Future<Output = ()> + Send + 'static, runtime: tokio::runtime::Handle) -> Arc<Self> {
        let wake = Arc::new(DriverWake { task: AtomicWaker::new(), state: AtomicU8::new(IDLE) });
        Arc::new(DriverCell { fut: Mutex::new(Some(Box::pin(fut))), waker: Waker::from(wake.clone()), wake, runtime })
    }

    /// Become the poller, if no one else is.
    fn claim(&self) -> bool {
        self.wake.state.compare_exchange(IDLE, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Poll the driver, after a successful [`claim`](Self::claim); `true`
    /// once it has finished. A caller (`helping`) polls it once and leaves
    /// what came up meanwhile to the connection task.
    fn run(&self, helping: bool) -> bool {
        let _runtime = self.runtime.enter();
        loop {
            let mut slot = self.fut.lock().unwrap_or_else(|poisoned| {
                // It panicked while being polled: it cannot go on.
                let mut slot = poisoned.into_inner();
                *slot = None;
                slot
            });
            // This poll covers every wake-up so far.
            self.wake.state.store(RUNNING, Ordering::Release);
            let finished = match slot.as_mut() {
                None => true,
                Some(fut) => fut.as_mut().poll(&mut Context::from_waker(&self.waker)).is_ready(),
            };
            if finished {
                *slot = None;
                drop(slot);
                self.wake.state.store(IDLE, Ordering::Release);
                if helping {
                    // Finished by a caller: the connection task's next poll
                    // claims it, finds it finished and ends.
                    self.wake.task.wake();
                }
                return true;
            }
            drop(slot);
            if self.wake.state.swap(IDLE, Ordering::AcqRel) != NOTIFIED {
                return false;
            }
            if helping {
                self.wake.task.wake();
                return false;
            }
            if !self.claim() {
                return false;
            }
        }
    }

    /// The connection task: polls the driver whenever it is woken. When the
    /// task is dropped unfinished (its runtime shuts down), the driver goes
    /// with it, as it would inside the task: handing over a message then
    /// fails with [`PublishError::Closed`] instead of polling timers and
    /// connections of a runtime that is gone.
    async fn run_task(self: Arc<Self>) {
        struct DropDriver<'a>(&'a DriverCell);
        impl Drop for DropDriver<'_> {
            fn drop(&mut self) {
                let driver = self.0.fut.lock().map(|mut slot| slot.take()).unwrap_or_else(|p| p.into_inner().take());
                drop(driver);
            }
        }
        let _drop_driver = DropDriver(&self);
        poll_fn(|cx| {
            self.wake.task.register(cx.waker());
            // Not claimed: the poller at work polls again or wakes this task.
            if self.claim() && self.run(false) {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await
    }
}

impl<T: Transport> Clone for Publisher<T> {
    fn clone(&self) -> Self {
        Publisher {
            handles: self.handles.clone(),
            permit: None,
            acquiring: None,
            mode: self.mode,
            _transport: std::marker::PhantomData,
        }
    }
}

impl<T: Transport> fmt::Debug for Publisher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("broker", &self.handles.shared.broker)
            .field("name", &self.handles.shared.name)
            .field("state", &self.handles.shared.state())
            .field("available", &self.handles.semaphore.available_permits())
            .finish()
    }
}

impl<T: Transport> Publisher<T> {
    /// Start a publisher for `transport` on the current Tokio runtime. It
    /// connects in the background; `poll_ready` (or
    /// [`wait_connected`](Publisher::wait_connected)) waits for the first
    /// attempt.
    pub fn new(transport: T, config: PublisherConfig) -> Result<Self, PublishError> {
        config.validate().map_err(PublishError::Config)?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| PublishError::NoRuntime)?;
        let cap = config.max_in_flight;
        let (tx, rx) = mpsc::channel(cap);
        let semaphore = Arc::new(Semaphore::new(cap));
        let name: Arc<str> =
            if config.name.is_empty() { Arc::from(T::BROKER) } else { Arc::from(config.name.as_str()) };
        let shared = Arc::new(Shared {
            broker: T::BROKER,
            name,
            state: AtomicU8::new(ConnectionState::Connecting.as_u8()),
            changed: Arc::new(Notify::new()),
            last_error: Mutex::new(None),
        });
        let driver = Driver {
            transport,
            rx,
            metrics: SettleMetrics::new(&shared),
            shared: shared.clone(),
            config: config.clone(),
            pending: Pending::default(),
            backlog: VecDeque::new(),
        };
        let driver = DriverCell::new(driver.run(), handle.clone());
        handle.spawn(driver.clone().run_task());
        let waits_while_down = !config.outage_wait.is_zero();
        Ok(Publisher {
            handles: Arc::new(Handles { tx, semaphore, shared, driver, waits_while_down }),
            permit: None,
            acquiring: None,
            mode: config.mode,
            _transport: std::marker::PhantomData,
        })
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        self.handles.shared.state()
    }

    /// Wait until connected (`Ok`) or until a connection attempt fails
    /// ([`PublishError::Unavailable`]).
    pub async fn wait_connected(&self) -> Result<(), PublishError> {
        loop {
            let notified = self.handles.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.handles.shared.state() {
                ConnectionState::Connected => return Ok(()),
                ConnectionState::Down => return Err(self.handles.shared.unavailable()),
                ConnectionState::Connecting => notified.await,
            }
        }
    }

    /// Messages accepted and not yet settled.
    pub fn in_flight(&self) -> usize {
        self.handles.tx.max_capacity() - self.handles.semaphore.available_permits()
    }

    /// Down, and calls fail at once instead of waiting for the broker.
    fn fails_fast(&self) -> bool {
        !self.handles.waits_while_down && self.handles.shared.state() == ConnectionState::Down
    }
}

impl<T: Transport> Service<Event> for Publisher<T> {
    type Response = Receipt;
    type Error = PublishError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness waits only for capacity, never for a connection: a
        // message handed in while connecting waits in its response future,
        // which a timeout above bounds.
        if self.permit.is_none() && self.fails_fast() {
            // Down: ready, `call` fails fast.
            self.acquiring = None;
            return Poll::Ready(Ok(()));
        }
        if self.permit.is_none() {
            if self.acquiring.is_none() {
                match self.handles.semaphore.clone().try_acquire_owned() {
                    Ok(permit) => {
                        self.permit = Some(permit);
                        return Poll::Ready(Ok(()));
                    }
                    Err(TryAcquireError::Closed) => return Poll::Ready(Err(PublishError::Closed)),
                    Err(TryAcquireError::NoPermits) => {
                        self.acquiring = Some(Box::pin(self.handles.semaphore.clone().acquire_owned()));
                    }
                }
            }
            if let Some(acquiring) = &mut self.acquiring {
                let res = ready!(acquiring.as_mut().poll(cx));
                self.acquiring = None;
                match res {
                    Ok(permit) => self.permit = Some(permit),
                    Err(_) => return Poll::Ready(Err(PublishError::Closed)),
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, event: Event) -> Self::Future {
        if self.fails_fast() {
            self.permit = None;
            return ResponseFuture::failed(self.handles.shared.unavailable());
        }
        let permit = match self.permit.take() {
            Some(p) => p,
            None => match self.handles.semaphore.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    return ResponseFuture::failed(PublishError::Overloaded { broker: self.handles.shared.broker })
                }
            },
        };
        let (reply, rx) = oneshot::channel();
        let job = Job {
            out: Outgoing::new(event, self.mode),
            reply,
            sent_at: None,
            sends: 0,
            queued_at: Instant::now(),
            accepted_connected: self.handles.shared.state() == ConnectionState::Connected,
            _permit: permit,
        };
        // Become the driver's poller before queueing the message, so that
        // queueing it does not wake the connection task for nothing: this
        // task hands it to the connection right away.
        let driver = &self.handles.driver;
        // A batching transport sends the messages collected by the time a
        // caller waits: its response future's first poll that has to wait
        // runs the driver (or the connection task does, woken by the queued
        // message, if it runs first).
        let polling = !T::BATCHES && driver.claim();
        let sent = self.handles.tx.try_send(job);
        if polling {
            driver.run(true);
        }
        match sent {
            Ok(()) => ResponseFuture { rx: Some(rx), err: None, driver: T::BATCHES.then(|| driver.clone()) },
            // Capacity equals the permits, so the channel is never full.
            Err(_) => ResponseFuture::failed(PublishError::Closed),
        }
    }
}

/// Response future of [`Publisher`]: resolves on the broker's confirmation.
pub struct ResponseFuture {
    rx: Option<oneshot::Receiver<Result<Receipt, PublishError>>>,
    err: Option<PublishError>,
    /// A batching transport's driver, which the first poll that has to wait
    /// runs (unless it is running already), to send the batch of what the
    /// callers handed in by then.
    driver: Option<Arc<DriverCell>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").field("rx", &self.rx).field("err", &self.err).finish_non_exhaustive()
    }
}

impl ResponseFuture {
    /// A future that fails at once.
    pub fn failed(err: PublishError) -> Self {
        ResponseFuture { rx: None, err: Some(err), driver: None }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Receipt, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match &mut this.rx {
            Some(rx) => {
                let mut polled = Pin::new(&mut *rx).poll(cx);
                // The caller is about to wait: it sends the batch itself
                // instead of waking the connection task for it.
                if let (Poll::Pending, Some(driver)) = (&polled, this.driver.take()) {
                    if driver.claim() {
                        driver.run(true);
                        polled = Pin::new(&mut *rx).poll(cx);
                    }
                }
                polled.map(|res| res.unwrap_or(Err(PublishError::Closed)))
            }
            None => Poll::Ready(Err(self.err.take().unwrap_or(PublishError::Closed))),
        }
    }
}

/// What a confirmation gives: the message's result and, for a connection
/// error, whether the message had been written ([`Transport::written`]).
type ConfirmResult = Result<Confirmation, PublishError>;

/// Whether the message of a confirmation was written to its connection.
type WrittenFn<F> = fn(&mut F) -> bool;

/// A confirmation with its message's sequence number.
struct Tagged<F> {
    seq: u64,
    fut: F,
    written: WrittenFn<F>,
}

impl<F: Future<Output = ConfirmResult> + Unpin> Future for Tagged<F> {
    type Output = (u64, ConfirmResult, bool);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let out = ready!(Pin::new(&mut this.fut).poll(cx));
        let written = match &out {
            Err(e) if is_connection_error(e) => (this.written)(&mut this.fut),
            _ => true,
        };
        Poll::Ready((this.seq, out, written))
    }
}

/// The confirmations the driver waits for, by sequence number.
enum Confirms<F> {
    /// The transport confirms in send order: polled from the oldest, with
    /// the driver's own waker.
    InOrder(VecDeque<(u64, F)>, WrittenFn<F>),
    /// In any order: each polled with a waker of its own when it is woken.
    Unordered(FuturesUnordered<Tagged<F>>, WrittenFn<F>),
}

impl<F: Future<Output = ConfirmResult> + Unpin> Confirms<F> {
    fn new(in_order: bool, written: WrittenFn<F>) -> Self {
        if in_order {
            Confirms::InOrder(VecDeque::new(), written)
        } else {
            Confirms::Unordered(FuturesUnordered::new(), written)
        }
    }

    fn push(&mut self, seq: u64, fut: F) {
        match self {
            Confirms::InOrder(queue, _) => queue.push_back((seq, fut)),
            Confirms::Unordered(set, written) => set.push(Tagged { seq, fut, written: *written }),
        }
    }

    /// The next confirmation that came, and whether its message was written
    /// (see [`Transport::written`]); `Pending` when none did (or none is
    /// awaited).
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<(u64, ConfirmResult, bool)> {
        match self {
            Confirms::InOrder(queue, written) => {
                let Some((seq, fut)) = queue.front_mut() else { return Poll::Pending };
                let out = ready!(Pin::new(&mut *fut).poll(cx));
                let was_written = match &out {
                    Err(e) if is_connection_error(e) => written(fut),
                    _ => true,
                };
                let seq = *seq;
                queue.pop_front();
                Poll::Ready((seq, out, was_written))
            }
            Confirms::Unordered(set, _) => match set.poll_next_unpin(cx) {
                Poll::Ready(Some(next)) => Poll::Ready(next),
                Poll::Ready(None) | Poll::Pending => Poll::Pending,
            },
        }
    }

    /// The sequence numbers of the messages still unconfirmed that were not
    /// written to the connection (asked as it breaks).
    fn unwritten(&mut self) -> Vec<u64> {
        match self {
            Confirms::InOrder(queue, written) => {
                queue.iter_mut().filter_map(|(seq, fut)| (!written(fut)).then_some(*seq)).collect()
            }
            Confirms::Unordered(set, written) => {
                set.iter_mut().filter_map(|t| (!written(&mut t.fut)).then_some(t.seq)).collect()
            }
        }
    }
}

enum Step {
    Job(Job),
    RxClosed,
    /// A confirmation came; the flag says whether the message was written
    /// (for a connection error).
    Confirmed(u64, ConfirmResult, bool),
    Lost,
    Timeout,
    /// Messages were published and no other one is waiting: flush them.
    Flush,
}

struct Driver<T: Transport> {
    transport: T,
    rx: mpsc::Receiver<Job>,
    shared: Arc<Shared>,
    config: PublisherConfig,
    pending: Pending,
    /// Messages never sent, taken while not connected (to fail them after
    /// [`outage_wait`](PublisherConfig::outage_wait)): sent first, in order,
    /// once connected.
    backlog: VecDeque<Job>,
    metrics: SettleMetrics,
}

/// Unconfirmed messages by local sequence number (send order): slots from
/// the oldest unconfirmed message on. Numbers only grow, so a message goes in
/// at the back and its slot is found by subtraction; no allocation per
/// message (a sorted map allocated and freed nodes as messages came and went).
#[derive(Default)]
struct Pending {
    /// The sequence number of the first slot.
    base: u64,
    /// The first slot, when there is one, holds a message.
    slots: VecDeque<Option<Job>>,
    len: usize,
}

impl Pending {
    /// Add the message numbered `seq` (higher than any before).
    fn insert(&mut self, seq: u64, job: Job) {
        if self.slots.is_empty() {
            self.base = seq;
        }
        debug_assert!(seq >= self.base + self.slots.len() as u64, "sequence numbers only grow");
        while self.base + (self.slots.len() as u64) < seq {
            self.slots.push_back(None);
        }
        self.slots.push_back(Some(job));
        self.len += 1;
    }

    fn remove(&mut self, seq: u64) -> Option<Job> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        let job = self.slots.get_mut(i)?.take()?;
        self.len -= 1;
        self.trim();
        Some(job)
    }

    /// Drop the empty slots at the front.
    fn trim(&mut self) {
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut Job> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.slots.get_mut(i)?.as_mut()
    }

    /// The oldest unconfirmed message.
    fn first(&self) -> Option<&Job> {
        self.slots.front()?.as_ref()
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sequence numbers of the messages, in order.
    fn seqs(&self) -> Vec<u64> {
        (self.base..).zip(&self.slots).filter(|(_, job)| job.is_some()).map(|(seq, _)| seq).collect()
    }

    /// Keep only the messages for which `keep` is true.
    fn retain(&mut self, mut keep: impl FnMut(&Job) -> bool) {
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|job| !keep(job)) {
                *slot = None;
                self.len -= 1;
            }
        }
        self.trim();
    }
}

/// The handles every settled message records on, made once (a failure's
/// counter, by its kind, is looked up when it happens: failures are rare).
struct SettleMetrics {
    succeeded: metrics::Counter,
    confirm_seconds: metrics::Histogram,
}

impl SettleMetrics {
    fn new(shared: &Shared) -> Self {
        SettleMetrics {
            succeeded: metrics::counter!("tower_mesh_publish_total", "service" => shared.name.to_string(), "broker" => shared.broker, "outcome" => "success"),
            confirm_seconds: metrics::histogram!("tower_mesh_publish_confirm_seconds", "service" => shared.name.to_string(), "broker" => shared.broker),
        }
    }
}

fn is_connection_error(e: &PublishError) -> bool {
    matches!(e, PublishError::ConnectionLost { .. } | PublishError::ConfirmTimeout { .. })
}

impl<T: Transport> Driver<T> {
    async fn run(mut self) {
        let mut next_seq: u64 = 0;
        let mut rx_closed = false;
        let labels = [("service", self.shared.name.to_string()), ("broker", self.shared.broker.to_string())];
        let resent = metrics::counter!("tower_mesh_publish_resent_total", &labels);
        loop {
            // Connect, with backoff.
            let mut failures = 0u32;
            let (mut conn, lost) = loop {
                if rx_closed && self.pending.is_empty() && self.backlog.is_empty() {
                    return;
                }
                let lost = LostSignal::default();
                let attempt = tokio::time::timeout(self.config.connect_timeout, self.transport.connect(lost.clone()));
                let err: BoxError = match attempt.await {
                    Ok(Ok(conn)) => break (conn, lost),
                    Ok(Err(e)) => e,
                    Err(_) => "connection attempt timed out".into(),
                };
                tracing::warn!(service = %self.shared.name, broker = self.shared.broker, error = %err, "publisher could not connect");
                metrics::counter!("tower_mesh_publish_connect_failures_total", &labels).increment(1);
                *self.shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::from(err));
                self.shared.set_state(ConnectionState::Down);
                // A message that was never written and whose caller gave up
                // is dropped; one that was written is kept to be sent again
                // (the broker may have it, and its caller was told nothing).
                let before = self.pending.len();
                self.pending.retain(|job| job.sends > 0 || !job.reply.is_closed());
                self.abandoned(before - self.pending.len());
                // The messages handed in meanwhile wait here (never sent),
                // each at most `outage_wait`.
                rx_closed = self.take_queued(rx_closed);
                self.expire_backlog();
                let delay = self.config.reconnect.delay(failures);
                failures = failures.saturating_add(1);
                let wake_at = Instant::now() + delay;
                rx_closed = self.wait_down(wake_at, rx_closed).await;
            };
            self.shared.set_state(ConnectionState::Connected);

            // Armed before the re-sends below, so that it is due no later than any of them.
            let mut timer = Box::pin(tokio::time::sleep(self.config.confirm_timeout));
            // Send again what the last connection left unconfirmed, in order:
            // a re-send if it was written, else a first send.
            let mut confirms = Confirms::new(T::CONFIRMS_IN_ORDER, T::written);
            let mut broken = false;
            let mut unflushed = false;
            for seq in self.pending.seqs() {
                let Some(job) = self.pending.get_mut(seq) else { continue };
                if job.sends == 0 && job.reply.is_closed() {
                    drop(self.pending.remove(seq));
                    self.abandoned(1);
                    continue;
                }
                if job.sends > self.config.max_resends {
                    let job = self.pending.remove(seq).expect("present");
                    let err = PublishError::ConnectionLost { broker: self.shared.broker, attempts: job.sends };
                    settle(&self.shared, &self.metrics, job, Err(err), Instant::now());
                    continue;
                }
                let again = job.sends > 0;
                match send(&mut self.transport, &mut conn, job, Instant::now()).await {
                    Ok(fut) => {
                        if again {
                            resent.increment(1);
                        }
                        confirms.push(seq, fut);
                        unflushed = T::BATCHES;
                    }
                    Err(e) if is_connection_error(&e) => {
                        broken = true;
                        break;
                    }
                    Err(e) => {
                        let job = self.pending.remove(seq).expect("present");
                        settle(&self.shared, &self.metrics, job, Err(e), Instant::now());
                    }
                }
            }

            // The time, read once for all the messages a poll of this task
            // handles (it is cleared when the task waits).
            let mut clock: Option<Instant> = None;

            while !broken {
                let step = poll_fn(|cx| {
                    // Each step looks only for work. The wakers are registered
                    // once there is none left, just before waiting: a step
                    // would register the same waker again (the driver is
                    // always polled with its own).
                    if lost.is_fired() {
                        return Poll::Ready(Step::Lost);
                    }
                    if let Poll::Ready((seq, res, written)) = confirms.poll_next(cx) {
                        return Poll::Ready(Step::Confirmed(seq, res, written));
                    }
                    // Messages that waited for the connection go first, in order.
                    if let Some(job) = self.backlog.pop_front() {
                        return Poll::Ready(Step::Job(job));
                    }
                    if !rx_closed {
                        match self.rx.try_recv() {
                            Ok(job) => return Poll::Ready(Step::Job(job)),
                            Err(TryRecvError::Disconnected) => return Poll::Ready(Step::RxClosed),
                            Err(TryRecvError::Empty) => {}
                        }
                    }
                    if unflushed {
                        return Poll::Ready(Step::Flush);
                    }
                    if lost.poll(cx).is_ready() {
                        return Poll::Ready(Step::Lost);
                    }
                    if !rx_closed {
                        match self.rx.poll_recv(cx) {
                            Poll::Ready(Some(job)) => return Poll::Ready(Step::Job(job)),
                            Poll::Ready(None) => return Poll::Ready(Step::RxClosed),
                            Poll::Pending => {}
                        }
                    }
                    if let Some(oldest) = self.pending.first() {
                        // The timer's deadline is never later than the oldest
                        // message's (deadlines only grow), so it is re-armed
                        // only when it fires, not as every message is confirmed.
                        while timer.as_mut().poll(cx).is_ready() {
                            let deadline = oldest.sent_at.map_or(timer.deadline(), |t| t + self.config.confirm_timeout);
                            if deadline <= timer.deadline() {
                                return Poll::Ready(Step::Timeout);
                            }
                            timer.as_mut().reset(deadline);
                        }
                    }
                    clock = None;
                    Poll::Pending
                })
                .await;
                match step {
                    Step::Job(mut job) => {
                        let seq = next_seq;
                        next_seq += 1;
                        let sent = send(&mut self.transport, &mut conn, &mut job, now(&mut clock)).await;
                        // Handing it over may have waited (for room in the client's queue).
                        clock = None;
                        match sent {
                            Ok(fut) => {
                                confirms.push(seq, fut);
                                self.pending.insert(seq, job);
                                unflushed = T::BATCHES;
                            }
                            Err(e) if is_connection_error(&e) => {
                                // Not handed over: sent on the next connection, as a first send.
                                self.pending.insert(seq, job);
                                broken = true;
                            }
                            Err(e) => settle(&self.shared, &self.metrics, job, Err(e), now(&mut clock)),
                        }
                    }
                    Step::RxClosed => {
                        rx_closed = true;
                        if self.pending.is_empty() {
                            return;
                        }
                    }
                    Step::Confirmed(seq, res, written) => {
                        if matches!(&res, Err(e) if is_connection_error(e)) {
                            if !written {
                                self.unwritten(seq);
                            }
                            broken = true;
                        } else if let Some(job) = self.pending.remove(seq) {
                            settle(&self.shared, &self.metrics, job, res, now(&mut clock));
                            if rx_closed && self.pending.is_empty() && self.backlog.is_empty() {
                                return;
                            }
                        }
                    }
                    Step::Flush => {
                        unflushed = false;
                        self.transport.flush(&mut conn).await;
                    }
                    Step::Lost => broken = true,
                    Step::Timeout => {
                        tracing::warn!(service = %self.shared.name, broker = self.shared.broker, "no confirmation in time; reconnecting");
                        broken = true;
                    }
                }
            }
            // The messages the broken connection never got are not counted
            // as sent: the next connection gets them as first sends.
            for seq in confirms.unwritten() {
                self.unwritten(seq);
            }
            tracing::warn!(service = %self.shared.name, broker = self.shared.broker, unconfirmed = self.pending.len(), "publisher connection lost; reconnecting");
            metrics::counter!("tower_mesh_publish_reconnects_total", &labels).increment(1);
            drop(confirms);
            drop(conn);
            self.shared.set_state(ConnectionState::Connecting);
        }
    }

    /// The message `seq` turned out not to have reached the connection it
    /// was handed to: that send does not count.
    fn unwritten(&mut self, seq: u64) {
        if let Some(job) = self.pending.get_mut(seq) {
            job.sends = job.sends.saturating_sub(1);
        }
    }

    /// Count `n` messages dropped unsent because their callers gave up.
    fn abandoned(&self, n: usize) {
        if n > 0 {
            tracing::debug!(service = %self.shared.name, broker = self.shared.broker, messages = n, "dropped messages never sent whose callers gave up");
            metrics::counter!("tower_mesh_publish_abandoned_total", "service" => self.shared.name.to_string(), "broker" => self.shared.broker)
                .increment(n as u64);
        }
    }

    /// Move the messages handed in to the backlog, while not connected;
    /// returns whether every publisher handle is gone.
    fn take_queued(&mut self, mut rx_closed: bool) -> bool {
        while !rx_closed {
            match self.rx.try_recv() {
                Ok(job) => self.backlog.push_back(job),
                Err(TryRecvError::Disconnected) => rx_closed = true,
                Err(TryRecvError::Empty) => break,
            }
        }
        rx_closed
    }

    /// When the waiting message `job` fails, unless the connection is back:
    /// `None` for one accepted while connected (it waits).
    fn due(&self, job: &Job) -> Option<Instant> {
        (!job.accepted_connected).then(|| job.queued_at + self.config.outage_wait)
    }

    /// Fail the waiting messages handed in while not connected that have
    /// waited [`outage_wait`](PublisherConfig::outage_wait), with
    /// [`PublishError::Unavailable`], and drop those whose callers gave up
    /// (none was ever sent).
    fn expire_backlog(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        let now = Instant::now();
        let before = self.backlog.len();
        self.backlog.retain(|job| !job.reply.is_closed());
        self.abandoned(before - self.backlog.len());
        for job in std::mem::take(&mut self.backlog) {
            if self.due(&job).is_some_and(|due| due <= now) {
                settle(&self.shared, &self.metrics, job, Err(self.shared.unavailable()), now);
            } else {
                self.backlog.push_back(job);
            }
        }
    }

    /// While down, until `wake_at` (the next connection attempt): take the
    /// messages handed in and fail each that waited its `outage_wait`.
    /// Returns whether every publisher handle is gone.
    async fn wait_down(&mut self, wake_at: Instant, mut rx_closed: bool) -> bool {
        let mut sleep = Box::pin(tokio::time::sleep_until(wake_at));
        loop {
            let due = self.backlog.iter().filter_map(|job| self.due(job)).min();
            sleep.as_mut().reset(due.map_or(wake_at, |due| due.min(wake_at)));
            let arrived = poll_fn(|cx| {
                if !rx_closed {
                    if let Poll::Ready(job) = self.rx.poll_recv(cx) {
                        return Poll::Ready(Some(job));
                    }
                }
                sleep.as_mut().poll(cx).map(|()| None)
            })
            .await;
            match arrived {
                Some(Some(job)) => self.backlog.push_back(job),
                Some(None) => rx_closed = true,
                None => {}
            }
            self.expire_backlog();
            if Instant::now() >= wake_at || (rx_closed && self.pending.is_empty() && self.backlog.is_empty()) {
                return rx_closed;
            }
        }
    }
}

/// The time `clock` holds, read now if it holds none.
fn now(clock: &mut Option<Instant>) -> Instant {
    *clock.get_or_insert_with(Instant::now)
}

async fn send<T: Transport>(
    transport: &mut T,
    conn: &mut T::Connection,
    job: &mut Job,
    now: Instant,
) -> Result<T::Confirm, PublishError> {
    job.out.attempt = job.sends;
    job.sent_at = Some(now);
    let handed = transport.publish(conn, &job.out).await;
    // Counted once handed over; not when it failed (it never reached the
    // connection), nor, later, if the transport says it was not written.
    if handed.is_ok() {
        job.sends += 1;
    }
    handed
}

fn settle(shared: &Shared, m: &SettleMetrics, job: Job, res: Result<Confirmation, PublishError>, now: Instant) {
    match &res {
        Ok(_) => {
            m.succeeded.increment(1);
            if let Some(sent_at) = job.sent_at {
                m.confirm_seconds.record(now.saturating_duration_since(sent_at).as_secs_f64());
            }
        }
        Err(e) => metrics::counter!("tower_mesh_publish_total", "service" => shared.name.to_string(), "broker" => shared.broker, "outcome" => e.kind())
            .increment(1),
    }
    let Job { out, reply, sends, _permit: permit, .. } = job;
    // The capacity first: the caller, told next, may want it for its next message at once.
    drop(permit);
    let res = res.map(|confirmation| Receipt { event: out.event, broker: shared.broker, confirmation, sends });
    // The caller may have dropped its future: nothing to tell then.
    let _ = reply.send(res);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::config::ReconnectBackoff;
    use std::time::Duration;
    use tokio_test::{assert_pending, assert_ready_ok, task};

    type Reply = oneshot::Sender<Result<Confirmation, PublishError>>;

    #[derive(Default)]
    struct State {
        up: bool,
        connects: u32,
        hold: bool,
        sent: Vec<(String, u32)>,
        held: Vec<Reply>,
        lost: Option<LostSignal>,
        /// `publish` refuses these ids once each (the connection broke
        /// before the message was handed over).
        refuse: Vec<String>,
        /// The confirmations of these ids say their message was not written.
        unwritten: Vec<String>,
        /// Connection attempts never finish (a blackholed broker).
        hang: bool,
    }

    /// A confirmation of the fake broker, and whether its message was written.
    struct FakeConfirm {
        fut: Pin<Box<dyn Future<Output = Result<Confirmation, PublishError>> + Send>>,
        written: bool,
    }

    impl Future for FakeConfirm {
        type Output = Result<Confirmation, PublishError>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            self.fut.as_mut().poll(cx)
        }
    }

    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<State>>);

    impl Fake {
        fn st(&self) -> std::sync::MutexGuard<'_, State> {
            self.0.lock().unwrap()
        }
        fn release(&self, res: impl Fn() -> Result<Confirmation, PublishError>) {
            for r in self.st().held.drain(..) {
                let _ = r.send(res());
            }
        }
    }

    impl Transport for Fake {
        const BROKER: &'static str = "fake";
        type Connection = ();
        type Confirm = FakeConfirm;

        fn connect(&mut self, lost: LostSignal) -> impl Future<Output = Result<(), BoxError>> + Send {
            let mut st = self.st();
            st.connects += 1;
            let hang = st.hang;
            let res = if st.up {
                st.lost = Some(lost);
                Ok(())
            } else {
                Err("connection refused".into())
            };
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                res
            }
        }

        fn written(confirm: &mut FakeConfirm) -> bool {
            confirm.written
        }

        fn publish<'a>(
            &'a mut self,
            _conn: &'a mut (),
            msg: &'a Outgoing,
        ) -> impl Future<Output = Result<Self::Confirm, PublishError>> + Send + 'a {
            let mut st = self.st();
            if let Some(i) = st.refuse.iter().position(|id| id == msg.event.id()) {
                st.refuse.remove(i);
                return std::future::ready(Err(PublishError::ConnectionLost { broker: "fake", attempts: 0 }));
            }
            st.sent.push((msg.event.id().to_owned(), msg.attempt));
            let fut: Pin<Box<dyn Future<Output = _> + Send>> = if st.hold {
                let (tx, rx) = oneshot::channel();
                st.held.push(tx);
                Box::pin(async move {
                    rx.await.unwrap_or(Err(PublishError::ConnectionLost { broker: "fake", attempts: 0 }))
                })
            } else {
                let seq = st.sent.len() as u64;
                Box::pin(std::future::ready(Ok(Confirmation { sequence: Some(seq), ..Default::default() })))
            };
            std::future::ready(Ok(FakeConfirm { fut, written: !st.unwritten.iter().any(|id| id == msg.event.id()) }))
        }
    }

    fn config(max_in_flight: usize) -> PublisherConfig {
        PublisherConfig {
            max_in_flight,
            max_resends: 2,
            reconnect: ReconnectBackoff {
                initial: Duration::from_millis(10),
                multiplier: 2.0,
                max: Duration::from_millis(40),
            },
            ..Default::default()
        }
    }

    fn ev(n: u32) -> Event {
        Event::builder("/t", "t").id(format!("e{n}")).build().unwrap()
    }

    /// A publisher of at most `max_in_flight` unconfirmed messages, connected
    /// to a fake broker that holds its confirmations back if `hold`.
    async fn connected(max_in_flight: usize, hold: bool) -> (Fake, Publisher<Fake>) {
        let fake = Fake::default();
        fake.st().up = true;
        fake.st().hold = hold;
        let p = Publisher::new(fake.clone(), config(max_in_flight)).unwrap();
        p.wait_connected().await.unwrap();
        (fake, p)
    }

    async fn ready<T: Transport>(p: &mut Publisher<T>) {
        std::future::poll_fn(|cx| p.poll_ready(cx)).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn confirms_and_bounds_in_flight() {
        let (fake, mut p) = connected(2, true).await;
        ready(&mut p).await;
        let f1 = p.call(ev(1));
        ready(&mut p).await;
        let f2 = p.call(ev(2));
        // Two unconfirmed: not ready.
        let mut r = task::spawn(std::future::poll_fn(|cx| p.poll_ready(cx)));
        assert_pending!(r.poll());
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(fake.st().held.len(), 2);
        fake.release(|| Ok(Confirmation::default()));
        let (a, b) = (f1.await.unwrap(), f2.await.unwrap());
        assert_eq!((a.event.id(), b.event.id(), a.sends), ("e1", "e2", 1));
        assert!(r.is_woken());
        assert_ready_ok!(r.poll());
        drop(r);
        assert_eq!(p.in_flight(), 1, "the permit taken by poll_ready");
    }

    #[tokio::test(start_paused = true)]
    async fn down_at_start_fails_fast_then_recovers() {
        let fake = Fake::default();
        let mut p = Publisher::new(fake.clone(), config(8)).unwrap();
        assert!(matches!(p.wait_connected().await, Err(PublishError::Unavailable { broker: "fake", .. })));
        assert_eq!(p.state(), ConnectionState::Down);
        ready(&mut p).await;
        let err = p.call(ev(1)).await.unwrap_err();
        assert!(err.is_transient());
        assert!(err.to_string().contains("connection refused"), "{err}");
        assert!(fake.st().sent.is_empty());
        fake.st().up = true;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(p.state(), ConnectionState::Connected);
        ready(&mut p).await;
        assert_eq!(p.call(ev(2)).await.unwrap().event.id(), "e2");
    }

    #[tokio::test(start_paused = true)]
    async fn lost_connection_resends_unconfirmed_in_order() {
        let fake = Fake::default();
        fake.st().up = true;
        fake.st().hold = true;
        let mut p = Publisher::new(fake.clone(), config(8)).unwrap();
        let mut futs = Vec::new();
        for n in 0..3 {
            ready(&mut p).await;
            futs.push(p.call(ev(n)));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The connection breaks: every held confirmation fails.
        fake.st().hold = false;
        fake.release(|| Err(PublishError::ConnectionLost { broker: "fake", attempts: 0 }));
        for (n, f) in futs.into_iter().enumerate() {
            let r = f.await.unwrap();
            assert_eq!(r.event.id(), format!("e{n}"));
            assert_eq!(r.sends, 2);
        }
        let st = fake.st();
        assert_eq!(st.connects, 2);
        let resent: Vec<_> = st.sent[3..].iter().map(|(id, a)| (id.as_str(), *a)).collect();
        assert_eq!(resent, [("e0", 1), ("e1", 1), ("e2", 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_loss_and_confirm_timeout_reconnect() {
        let (fake, mut p) = connected(8, false).await;
        let lost = fake.st().lost.clone().unwrap();
        lost.fire();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(fake.st().connects, 2);
        // A confirmation that never comes: reconnect and re-send after confirm_timeout.
        fake.st().hold = true;
        ready(&mut p).await;
        let f = p.call(ev(9));
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(fake.st().connects, 3);
        assert_eq!(fake.st().sent.last().map(|(id, a)| (id.clone(), *a)), Some(("e9".into(), 1)));
        fake.release(|| Ok(Confirmation::default()));
        assert_eq!(f.await.unwrap().sends, 2);
    }

    fn job(n: u32) -> Job {
        let (reply, _) = oneshot::channel();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        Job {
            out: Outgoing::new(ev(n), ContentMode::Structured),
            reply,
            sent_at: None,
            sends: 0,
            queued_at: Instant::now(),
            accepted_connected: false,
            _permit: permit,
        }
    }

    #[test]
    fn pending_messages_in_order_with_gaps_and_removals_anywhere() {
        let mut p = Pending::default();
        assert!(p.is_empty() && p.first().is_none() && p.remove(0).is_none());
        p.insert(3, job(3));
        // 4 was settled without being kept (a refused message): a gap.
        p.insert(5, job(5));
        p.insert(6, job(6));
        assert_eq!((p.len(), p.seqs()), (3, vec![3, 5, 6]));
        assert!(p.remove(4).is_none() && p.remove(2).is_none() && p.remove(9).is_none());
        assert_eq!(p.remove(5).unwrap().out.event.id(), "e5");
        assert_eq!(p.first().unwrap().out.event.id(), "e3");
        assert_eq!(p.remove(3).unwrap().out.event.id(), "e3");
        assert_eq!(p.first().unwrap().out.event.id(), "e6", "the gap and the removed slot are gone");
        assert_eq!(p.slots.len(), 1);
        p.get_mut(6).unwrap().sends = 2;
        p.insert(7, job(7));
        p.retain(|j| j.sends == 0);
        assert_eq!((p.len(), p.seqs(), p.first().unwrap().out.event.id()), (1, vec![7], "e7"));
        assert_eq!(p.remove(7).unwrap().out.event.id(), "e7");
        assert!(p.is_empty() && p.slots.is_empty());
        // Empty again: numbering goes on from anywhere higher.
        p.insert(100, job(100));
        assert_eq!(p.seqs(), [100]);
    }

    /// `call` hands the message to the connection itself, from the caller's
    /// task: it is sent before the connection task gets to run, and the
    /// connection task is not woken for it.
    #[tokio::test(start_paused = true)]
    async fn call_sends_from_the_callers_task() {
        let (fake, mut p) = connected(8, true).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(p.handles.driver.wake.state.load(Ordering::Acquire), IDLE);
        for n in 0..3 {
            ready(&mut p).await;
            drop(p.call(ev(n)));
            // No await in between: sent by `call`.
            assert_eq!(fake.st().sent.len(), n as usize + 1);
        }
        assert_eq!(p.handles.driver.wake.state.load(Ordering::Acquire), IDLE, "no wake-up left for the task");
        // Confirmations, which arrive while no caller polls, are the connection task's.
        let futs: Vec<_> = (3..5).map(|n| p.call(ev(n))).collect();
        fake.release(|| Ok(Confirmation::default()));
        for f in futs {
            assert_eq!(f.await.unwrap().sends, 1);
        }
    }

    /// Callers on several threads poll the driver in turn with the
    /// connection task: every message is sent once and confirmed, and the
    /// connection task ends once the publishers are gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_on_several_threads_share_the_driver() {
        let (fake, p) = connected(16, false).await;
        let weak = Arc::downgrade(&p.handles.driver);
        let tasks: Vec<_> = (0..4u32)
            .map(|t| {
                let mut p = p.clone();
                tokio::spawn(async move {
                    let mut pending = FuturesUnordered::new();
                    for n in 0..500 {
                        ready(&mut p).await;
                        pending.push(p.call(ev(t * 1000 + n)));
                        if pending.len() >= 8 {
                            pending.next().await.unwrap().unwrap();
                        }
                    }
                    while let Some(r) = pending.next().await {
                        r.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let mut ids: Vec<_> = fake.st().sent.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids.len(), 2000);
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 2000, "each message sent once");
        drop(p);
        for _ in 0..100 {
            if weak.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the connection task did not end");
    }

    /// A publisher whose runtime has shut down refuses messages (its
    /// connection task, and the driver with it, are gone) rather than
    /// polling the dead runtime's timers from the caller's task.
    #[test]
    fn after_its_runtime_shuts_down_calls_fail_as_closed() {
        let first = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let fake = Fake::default();
        fake.st().up = true;
        let mut p = first.block_on(async {
            let mut p = Publisher::new(fake.clone(), config(4)).unwrap();
            p.wait_connected().await.unwrap();
            ready(&mut p).await;
            assert_eq!(p.call(ev(1)).await.unwrap().sends, 1);
            p
        });
        drop(first);
        let second = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        second.block_on(async {
            let err = p.call(ev(2)).await.unwrap_err();
            assert!(matches!(err, PublishError::Closed), "{err}");
        });
        assert_eq!(fake.st().sent.len(), 1);
    }

    /// The confirm timeout runs from the oldest unconfirmed message's send:
    /// a message confirmed in time moves it on to the next one, which is
    /// given its own full timeout (the timer is re-armed only when it fires).
    #[tokio::test(start_paused = true)]
    async fn confirm_timeout_follows_the_oldest_unconfirmed_message() {
        let (fake, mut p) = connected(8, true).await;
        ready(&mut p).await;
        let first = p.call(ev(1));
        tokio::time::sleep(Duration::from_secs(8)).await;
        ready(&mut p).await;
        let second = p.call(ev(2));
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The first is confirmed at 9 s, within its 10 s.
        let reply = fake.st().held.remove(0);
        let _ = reply.send(Ok(Confirmation::default()));
        assert_eq!(first.await.unwrap().sends, 1);
        // At 11 s the first's deadline has passed, the second's (18 s) has not.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(fake.st().connects, 1, "no reconnect before the oldest unconfirmed message is due");
        // Past 18 s: the second timed out; reconnect and send it again.
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(fake.st().connects, 2);
        assert_eq!(fake.st().sent.last().map(|(id, a)| (id.clone(), *a)), Some(("e2".into(), 1)));
        fake.release(|| Ok(Confirmation::default()));
        assert_eq!(second.await.unwrap().sends, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_resends_and_fails_per_message_errors() {
        let fake = Fake::default();
        fake.st().up = true;
        fake.st().hold = true;
        let mut p = Publisher::new(fake.clone(), config(8)).unwrap();
        ready(&mut p).await;
        let f = p.call(ev(1));
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            fake.release(|| Err(PublishError::ConnectionLost { broker: "fake", attempts: 0 }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(matches!(f.await, Err(PublishError::ConnectionLost { attempts: 3, .. })));
        // A refused message fails alone, without a reconnect.
        let connects = fake.st().connects;
        ready(&mut p).await;
        let f = p.call(ev(2));
        tokio::time::sleep(Duration::from_millis(1)).await;
        fake.release(|| Err(PublishError::Nacked { broker: "fake", reason: None }));
        assert!(matches!(f.await, Err(PublishError::Nacked { .. })));
        assert_eq!(fake.st().connects, connects);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_future_releases_capacity_on_confirm() {
        let fake = Fake::default();
        fake.st().up = true;
        fake.st().hold = true;
        let mut p = Publisher::new(fake.clone(), config(1)).unwrap();
        ready(&mut p).await;
        drop(p.call(ev(1)));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(fake.st().sent.len(), 1, "still sent: at least once");
        let mut r = task::spawn(std::future::poll_fn(|cx| p.poll_ready(cx)));
        assert_pending!(r.poll());
        fake.release(|| Ok(Confirmation::default()));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_ready_ok!(r.poll());
    }

    /// A connected publisher over `transport` (its fake broker holding the
    /// confirmations back if `hold`), and the futures of messages e0, e1...
    /// handed in at once.
    async fn handed_in<const B: bool, const O: bool>(
        transport: &Declaring<B, O>,
        hold: bool,
        n: u32,
    ) -> (Publisher<Declaring<B, O>>, Vec<ResponseFuture>) {
        transport.fake.st().up = true;
        transport.fake.st().hold = hold;
        let mut p = Publisher::new(transport.clone(), config(8)).unwrap();
        p.wait_connected().await.unwrap();
        let mut futs = Vec::new();
        for i in 0..n {
            ready(&mut p).await;
            futs.push(p.call(ev(i)));
        }
        (p, futs)
    }

    /// The fake broker behind a transport that declares it batches (`B`:
    /// `publish` only collects the message ids that the next `flush` sends
    /// together) or confirms in send order (`O`).
    #[derive(Clone, Default)]
    struct Declaring<const B: bool, const O: bool> {
        fake: Fake,
        collected: Arc<Mutex<Vec<String>>>,
        flushes: Arc<Mutex<Vec<Vec<String>>>>,
    }

    type Batching = Declaring<true, false>;
    type Ordered = Declaring<false, true>;

    impl<const B: bool, const O: bool> Declaring<B, O> {
        fn flushes(&self) -> Vec<Vec<String>> {
            self.flushes.lock().unwrap().clone()
        }
    }

    impl<const B: bool, const O: bool> Transport for Declaring<B, O> {
        const BROKER: &'static str = "fake";
        const BATCHES: bool = B;
        const CONFIRMS_IN_ORDER: bool = O;
        type Connection = ();
        type Confirm = <Fake as Transport>::Confirm;

        fn connect(&mut self, lost: LostSignal) -> impl Future<Output = Result<(), BoxError>> + Send {
            self.collected.lock().unwrap().clear();
            self.fake.connect(lost)
        }

        fn publish<'a>(
            &'a mut self,
            conn: &'a mut (),
            msg: &'a Outgoing,
        ) -> impl Future<Output = Result<Self::Confirm, PublishError>> + Send + 'a {
            if B {
                self.collected.lock().unwrap().push(msg.event.id().to_owned());
            }
            self.fake.publish(conn, msg)
        }

        fn written(confirm: &mut Self::Confirm) -> bool {
            Fake::written(confirm)
        }

        fn flush<'a>(&'a mut self, _conn: &'a mut ()) -> impl Future<Output = ()> + Send + 'a {
            assert!(B, "flushed a transport that does not batch");
            let batch = std::mem::take(&mut *self.collected.lock().unwrap());
            assert!(!batch.is_empty(), "flushed with nothing published");
            self.flushes.lock().unwrap().push(batch);
            std::future::ready(())
        }
    }

    fn ids(batches: &[&[u32]]) -> Vec<Vec<String>> {
        batches.iter().map(|b| b.iter().map(|n| format!("e{n}")).collect()).collect()
    }

    /// With a batching transport the connection task sends the messages:
    /// those a caller hands in before it yields go out in one flush, and a
    /// message handed in later in the next.
    #[tokio::test(start_paused = true)]
    async fn a_batching_transport_gets_the_waiting_messages_in_one_flush() {
        let b = Batching::default();
        let (mut p, futs) = handed_in(&b, false, 3).await;
        assert!(b.fake.st().sent.is_empty(), "the caller does not send");
        for f in futs {
            assert_eq!(f.await.unwrap().sends, 1);
        }
        ready(&mut p).await;
        assert_eq!(p.call(ev(3)).await.unwrap().event.id(), "e3");
        assert_eq!(b.flushes(), ids(&[&[0, 1, 2], &[3]]));
    }

    /// A caller whose response future has to wait sends the batch itself
    /// (every message handed in by then), without waiting for the
    /// connection task to be scheduled; a second waiting caller finds
    /// nothing left to send.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_caller_sends_the_batch_itself() {
        let b = Batching::default();
        let (_p, futs) = handed_in(&b, true, 3).await;
        let mut futs: Vec<_> = futs.into_iter().map(task::spawn).collect();
        assert!(b.flushes().is_empty(), "handing in sends nothing");
        // Nothing has yielded since: the connection task has not run.
        assert!(futs[0].poll().is_pending());
        assert_eq!(b.flushes(), ids(&[&[0, 1, 2]]));
        assert!(futs[1].poll().is_pending());
        assert!(futs[2].poll().is_pending());
        assert_eq!(b.flushes().len(), 1, "sent once");
        b.fake.release(|| Ok(Confirmation::default()));
        tokio::time::sleep(Duration::from_millis(1)).await;
        for mut f in futs {
            assert!(f.is_woken());
            assert_ready_ok!(f.poll());
        }
    }

    /// After a reconnect the unconfirmed messages are sent again, flushed in
    /// order before the messages handed in meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_batching_transport_gets_the_resent_messages_flushed_in_order() {
        let b = Batching::default();
        let (mut p, mut futs) = handed_in(&b, true, 3).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(b.flushes(), ids(&[&[0, 1, 2]]));
        b.fake.st().hold = false;
        b.fake.release(|| Err(PublishError::ConnectionLost { broker: "fake", attempts: 0 }));
        ready(&mut p).await;
        futs.push(p.call(ev(3)));
        for (n, f) in futs.into_iter().enumerate() {
            let r = f.await.unwrap();
            assert_eq!((r.event.id(), r.sends), (format!("e{n}").as_str(), if n < 3 { 2 } else { 1 }));
        }
        let flushes = b.flushes();
        assert_eq!(flushes[..1], ids(&[&[0, 1, 2]]));
        // e3, handed in during the reconnect, may join the re-sent batch.
        assert_eq!(flushes[1..].concat(), ["e0", "e1", "e2", "e3"]);
    }

    /// Confirmations in send order are polled from the oldest: one that
    /// comes early is seen once the older ones came, and each message
    /// gets its own result.
    #[tokio::test(start_paused = true)]
    async fn in_order_confirmations_settle_from_the_oldest() {
        let o = Ordered::default();
        let (p, futs) = handed_in(&o, true, 3).await;
        let mut futs: Vec<_> = futs.into_iter().map(task::spawn).collect();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let held: Vec<_> = o.fake.st().held.drain(..).collect();
        let mut held = held.into_iter();
        let (first, second, third) = (held.next().unwrap(), held.next().unwrap(), held.next().unwrap());
        // The newest is confirmed first: it waits for the others.
        third.send(Ok(Confirmation { sequence: Some(3), ..Default::default() })).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(futs.iter_mut().all(|f| f.poll().is_pending()));
        second.send(Err(PublishError::Nacked { broker: "fake", reason: None })).unwrap();
        first.send(Ok(Confirmation { sequence: Some(1), ..Default::default() })).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let mut results = futs.into_iter().map(|mut f| match f.poll() {
            Poll::Ready(r) => r,
            Poll::Pending => panic!("settled once the oldest came"),
        });
        assert_eq!(results.next().unwrap().unwrap().confirmation.sequence, Some(1));
        assert!(matches!(results.next().unwrap(), Err(PublishError::Nacked { .. })));
        assert_eq!(results.next().unwrap().unwrap().confirmation.sequence, Some(3));
        assert_eq!(p.in_flight(), 0);
    }

    /// A connection lost with in-order confirmations outstanding: every
    /// unconfirmed message is sent again, in order, and confirmed once.
    #[tokio::test(start_paused = true)]
    async fn in_order_confirmations_survive_a_lost_connection() {
        let o = Ordered::default();
        let (_p, futs) = handed_in(&o, true, 4).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The first is confirmed, then the connection breaks.
        let first = o.fake.st().held.remove(0);
        first.send(Ok(Confirmation::default())).unwrap();
        o.fake.st().hold = false;
        o.fake.release(|| Err(PublishError::ConnectionLost { broker: "fake", attempts: 0 }));
        let sends: Vec<_> = futures_util::future::join_all(futs).await.into_iter().map(|r| r.unwrap().sends).collect();
        assert_eq!(sends, [1, 2, 2, 2]);
        let st = o.fake.st();
        let resent: Vec<_> = st.sent[4..].iter().map(|(id, a)| (id.as_str(), *a)).collect();
        assert_eq!(resent, [("e1", 1), ("e2", 1), ("e3", 1)]);
    }

    /// Break the fake's connection: every held confirmation fails with a
    /// connection error.
    fn cut(fake: &Fake) {
        fake.release(|| Err(PublishError::ConnectionLost { broker: "fake", attempts: 0 }));
    }

    /// A message written to a connection that broke is sent again although
    /// its caller gave up, even when the reconnect fails first (the broker
    /// may hold it; the rule: re-send what was written, drop only what was
    /// never sent).
    #[tokio::test(start_paused = true)]
    async fn a_written_message_whose_caller_gave_up_is_sent_again_after_an_outage() {
        let (fake, mut p) = connected(8, true).await;
        ready(&mut p).await;
        drop(p.call(ev(1)));
        assert_eq!(fake.st().sent, [("e1".to_owned(), 0)]);
        // The broker goes away with the connection: the reconnect fails.
        fake.st().up = false;
        cut(&fake);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(p.state(), ConnectionState::Down);
        tokio::time::sleep(Duration::from_millis(100)).await;
        fake.st().up = true;
        fake.st().hold = false;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(p.state(), ConnectionState::Connected);
        assert_eq!(fake.st().sent, [("e1".to_owned(), 0), ("e1".to_owned(), 1)], "re-sent, as a re-send");
        assert_eq!(p.in_flight(), 0, "confirmed, its capacity released");
    }

    /// A message the connection never got (it broke as the message was
    /// handed over) is dropped if its caller gave up meanwhile; one whose
    /// caller still waits goes on the next connection as a first send.
    #[tokio::test(start_paused = true)]
    async fn a_message_never_written_is_sent_once_or_dropped_if_abandoned() {
        let (fake, mut p) = connected(8, false).await;
        fake.st().refuse = vec!["e1".into(), "e2".into()];
        fake.st().up = false;
        ready(&mut p).await;
        let kept = p.call(ev(1));
        ready(&mut p).await;
        drop(p.call(ev(2)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        fake.st().up = true;
        let r = kept.await.unwrap();
        assert_eq!((r.sends, r.resent()), (1, false), "written once: not a re-send");
        assert_eq!(fake.st().sent, [("e1".to_owned(), 0)], "e2 never sent: its caller gave up");
        assert_eq!(p.in_flight(), 0);
    }

    /// Confirmations whose messages the transport says were never written
    /// to the broken connection (still queued in the client) are not counted:
    /// those messages are sent once more as first sends, and do not use up
    /// `max_resends`; a written one counts as a re-send.
    #[tokio::test(start_paused = true)]
    async fn messages_a_broken_connection_never_wrote_are_not_counted_as_resent() {
        async fn check<const O: bool>() {
            let d = Declaring::<false, O>::default();
            d.fake.st().unwritten = vec!["e1".into(), "e2".into(), "e3".into()];
            let (mut p, mut futs) = handed_in(&d, true, 1).await;
            for n in 1..4 {
                ready(&mut p).await;
                futs.push(p.call(ev(n)));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            // More cuts than max_resends (2): the unwritten ones never fail for it.
            for _ in 0..3 {
                cut(&d.fake);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            d.fake.st().hold = false;
            d.fake.st().unwritten.clear();
            cut(&d.fake);
            let mut sends = Vec::new();
            for f in futs {
                match f.await {
                    Ok(r) => sends.push(Some(r.sends)),
                    Err(PublishError::ConnectionLost { attempts, .. }) => sends.push(Some(100 + attempts)),
                    Err(e) => panic!("{e}"),
                }
            }
            // e0 was written each time: it hit max_resends (3 sends). e1..e3
            // were never written until the last connection: sent once.
            assert_eq!(sends, [Some(103), Some(1), Some(1), Some(1)], "in order: {O}");
            let st = d.fake.st();
            assert!(st.sent.iter().filter(|(id, _)| id != "e0").all(|(_, attempt)| *attempt == 0), "{:?}", st.sent);
        }
        check::<true>().await;
        check::<false>().await;
    }

    /// While the first connection is being made (a broker that accepts and
    /// never answers), readiness does not wait for it: the message waits in
    /// its response future, which a 1 s timeout above bounds — the call
    /// fails with the timeout's typed error at 1 s, not after the 5 s
    /// connect timeout.
    #[cfg(feature = "timeout")]
    #[tokio::test(start_paused = true)]
    async fn a_timeout_above_bounds_a_call_made_while_connecting() {
        use tower::ServiceExt;
        use tower_layer::Layer;
        let fake = Fake::default();
        fake.st().up = true;
        fake.st().hang = true;
        let p = Publisher::new(fake.clone(), PublisherConfig::default()).unwrap();
        let mut svc = crate::timeout::TimeoutLayer::new(Duration::from_secs(1)).layer(p.clone());
        let start = Instant::now();
        let err = svc.ready().await.unwrap().call(ev(1)).await.unwrap_err();
        let elapsed = err.downcast_ref::<crate::timeout::Elapsed>().expect("the timeout's error");
        assert_eq!(elapsed.kind(), crate::timeout::TimeoutKind::Total);
        // Paused time: the instant the timeout fired, not the wall clock.
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        assert!(fake.st().sent.is_empty());
        assert_eq!(p.state(), ConnectionState::Connecting);
    }

    /// Without `outage_wait`, a message handed in while connecting fails
    /// with `Unavailable` as soon as that attempt fails.
    #[tokio::test(start_paused = true)]
    async fn a_message_handed_in_while_connecting_fails_when_the_attempt_fails() {
        let fake = Fake::default();
        let mut p = Publisher::new(fake.clone(), config(8)).unwrap();
        assert_eq!(p.state(), ConnectionState::Connecting);
        ready(&mut p).await;
        let err = p.call(ev(1)).await.unwrap_err();
        assert!(matches!(err, PublishError::Unavailable { .. }), "{err}");
        assert_eq!(p.in_flight(), 0);
    }

    fn waiting(max_in_flight: usize, wait: Duration) -> PublisherConfig {
        PublisherConfig { outage_wait: wait, ..config(max_in_flight) }
    }

    /// With `outage_wait`, messages handed in while the broker is down wait
    /// for it (holding in-flight capacity, so `poll_ready` stops a producer
    /// at `max_in_flight`) and go out once, in order, when it is back.
    #[tokio::test(start_paused = true)]
    async fn outage_wait_holds_messages_until_the_broker_is_back() {
        let fake = Fake::default();
        let mut p = Publisher::new(fake.clone(), waiting(3, Duration::from_secs(60))).unwrap();
        assert!(p.wait_connected().await.is_err());
        let mut futs = Vec::new();
        for n in 0..3 {
            ready(&mut p).await;
            futs.push(task::spawn(p.call(ev(n))));
        }
        let mut r = task::spawn(std::future::poll_fn(|cx| p.poll_ready(cx)));
        assert_pending!(r.poll(), "no room: the producer waits");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(futs.iter_mut().all(|f| f.poll().is_pending()), "still waiting after 30 s");
        assert!(fake.st().sent.is_empty());
        fake.st().up = true;
        for (n, f) in futs.into_iter().enumerate() {
            let r = f.await.unwrap();
            assert_eq!((r.event.id(), r.sends), (format!("e{n}").as_str(), 1));
        }
        assert!(r.is_woken());
        assert_ready_ok!(r.poll());
        let sent: Vec<_> = fake.st().sent.iter().map(|(id, a)| (id.clone(), *a)).collect();
        assert_eq!(sent, [("e0".into(), 0), ("e1".into(), 0), ("e2".into(), 0)]);
    }

    /// A message still unsent after `outage_wait` fails with `Unavailable`
    /// (at that time, between connection attempts), and one whose caller
    /// gave up meanwhile is never sent.
    #[tokio::test(start_paused = true)]
    async fn outage_wait_fails_a_message_after_its_wait() {
        let fake = Fake::default();
        let cfg = PublisherConfig {
            reconnect: ReconnectBackoff {
                initial: Duration::from_secs(10),
                multiplier: 2.0,
                max: Duration::from_secs(10),
            },
            ..waiting(4, Duration::from_secs(2))
        };
        let mut p = Publisher::new(fake.clone(), cfg).unwrap();
        assert!(p.wait_connected().await.is_err());
        ready(&mut p).await;
        drop(p.call(ev(0)));
        ready(&mut p).await;
        let start = Instant::now();
        let err = p.call(ev(1)).await.unwrap_err();
        assert!(matches!(err, PublishError::Unavailable { .. }), "{err}");
        assert_eq!(Instant::now() - start, Duration::from_secs(2), "failed when its wait ended");
        fake.st().up = true;
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(p.state(), ConnectionState::Connected);
        assert!(fake.st().sent.is_empty(), "neither was sent");
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn outside_a_runtime_is_an_error() {
        assert!(matches!(Publisher::new(Fake::default(), config(1)), Err(PublishError::NoRuntime)));
        let bad = PublisherConfig { max_in_flight: 0, ..Default::default() };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _g = rt.enter();
        assert!(matches!(Publisher::new(Fake::default(), bad), Err(PublishError::Config(_))));
    }
}
