//! Kafka publisher (`kafka` feature, [rdkafka] / librdkafka).
//!
//! An idempotent producer (`enable.idempotence=true`: `acks=all`, ordered
//! retries without duplicates inside a producer session) sends each event to
//! a topic (the event type unless [`KafkaBuilder::topic`] says otherwise),
//! keyed by the event's partition key so that one key's events stay in one
//! partition, in order. The response future resolves on the message's
//! delivery report; the partition and offset are in the
//! [`Receipt`](super::Receipt).
//!
//! Headers (Kafka binding): `content-type`, every CloudEvents attribute as
//! `ce_<name>`, `traceparent` and `tracestate` unprefixed.
//!
//! librdkafka reconnects to brokers and retries by itself; a message still
//! undelivered after [`PublisherConfig::confirm_timeout`]
//! (`message.timeout.ms`), or a fatal producer error, makes the publisher
//! create a new producer and send the unconfirmed messages again (at least
//! once: a new producer session may store a message twice, with the same
//! event id). An unknown topic is [`PublishError::Unroutable`], a message
//! the broker refuses (too large, not authorized...)
//! [`PublishError::Rejected`].
//!
//! A topic that does not exist fails its messages with
//! [`PublishError::Unroutable`] after `topic.metadata.propagation.max.ms`,
//! which the builder sets to half the `confirm_timeout` (at most 30 s, the
//! librdkafka default) unless you set it: a missing topic is reported,
//! not timed out and re-sent.
//!
//! # Compatibility
//!
//! The tests run against a real Kafka-protocol broker, [tansu] 0.6 (a
//! Kafka-compatible broker written in Rust), and against librdkafka's
//! built-in mock cluster (`rdkafka::mocking::MockCluster`, for the faults
//! only it can inject). What tansu 0.6 does differently from Apache Kafka:
//!
//! - **Idempotent producer: supported** (`InitProducerId`, producer ids and
//!   sequence numbers); the publisher works with its defaults.
//! - **No automatic topic creation**: create topics first (`tansu topic
//!   create`, or an admin client's `CreateTopics`); a message to a missing
//!   topic fails with `Unroutable`.
//! - **No broker-side message size limit**: a message larger than
//!   librdkafka's `message.max.bytes` (1,000,000 by default; set it with
//!   [`KafkaBuilder::set`]) fails with [`PublishError::Rejected`] before it
//!   is sent, as with any broker.
//! - **No ACLs enforced** (SASL/SCRAM authentication with `tansu broker
//!   --authentication` only): "not authorized" errors do not happen there;
//!   against Apache Kafka they fail with `Rejected`.
//! - Transactions are not used by the publisher.
//!
//! A broker that does **not** support the idempotent producer (no
//! `InitProducerId`), or does not allow it (`IdempotentWrite` on the
//! cluster, before Kafka 2.8), makes librdkafka fail the producer for good:
//! from then on every message fails at once with `Rejected`, whose reason
//! says so (no hang, no endless replacement of the producer). Build the
//! publisher with [`KafkaBuilder::idempotence`]`(false)` for such a broker.
//!
//! ```no_run
//! use tower::ServiceExt;
//! use tower_mesh::publish::Event;
//! use tower_mesh::publish::kafka::Kafka;
//!
//! # async fn demo() -> Result<(), tower_mesh::BoxError> {
//! let publisher = Kafka::builder("127.0.0.1:9092")
//!     .topic(|_: &Event| "orders".to_owned())
//!     .set("compression.type", "lz4")
//!     .build()?;
//! let event =
//!     Event::builder("/orders", "created").partition_key("customer-7").json(&serde_json::json!({"id": 42}))?.build()?;
//! let receipt = publisher.oneshot(event).await?;
//! println!("partition {:?} offset {:?}", receipt.confirmation.partition, receipt.confirmation.sequence);
//! # Ok(()) }
//! ```
//!
//! [rdkafka]: https://docs.rs/rdkafka
//! [tansu]: https://crates.io/crates/tansu

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};

use super::{
    Confirmation, Event, InvalidEvent, LostSignal, Outgoing, PublishError, Publisher, PublisherConfig, Transport,
};
use crate::error::BoxError;

const BROKER: &str = "kafka";

/// Header name prefix of the CloudEvents attributes (Kafka binding).
pub const HEADER_PREFIX: &str = "ce_";

/// A Kafka publisher: [`Publisher`] over [`Kafka`].
pub type KafkaPublisher = Publisher<Kafka>;

/// How the topic of an event is chosen.
pub type TopicFn = Arc<dyn Fn(&Event) -> String + Send + Sync>;

/// The Kafka [`Transport`]: one idempotent producer per connection.
pub struct Kafka {
    config: ClientConfig,
    topic: TopicFn,
    connect_timeout: Duration,
    idempotence: bool,
    /// Set when a producer died of a fatal error that a new producer would
    /// meet again (the broker does not support or allow the idempotent
    /// producer): from then on every message fails with it.
    refused: Refused,
}

/// Why every message is refused, once a producer met a permanent fatal error.
type Refused = Arc<OnceLock<String>>;

impl fmt::Debug for Kafka {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client config may carry SASL credentials: leave it out.
        f.debug_struct("Kafka").finish_non_exhaustive()
    }
}

impl Kafka {
    /// Start configuring a publisher for the cluster reachable at
    /// `bootstrap_servers` (`host:port[,host:port...]`).
    pub fn builder(bootstrap_servers: impl Into<String>) -> KafkaBuilder {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap_servers.into());
        KafkaBuilder {
            transport: Kafka {
                config,
                topic: Arc::new(|e: &Event| e.ty().to_owned()),
                connect_timeout: Duration::ZERO,
                idempotence: true,
                refused: Refused::default(),
            },
            config: PublisherConfig { name: BROKER.into(), ..Default::default() },
        }
    }

    /// The headers this publisher sends `msg` with (public so that a
    /// benchmark can make the raw client send exactly the same message).
    pub fn headers(msg: &Outgoing) -> OwnedHeaders {
        let mut h = OwnedHeaders::new_with_capacity(14);
        if let Some(ct) = msg.content_type() {
            h = h.insert(Header { key: "content-type", value: Some(ct) });
        }
        let mut key = String::with_capacity(32);
        for (name, value) in msg.event.header_pairs() {
            key.clear();
            if !Event::is_trace_header(name) {
                key.push_str(HEADER_PREFIX);
            }
            key.push_str(name);
            h = h.insert(Header { key: &key, value: Some(value.as_bytes()) });
        }
        h
    }
}

/// `true` for a legal Kafka topic name: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Builder of a [`KafkaPublisher`].
pub struct KafkaBuilder {
    transport: Kafka,
    config: PublisherConfig,
}

impl fmt::Debug for KafkaBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBuilder").field("transport", &self.transport).field("config", &self.config).finish()
    }
}

impl KafkaBuilder {
    /// Choose the topic (default: the event type).
    pub fn topic(mut self, f: impl Fn(&Event) -> String + Send + Sync + 'static) -> Self {
        self.transport.topic = Arc::new(f);
        self
    }

    /// Set a librdkafka producer property (`compression.type`,
    /// `security.protocol`, `linger.ms`...). `enable.idempotence` and
    /// `message.timeout.ms` are set by [`build`](Self::build), and
    /// `topic.metadata.propagation.max.ms` unless set here.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.transport.config.set(key, value);
        self
    }

    /// Use the idempotent producer (the default: `true`). Turn it off only
    /// for a broker that does not support it (no `InitProducerId`, see
    /// [compatibility](self#compatibility)): the producer then keeps one
    /// request in flight per broker connection (per-key order survives
    /// librdkafka's retries), and a retried request may store a message
    /// twice.
    pub fn idempotence(mut self, on: bool) -> Self {
        self.transport.idempotence = on;
        self
    }

    /// The publisher settings (in-flight bound, reconnect backoff, mode...).
    pub fn config(mut self, config: PublisherConfig) -> Self {
        self.config = config;
        self
    }

    /// Start the publisher (inside a Tokio runtime); it connects in the background.
    pub fn build(mut self) -> Result<KafkaPublisher, PublishError> {
        let timeout_ms = self.config.confirm_timeout.as_millis().clamp(1, i32::MAX as u128);
        let config = &mut self.transport.config;
        if self.transport.idempotence {
            config
                .set("enable.idempotence", "true")
                // A message that fails for good (timed out) stops the producer
                // (fatal error) instead of leaving a gap that later messages of
                // its partition would pass: the publisher replaces the producer
                // and re-sends in order.
                .set("enable.gapless.guarantee", "true");
        } else {
            config
                .set("enable.idempotence", "false")
                .set("acks", "all")
                .set("max.in.flight.requests.per.connection", "1");
        }
        if config.get("topic.metadata.propagation.max.ms").is_none() {
            // A topic that does not exist fails its messages with
            // `Unroutable` after this long, well before they time out (and
            // would be re-sent on a new producer, again and again).
            let propagation_ms = (timeout_ms / 2).clamp(1, 30_000);
            config.set("topic.metadata.propagation.max.ms", propagation_ms.to_string());
        }
        config
            .set("message.timeout.ms", timeout_ms.to_string())
            // Room for every unconfirmed message and for reports not yet
            // handed back by the polling thread: a send never meets QueueFull
            // (which would fail a message and let a later one pass it).
            .set("queue.buffering.max.messages", self.config.max_in_flight.saturating_mul(2).max(100_000).to_string());
        self.transport.connect_timeout = self.config.connect_timeout;
        Publisher::new(self.transport, self.config)
    }
}

/// Tells the publisher when the producer hit a fatal error (it must be
/// replaced); logs librdkafka's other errors.
struct LostContext {
    lost: LostSignal,
}

impl ClientContext for LostContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            tracing::warn!(broker = BROKER, %error, reason, "fatal Kafka producer error; replacing the producer");
            self.lost.fire();
        } else {
            // Broker connections come and go; librdkafka reconnects and retries.
            tracing::debug!(broker = BROKER, %error, reason, "librdkafka error");
        }
    }
}

/// An idempotent Kafka producer (or none, when the broker refused it for
/// good: every message then fails with [`PublishError::Rejected`]).
pub struct KafkaConnection {
    producer: Option<FutureProducer<LostContext>>,
    refused: Refused,
}

impl fmt::Debug for KafkaConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConnection").finish_non_exhaustive()
    }
}

impl Drop for KafkaConnection {
    fn drop(&mut self) {
        // Dropping a producer joins its polling thread: not on a runtime worker.
        if let Some(producer) = self.producer.take() {
            if let Some((code, reason)) = producer.client().fatal_error() {
                if is_permanent(code) {
                    tracing::error!(broker = BROKER, %code, reason, "the broker refuses the idempotent producer; \
                        every message now fails (build the publisher with idempotence(false) for this broker)");
                    let _ = self.refused.set(format!(
                        "{reason} (the idempotent producer is not supported or not allowed by this broker; \
                         build the publisher with `KafkaBuilder::idempotence(false)`)"
                    ));
                }
            }
            // Nothing more from this producer: a new one re-sends what it
            // left unconfirmed, and must not be overtaken by it.
            producer.purge(PurgeConfig::default().queue().inflight());
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => drop(handle.spawn_blocking(move || drop(producer))),
                Err(_) => drop(producer),
            }
        }
    }
}

/// A fatal producer error that a new producer would meet again: the broker
/// does not support the idempotent producer (no `InitProducerId`), or does
/// not allow it (`IdempotentWrite` on the cluster, before Kafka 2.8).
fn is_permanent(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnsupportedFeature
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
    )
}

fn map_error(e: &KafkaError) -> PublishError {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::MessageTimedOut) => PublishError::ConfirmTimeout { broker: BROKER },
        Some(C::QueueFull) => PublishError::Overloaded { broker: BROKER },
        Some(C::Fatal | C::AllBrokersDown | C::BrokerTransportFailure | C::PurgeQueue | C::PurgeInflight) => {
            PublishError::ConnectionLost { broker: BROKER, attempts: 0 }
        }
        Some(C::UnknownTopic | C::UnknownTopicOrPartition | C::UnknownPartition) => {
            PublishError::Unroutable { broker: BROKER, code: None, reason: e.to_string() }
        }
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessage
            | C::InvalidMessageSize
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::InvalidRecord
            | C::PolicyViolation,
        ) => PublishError::Rejected { broker: BROKER, reason: e.to_string() },
        _ => PublishError::Client { broker: BROKER, source: Box::new(e.clone()) },
    }
}

impl Transport for Kafka {
    const BROKER: &'static str = BROKER;
    type Connection = KafkaConnection;
    type Confirm = KafkaConfirm;

    async fn connect(&mut self, lost: LostSignal) -> Result<KafkaConnection, BoxError> {
        let refused = self.refused.clone();
        if self.refused.get().is_some() {
            return Ok(KafkaConnection { producer: None, refused });
        }
        let producer: FutureProducer<LostContext> = self.config.create_with_context(LostContext { lost })?;
        // Wait until the cluster answers (librdkafka would connect lazily):
        // a cluster that is down is reported now, as Unavailable.
        let probe = producer.clone();
        let timeout = self.connect_timeout;
        let conn = KafkaConnection { producer: Some(producer), refused };
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, timeout).map(drop)).await??;
        Ok(conn)
    }

    fn publish<'a>(
        &'a mut self,
        conn: &'a mut KafkaConnection,
        msg: &'a Outgoing,
    ) -> impl Future<Output = Result<KafkaConfirm, PublishError>> + Send + 'a {
        let topic = (self.topic)(&msg.event);
        let sent = if !valid_topic(&topic) {
            Err(PublishError::InvalidEvent(InvalidEvent::Invalid {
                attribute: "type",
                reason: "does not make a valid Kafka topic",
            }))
        } else if let Some(reason) = conn.refused.get() {
            Err(PublishError::Rejected { broker: BROKER, reason: reason.clone() })
        } else {
            let producer = conn.producer.as_ref().expect("a connection not refused has its producer");
            let mut record = FutureRecord::<[u8], [u8]>::to(&topic).payload(&msg.body[..]).headers(Kafka::headers(msg));
            if let Some(key) = msg.event.partition_key() {
                record = record.key(key.as_bytes());
            }
            // Queued in the producer now, in publish order.
            producer.send_result(record).map(|inner| KafkaConfirm { inner }).map_err(|(e, _)| map_error(&e))
        };
        std::future::ready(sent)
    }
}

pin_project! {
    /// Resolves on the delivery report of one message.
    pub struct KafkaConfirm {
        #[pin]
        inner: DeliveryFuture,
    }
}

impl fmt::Debug for KafkaConfirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfirm").finish_non_exhaustive()
    }
}

impl Future for KafkaConfirm {
    type Output = Result<Confirmation, PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(self.project().inner.poll(cx)) {
            Ok(Ok(delivery)) => Ok(Confirmation {
                sequence: u64::try_from(delivery.offset).ok(),
                partition: Some(delivery.partition),
                duplicate: false,
            }),
            Ok(Err((e, _message))) => Err(map_error(&e)),
            // The producer was dropped before the report.
            Err(_) => Err(PublishError::ConnectionLost { broker: BROKER, attempts: 0 }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::ContentMode;
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn topics() {
        assert!(valid_topic("orders.created_v1-x"));
        assert!(!valid_topic("orders/created"));
        assert!(!valid_topic(""));
        assert!(!valid_topic(".."));
        assert!(!valid_topic(&"a".repeat(250)));
    }

    #[test]
    fn headers_carry_the_attributes() {
        let e = Event::builder("/s", "t.x")
            .correlation_id("c-1")
            .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .build()
            .unwrap();
        let h = Kafka::headers(&Outgoing::new(e.clone(), ContentMode::Structured));
        let get = |k: &str| {
            h.iter().find(|x| x.key == k).and_then(|x| x.value).map(|v| std::str::from_utf8(v).unwrap().to_owned())
        };
        assert_eq!(get("ce_id").as_deref(), Some(e.id()));
        assert_eq!(get("ce_type").as_deref(), Some("t.x"));
        assert_eq!(get("ce_correlationid").as_deref(), Some("c-1"));
        assert!(get("traceparent").is_some());
        assert!(get("ce_traceparent").is_none());
        assert_eq!(get("content-type").as_deref(), Some("application/cloudevents+json"));
    }

    #[test]
    fn errors() {
        let e = |c| map_error(&KafkaError::MessageProduction(c));
        assert!(matches!(e(RDKafkaErrorCode::MessageTimedOut), PublishError::ConfirmTimeout { .. }));
        assert!(matches!(e(RDKafkaErrorCode::UnknownTopicOrPartition), PublishError::Unroutable { .. }));
        assert!(matches!(e(RDKafkaErrorCode::MessageSizeTooLarge), PublishError::Rejected { .. }));
        assert!(matches!(e(RDKafkaErrorCode::AllBrokersDown), PublishError::ConnectionLost { .. }));
        assert!(matches!(e(RDKafkaErrorCode::QueueFull), PublishError::Overloaded { .. }));
        assert!(e(RDKafkaErrorCode::MessageTimedOut).is_transient());
        assert!(!e(RDKafkaErrorCode::MessageSizeTooLarge).is_transient());
    }
}
