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
//! A subject no stream captures is [`PublishError::Unroutable`].
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

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use pin_project_lite::pin_project;

use super::{
    Confirmation, Event, InvalidEvent, LostSignal, Outgoing, PublishError, Publisher, PublisherConfig, Transport,
};
use crate::error::BoxError;

const BROKER: &str = "nats";

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
    ack_timeout: std::time::Duration,
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
                ack_timeout: PublisherConfig::default().confirm_timeout,
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
        // JetStream's ack timeout follows ours, so a missing ack reconnects and re-sends.
        self.transport.ack_timeout = self.config.confirm_timeout;
        Publisher::new(self.transport, self.config)
    }
}

/// An open NATS connection with its JetStream context.
pub struct NatsConnection {
    js: jetstream::Context,
}

impl fmt::Debug for NatsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConnection").finish_non_exhaustive()
    }
}

fn map_error(e: async_nats::jetstream::context::PublishError) -> PublishError {
    match e.kind() {
        PublishErrorKind::StreamNotFound => {
            PublishError::Unroutable { broker: BROKER, code: None, reason: "no stream captures the subject".into() }
        }
        PublishErrorKind::TimedOut => PublishError::ConfirmTimeout { broker: BROKER },
        PublishErrorKind::BrokenPipe => PublishError::ConnectionLost { broker: BROKER, attempts: 0 },
        PublishErrorKind::MaxAckPending => PublishError::Nacked { broker: BROKER, reason: Some(e.to_string()) },
        PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence
        | PublishErrorKind::MaxPayloadExceeded => PublishError::Rejected { broker: BROKER, reason: e.to_string() },
        _ => PublishError::Client { broker: BROKER, source: Box::new(e) },
    }
}

impl Transport for Nats {
    const BROKER: &'static str = BROKER;
    type Connection = NatsConnection;
    type Confirm = NatsConfirm;

    async fn connect(&mut self, lost: LostSignal) -> Result<NatsConnection, BoxError> {
        let options = (self.options)().event_callback(move |event| {
            let lost = lost.clone();
            async move {
                if matches!(event, async_nats::Event::Disconnected | async_nats::Event::Closed) {
                    lost.fire();
                }
            }
        });
        let client = options.connect(self.url.as_str()).await?;
        let js = jetstream::context::ContextBuilder::new().timeout(self.ack_timeout).build(client);
        if let Some(config) = &self.stream {
            js.get_or_create_stream(config.clone()).await?;
        }
        Ok(NatsConnection { js })
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
                return Err(PublishError::InvalidEvent(InvalidEvent::Invalid {
                    attribute: "type",
                    reason: "does not make a valid NATS subject",
                }));
            }
            let ack = conn.js.publish_with_headers(subject, headers, msg.body.clone()).await.map_err(map_error)?;
            Ok(NatsConfirm { inner: ack.into_future() })
        }
    }
}

type AckFuture = <jetstream::context::PublishAckFuture as IntoFuture>::IntoFuture;

pin_project! {
    /// Resolves on the JetStream `PublishAck` for one message.
    pub struct NatsConfirm {
        #[pin]
        inner: AckFuture,
    }
}

impl fmt::Debug for NatsConfirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfirm").finish_non_exhaustive()
    }
}

impl Future for NatsConfirm {
    type Output = Result<Confirmation, PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(self.project().inner.poll(cx)) {
            Ok(ack) => Ok(Confirmation { sequence: Some(ack.sequence), partition: None, duplicate: ack.duplicate }),
            Err(e) => Err(map_error(e)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        assert!(valid_subject("orders.created"));
        assert!(!valid_subject("orders.*"));
        assert!(!valid_subject("orders.>"));
        assert!(!valid_subject("orders..created"));
        assert!(!valid_subject("orders created"));
        assert!(!valid_subject(""));
        assert!(!valid_subject("orders."));
        assert!(!valid_subject(".orders"));
        assert!(!valid_subject(&"a".repeat(1025)));
    }

    proptest::proptest! {
        /// The one-pass check gives the answers of its definition.
        #[test]
        fn subject_check_follows_its_definition(s in "[a-z.*> \\t\\x00é]{0,12}") {
            let defined = !s.is_empty()
                && s.len() <= 1024
                && s.split('.').all(|t| !t.is_empty() && t != "*" && t != ">")
                && s.bytes().all(|b| b.is_ascii_graphic());
            proptest::prop_assert_eq!(valid_subject(&s), defined);
        }
    }

    #[test]
    fn headers_carry_the_attributes() {
        let e = Event::builder("/s", "t.x")
            .correlation_id("c-1")
            .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .build()
            .unwrap();
        let h = Nats::headers(&Outgoing::new(e.clone(), super::super::ContentMode::Structured));
        assert_eq!(h.get("Nats-Msg-Id").map(|v| v.as_str()), Some(e.id()));
        assert_eq!(h.get("ce-type").map(|v| v.as_str()), Some("t.x"));
        assert_eq!(h.get("ce-correlationid").map(|v| v.as_str()), Some("c-1"));
        assert!(h.get("traceparent").is_some());
        assert_eq!(h.get("content-type").map(|v| v.as_str()), Some("application/cloudevents+json"));
    }
}
