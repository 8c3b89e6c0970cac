//! The publisher's handles: [`Publisher`] queues messages for its
//! connection task, [`ResponseFuture`] waits for the broker's confirmation.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::sync::{mpsc, oneshot, AcquireError, Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;
use tower_service::Service;

use super::worker::Worker;
use super::{ConnectionState, Job, Outgoing, Receipt, Shared, Transport};
use crate::publish::config::PublisherConfig;
use crate::publish::error::PublishError;
use crate::publish::event::{ContentMode, Event};

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
/// - **Sending**: `call` queues the message on a bounded channel (its
///   capacity is the in-flight bound, so it is never full) to the
///   connection task, which sends it; callers never poll the connection. A
///   transport that sends in batches ([`Transport::BATCHES`], Redis) gets
///   every message waiting, then one flush.
///
/// Clones share the connection and the in-flight bound. The connection task
/// ends when every clone is dropped and every accepted message is settled.
pub struct Publisher<T: Transport> {
    /// What the clones share, behind one pointer: a clone (one per call
    /// under a retry layer) costs one reference count.
    pub(super) handles: Arc<Handles>,
    permit: Option<OwnedSemaphorePermit>,
    /// Waiting for capacity (slow path only: the fast path takes a permit without allocating).
    acquiring: Option<Acquiring>,
    mode: ContentMode,
    _transport: std::marker::PhantomData<fn() -> T>,
}

/// The parts of a [`Publisher`] its clones share.
pub(super) struct Handles {
    tx: mpsc::Sender<Job>,
    semaphore: Arc<Semaphore>,
    pub(super) shared: Arc<Shared>,
    /// [`PublisherConfig::outage_wait`] is not zero: messages wait while down.
    waits_while_down: bool,
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
        handle.spawn(Worker::new(transport, rx, shared.clone(), config.clone()).run());
        let waits_while_down = !config.outage_wait.is_zero();
        Ok(Publisher {
            handles: Arc::new(Handles { tx, semaphore, shared, waits_while_down }),
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
            queued_unconnected: (self.handles.shared.state() != ConnectionState::Connected).then(Instant::now),
            _permit: permit,
        };
        match self.handles.tx.try_send(job) {
            Ok(()) => ResponseFuture { rx: Some(rx), err: None },
            // Capacity equals the permits, so the channel is never full: the
            // connection task is gone (its runtime shut down).
            Err(_) => ResponseFuture::failed(PublishError::Closed),
        }
    }
}

/// Response future of [`Publisher`]: resolves on the broker's confirmation.
pub struct ResponseFuture {
    rx: Option<oneshot::Receiver<Result<Receipt, PublishError>>>,
    err: Option<PublishError>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").field("rx", &self.rx).field("err", &self.err).finish()
    }
}

impl ResponseFuture {
    /// A future that fails at once.
    pub fn failed(err: PublishError) -> Self {
        ResponseFuture { rx: None, err: Some(err) }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Receipt, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.rx {
            // The connection task gone without a reply: closed.
            Some(rx) => Pin::new(rx).poll(cx).map(|res| res.unwrap_or(Err(PublishError::Closed))),
            None => Poll::Ready(Err(self.err.take().unwrap_or(PublishError::Closed))),
        }
    }
}
