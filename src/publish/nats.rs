//! NATS JetStream publisher (`nats` feature, [async-nats]).
//!
//! Each event is published to a subject (the event type unless
//! [`NatsBuilder::subject`] says otherwise) with JetStream's publish-and-ack:
//! the response future resolves on the stream's `PublishAck` (its stream
//! sequence and `duplicate` flag are in the [`Receipt`](super::Receipt)).
//! `Nats-Msg-Id` is the event id, so the server drops a copy re-sent after a
//! reconnect within the stream's duplicate window.
//!
//! Headers: `Nats-Msg-Id`, `content-type`, every CloudEvents attribute as
//! `ce-<name>` (NATS binding), `traceparent` and `tracestate` unprefixed.
//! A subject no stream captures is [`PublishError::Unroutable`]; a JetStream
//! error reply is [`PublishError::Nacked`] when its code is 5xx (a full
//! stream with `discard: new`, a storage failure: it may pass later) and
//! [`PublishError::Rejected`] otherwise (a wrong expected sequence...).
//!
//! Acks come to one inbox per connection: the publisher subscribes to
//! `<inbox>.*` once and publishes each message with the reply subject
//! `<inbox>.<n>`, `n` numbering the connection's messages. The oldest
//! unconfirmed message's confirmation reads the inbox and keeps the acks
//! that come early for the younger ones. This is the request-reply that
//! async-nats's `jetstream::Context::publish` makes, without its per-message
//! inbox name, reply channel, timer and boxed future; the missing-ack
//! timeout is the publisher's own [`confirm_timeout`](PublisherConfig::confirm_timeout).
//! The connection's subscription capacity is raised to `max_in_flight` when
//! it is smaller; should its queue still overflow (a slow consumer drops
//! acks), the connection counts as lost and unconfirmed messages are sent
//! again.
//!
//! ```no_run
//! use tower::ServiceExt;
//! use tower_mesh::publish::Event;
//! use tower_mesh::publish::nats::Nats;
//!
//! # async fn demo() -> Result<(), tower_mesh::BoxError> {
//! let publisher = Nats::builder("nats://127.0.0.1:4222")
//!     .stream("ORDERS", ["orders.>"])
//!     .subject(|e: &Event| format!("orders.{}", e.ty()))
//!     .build()?;
//! let event = Event::builder("/orders", "created").json(&serde_json::json!({"id": 42}))?.build()?;
//! let receipt = publisher.oneshot(event).await?;
//! println!("stored as #{:?}", receipt.confirmation.sequence);
//! # Ok(()) }
//! ```
//!
//! [async-nats]: https://docs.rs/async-nats

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use futures_util::Stream;
use serde::Deserialize;

use super::{
    Confirmation, Event, InvalidEvent, LostSignal, Outgoing, PublishError, Publisher, PublisherConfig, Transport,
};
use crate::error::BoxError;

const BROKER: &str = "nats";

/// async-nats's own subscription capacity.
const DEFAULT_INBOX_CAPACITY: usize = 65_536;

/// Header name prefix of the CloudEvents attributes (NATS binding).
pub const HEADER_PREFIX: &str = "ce-";

/// A NATS JetStream publisher: [`Publisher`] over [`Nats`].
pub type NatsPublisher = Publisher<Nats>;

/// How the subject of an event is chosen.
pub type SubjectFn = Arc<dyn Fn(&Event) -> String + Send + Sync>;

/// The NATS JetStream [`Transport`].
pub struct Nats {
    url: String,
    subject: SubjectFn,
    stream: Option<stream::Config>,
    options: Arc<dyn Fn() -> async_nats::ConnectOptions + Send + Sync>,
    api_timeout: std::time::Duration,
    max_in_flight: usize,
}

impl fmt::Debug for Nats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nats").field("stream", &self.stream.as_ref().map(|s| &s.name)).finish_non_exhaustive()
    }
}

impl Nats {
    /// Start configuring a publisher for the server(s) at `url`
    /// (`nats://host:4222`, comma-separated for a cluster).
    pub fn builder(url: impl Into<String>) -> NatsBuilder {
        NatsBuilder {
            transport: Nats {
                url: url.into(),
                subject: Arc::new(|e: &Event| e.ty().to_owned()),
                stream: None,
                options: Arc::new(async_nats::ConnectOptions::new),
                api_timeout: PublisherConfig::default().confirm_timeout,
                max_in_flight: PublisherConfig::default().max_in_flight,
            },
            config: PublisherConfig { name: BROKER.into(), ..Default::default() },
        }
    }

    /// The headers this publisher sends `msg` with (public so that a
    /// benchmark can make the raw client send exactly the same message).
    pub fn headers(msg: &Outgoing) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(async_nats::header::NATS_MESSAGE_ID, msg.event.id());
        if let Some(ct) = msg.content_type() {
            h.insert("content-type", ct);
        }
        for (name, value) in msg.event.header_pairs() {
            if Event::is_trace_header(name) {
                h.insert(name, value.as_ref());
            } else {
                let mut k = String::with_capacity(HEADER_PREFIX.len() + name.len());
                k.push_str(HEADER_PREFIX);
                k.push_str(name);
                h.insert(k, value.as_ref());
            }
        }
        h
    }
}

/// `true` for a subject a message can be published to: non-empty tokens of
/// printable ASCII without whitespace or wildcards.
fn valid_subject(s: &str) -> bool {
    if s.is_empty() || s.len() > 1024 {
        return false;
    }
    // One pass over the bytes (it runs for every message): printable ASCII
    // only, and no empty or wildcard token between the dots.
    let mut token_start = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if b == b'.' {
            if !valid_token(&s.as_bytes()[token_start..i]) {
                return false;
            }
            token_start = i + 1;
        } else if !b.is_ascii_graphic() {
            return false;
        }
    }
    valid_token(&s.as_bytes()[token_start..])
}

fn valid_token(t: &[u8]) -> bool {
    !t.is_empty() && t != b"*" && t != b">"
}

fn invalid_subject() -> PublishError {
    PublishError::InvalidEvent(InvalidEvent::Invalid {
        attribute: "type",
        reason: "does not make a valid NATS subject",
    })
}

/// Builder of a [`NatsPublisher`].
pub struct NatsBuilder {
    transport: Nats,
    config: PublisherConfig,
}

impl fmt::Debug for NatsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBuilder").field("transport", &self.transport).field("config", &self.config).finish()
    }
}

impl NatsBuilder {
    /// Choose the subject (default: the event type). Must be captured by a stream.
    pub fn subject(mut self, f: impl Fn(&Event) -> String + Send + Sync + 'static) -> Self {
        self.transport.subject = Arc::new(f);
        self
    }

    /// Create the stream `name` capturing `subjects` on connect if it does not
    /// exist (default: the stream must exist).
    pub fn stream<I, S>(mut self, name: impl Into<String>, subjects: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.transport.stream = Some(stream::Config {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            ..Default::default()
        });
        self
    }

    /// The full stream configuration to create on connect.
    pub fn stream_config(mut self, config: stream::Config) -> Self {
        self.transport.stream = Some(config);
        self
    }

    /// Connection options (credentials, TLS, name...) for every connection.
    pub fn connect_options(mut self, f: impl Fn() -> async_nats::ConnectOptions + Send + Sync + 'static) -> Self {
        self.transport.options = Arc::new(f);
        self
    }

    /// The publisher settings (in-flight bound, reconnect backoff, mode...).
    pub fn config(mut self, config: PublisherConfig) -> Self {
        self.config = config;
        self
    }

    /// Start the publisher (inside a Tokio runtime); it connects in the background.
    pub fn build(mut self) -> Result<NatsPublisher, PublishError> {
        // JetStream API requests (creating the stream) time out with confirmations.
        self.transport.api_timeout = self.config.confirm_timeout;
        self.transport.max_in_flight = self.config.max_in_flight;
        Publisher::new(self.transport, self.config)
    }
}

/// An open NATS connection: the client and the inbox the JetStream acks of
/// its messages come to.
pub struct NatsConnection {
    client: async_nats::Client,
    /// `<inbox>.`: a message's reply subject is this followed by its number.
    reply_prefix: String,
    acks: Arc<Mutex<Acks>>,
}

impl fmt::Debug for NatsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConnection").field("reply_prefix", &self.reply_prefix).finish_non_exhaustive()
    }
}

/// The acks of one connection, read from its inbox subscription by the
/// confirmation being polled, and kept by message number until taken.
struct Acks<S = async_nats::Subscriber> {
    inbox: S,
    /// Number of the oldest message whose ack is awaited or kept.
    base: u64,
    /// One slot per message from `base` on.
    slots: VecDeque<Slot>,
    /// The subscription ended: the connection is gone.
    closed: bool,
}

enum Slot {
    Waiting,
    Arrived(Result<Confirmation, PublishError>),
    /// Taken, or its confirmation was dropped.
    Gone,
}

impl<S: Stream<Item = async_nats::Message> + Unpin> Acks<S> {
    fn new(inbox: S) -> Self {
        Acks { inbox, base: 0, slots: VecDeque::new(), closed: false }
    }

    /// A slot for the next message; its number.
    fn add(&mut self) -> u64 {
        self.slots.push_back(Slot::Waiting);
        self.base + self.slots.len() as u64 - 1
    }

    fn slot(&mut self, n: u64) -> Option<&mut Slot> {
        let i = usize::try_from(n.checked_sub(self.base)?).ok()?;
        self.slots.get_mut(i)
    }

    /// Message `n`'s result, once its ack has been read; `Pending` (with
    /// `cx` woken by the next ack) until then.
    fn poll_ack(&mut self, n: u64, cx: &mut Context<'_>) -> Poll<Result<Confirmation, PublishError>> {
        loop {
            if let Some(slot) = self.slot(n) {
                match std::mem::replace(slot, Slot::Gone) {
                    Slot::Arrived(result) => {
                        self.trim();
                        return Poll::Ready(result);
                    }
                    waiting => *slot = waiting,
                }
            }
            if self.closed {
                return Poll::Ready(Err(PublishError::ConnectionLost { broker: BROKER, attempts: 0 }));
            }
            match Pin::new(&mut self.inbox).poll_next(cx) {
                Poll::Ready(Some(msg)) => self.record(&msg),
                Poll::Ready(None) => self.closed = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Keep the ack in `msg` for the message its subject numbers (an ack
    /// for no awaited message is dropped).
    fn record(&mut self, msg: &async_nats::Message) {
        let Some(n) = msg.subject.rsplit('.').next().and_then(|t| t.parse::<u64>().ok()) else { return };
        if let Some(slot @ Slot::Waiting) = self.slot(n) {
            *slot = Slot::Arrived(read_ack(msg));
        }
    }

    fn forget(&mut self, n: u64) {
        if let Some(slot) = self.slot(n) {
            *slot = Slot::Gone;
            self.trim();
        }
    }

    fn trim(&mut self) {
        while let Some(Slot::Gone) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
    }
}

fn lock(acks: &Mutex<Acks>) -> MutexGuard<'_, Acks> {
    acks.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What JetStream answers to a publish: a `PublishAck` or an API error.
#[derive(Deserialize)]
struct AckReply {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    error: Option<jetstream::Error>,
}

/// The result a JetStream reply means.
fn read_ack(msg: &async_nats::Message) -> Result<Confirmation, PublishError> {
    if let Some(status) = msg.status {
        if status == async_nats::StatusCode::NO_RESPONDERS {
            return Err(PublishError::Unroutable {
                broker: BROKER,
                code: None,
                reason: "no stream captures the subject".into(),
            });
        }
        let reason = msg.description.clone().unwrap_or_else(|| format!("status {status}"));
        return Err(PublishError::Client { broker: BROKER, source: reason.into() });
    }
    match serde_json::from_slice::<AckReply>(&msg.payload) {
        Ok(AckReply { error: Some(e), .. }) => Err(api_error(e)),
        Ok(AckReply { seq: Some(seq), duplicate, .. }) => {
            Ok(Confirmation { sequence: Some(seq), partition: None, duplicate })
        }
        Ok(_) => Err(PublishError::Client { broker: BROKER, source: "a JetStream ack without a sequence".into() }),
        Err(e) => Err(PublishError::Client { broker: BROKER, source: Box::new(e) }),
    }
}

/// A JetStream API error for one message: a 5xx (the stream is full with
/// `discard: new`, storage failed...) may pass later and is a
/// [`Nacked`](PublishError::Nacked); any other is
/// [`Rejected`](PublishError::Rejected).
fn api_error(e: jetstream::Error) -> PublishError {
    if e.code() >= 500 {
        PublishError::Nacked { broker: BROKER, reason: Some(e.to_string()) }
    } else {
        PublishError::Rejected { broker: BROKER, reason: e.to_string() }
    }
}

fn map_send_error(e: async_nats::PublishError) -> PublishError {
    match e.kind() {
        async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
            PublishError::Rejected { broker: BROKER, reason: e.to_string() }
        }
        async_nats::client::PublishErrorKind::InvalidSubject => invalid_subject(),
        // The connection's command channel is closed.
        _ => PublishError::ConnectionLost { broker: BROKER, attempts: 0 },
    }
}

impl Transport for Nats {
    const BROKER: &'static str = BROKER;
    // Acks are read from one inbox by the oldest confirmation, which keeps
    // any that come early for the younger ones.
    const CONFIRMS_IN_ORDER: bool = true;
    type Connection = NatsConnection;
    type Confirm = NatsConfirm;

    async fn connect(&mut self, lost: LostSignal) -> Result<NatsConnection, BoxError> {
        let options = (self.options)()
            // Every ack of the in-flight messages fits in the inbox's queue;
            // a full queue drops acks, so it counts as a lost connection.
            .subscription_capacity(self.max_in_flight.max(DEFAULT_INBOX_CAPACITY))
            // Subjects are checked here before they are sent.
            .skip_subject_validation(true)
            .event_callback(move |event| {
                let lost = lost.clone();
                async move {
                    if matches!(
                        event,
                        async_nats::Event::Disconnected
                            | async_nats::Event::Closed
                            | async_nats::Event::SlowConsumer(_)
                    ) {
                        lost.fire();
                    }
                }
            });
        let client = options.connect(self.url.as_str()).await?;
        if let Some(config) = &self.stream {
            let js = jetstream::context::ContextBuilder::new().timeout(self.api_timeout).build(client.clone());
            js.get_or_create_stream(config.clone()).await?;
        }
        let mut reply_prefix = client.new_inbox();
        let inbox = client.subscribe(format!("{reply_prefix}.*")).await?;
        reply_prefix.push('.');
        Ok(NatsConnection { client, reply_prefix, acks: Arc::new(Mutex::new(Acks::new(inbox))) })
    }

    fn publish<'a>(
        &'a mut self,
        conn: &'a mut NatsConnection,
        msg: &'a Outgoing,
    ) -> impl Future<Output = Result<NatsConfirm, PublishError>> + Send + 'a {
        let subject = (self.subject)(&msg.event);
        let headers = Nats::headers(msg);
        async move {
            if !valid_subject(&subject) {
                return Err(invalid_subject());
            }
            let n = lock(&conn.acks).add();
            // From here on, dropping the confirmation (on error, or with this
            // future) frees the slot.
            let confirm = NatsConfirm { acks: Arc::clone(&conn.acks), n, done: false };
            let mut reply = String::with_capacity(conn.reply_prefix.len() + 20);
            reply.push_str(&conn.reply_prefix);
            reply.push_str(itoa::Buffer::new().format(n));
            conn.client
                .publish_with_reply_and_headers(subject, reply, headers, msg.body.clone())
                .await
                .map_err(map_send_error)?;
            Ok(confirm)
        }
    }
}

/// Resolves on the JetStream `PublishAck` for one message.
pub struct NatsConfirm {
    acks: Arc<Mutex<Acks>>,
    n: u64,
    done: bool,
}

impl fmt::Debug for NatsConfirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfirm").field("n", &self.n).finish_non_exhaustive()
    }
}

impl Future for NatsConfirm {
    type Output = Result<Confirmation, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let out = ready!(lock(&self.acks).poll_ack(self.n, cx));
        self.done = true;
        Poll::Ready(out)
    }
}

impl Drop for NatsConfirm {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.acks).forget(self.n);
        }
    }
}

#[cfg(test)]
mod tests;
