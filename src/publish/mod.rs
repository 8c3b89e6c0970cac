//! Broker publishers as `tower::Service<Event>`: RabbitMQ, NATS JetStream,
//! Redis Streams, MQTT and Kafka, each behind its own feature, all wrapped by
//! the same resilience stack.
//!
//! - [`Event`] is a CloudEvents 1.0 event (JSON envelope by default, or
//!   binary mode with attributes as broker headers). The correlation id and
//!   W3C trace context of the request in scope are copied in.
//! - [`Publisher<T>`] is the service for one broker's [`Transport`]: the
//!   future resolves with a [`Receipt`] only when the broker confirmed the
//!   message; at most [`PublisherConfig::max_in_flight`] messages are
//!   unconfirmed (`poll_ready` waits); a lost connection is re-established
//!   with backoff and the messages it may have stored are sent again with
//!   the same id (at least once; see [the rules](#faults-the-rules)).
//! - [`PublishError`] says what went wrong; [`PublishClassifier`] makes the
//!   retry layer and circuit breaker act only on transient broker trouble.
//! - [`DeadLetterLayer`] publishes an event that finally failed, with the
//!   reason, to a dead-letter target.
//!
//! | feature | broker | confirmed when |
//! |---|---|---|
//! | `rabbitmq` | RabbitMQ (lapin), topic exchange + routing key | publisher confirm `ack` |
//! | `nats` | NATS JetStream (async-nats) | `PublishAck` |
//! | `redis` | Redis Streams (`XADD`) / pub/sub | the command's reply |
//! | `mqtt` | MQTT (rumqttc), QoS 1 | the matching `PUBACK` |
//! | `kafka` | Kafka (rdkafka), idempotent producer | the delivery report |
//!
//! # Faults: the rules
//!
//! - **Every message `call` accepts is sent at least once**, whether or not
//!   its caller still waits: dropping the response future does not un-send
//!   it. While the publisher is connected nothing is dropped.
//! - **Re-send only what a broken connection may have stored.** When a
//!   connection breaks, a message that was *written* to it and not
//!   confirmed is sent again on the next one, with the same event id — even
//!   if its caller gave up (the broker may hold it, the caller was told
//!   nothing). A message that never reached the connection (still queued
//!   in the publisher, or, for RabbitMQ, in lapin's frame queue) is sent on
//!   the next connection as a first send: it is not counted as a re-send and
//!   uses none of [`max_resends`](PublisherConfig::max_resends).
//!   RabbitMQ reports which messages' frames reached the socket (after a
//!   [`confirm_timeout`](PublisherConfig::confirm_timeout) on a connection
//!   that still looks open, a write still under way counts as not written);
//!   the other transports count a message handed to their client as
//!   written.
//! - **Drop only what was never sent**: a message never written anywhere
//!   whose caller gave up is dropped while the broker is unreachable
//!   (`tower_mesh_publish_abandoned_total`).
//! - **Duplicates are reported per message**: [`Receipt::sends`] is how
//!   many connections the message was written to ([`Receipt::resent`] when
//!   more than one); the broker may hold that many copies, unless it drops
//!   copies by id (JetStream, the idempotent Kafka producer).
//!   `tower_mesh_publish_resent_total` counts the re-sends.
//! - **Readiness never waits for a connection**, only for in-flight room. A
//!   message handed in while connecting waits in its response future, so a
//!   `TimeoutLayer` above bounds it: against a broker that accepts and never
//!   answers, a call under a 1 s timeout fails with
//!   [`Elapsed`](crate::timeout::Elapsed) after 1 s, not after the
//!   [`connect_timeout`](PublisherConfig::connect_timeout).
//! - **Once a connection attempt has failed** (state
//!   [`Down`](ConnectionState::Down)), by default calls fail at once with
//!   [`PublishError::Unavailable`] (for a circuit breaker above), and so do
//!   the messages handed in while that attempt ran; messages accepted while
//!   connected wait for the reconnect. With
//!   [`outage_wait`](PublisherConfig::outage_wait) set, the publisher
//!   **waits for the broker up to that long** instead: calls are accepted
//!   while it is down, at most `max_in_flight` of them (`poll_ready` holds a
//!   producer back, where a bare `call_all` loop would burn every remaining
//!   event on fast failures in milliseconds, and a retry layer's backoff
//!   sleeps outside `max_in_flight`), sent once, in order, when it is back,
//!   and each still unsent after `outage_wait` fails with `Unavailable`. Put
//!   a `TimeoutLayer` of at least `outage_wait` above it, and no retry layer
//!   for `Unavailable` (see `examples/publisher.rs`).
//!
//! ## Under flapping
//!
//! Every broken connection costs a reconnect and the re-send of what it had
//! written and not confirmed. Expect each message to be stored at most
//! [`Receipt::sends`] times — 1 + the number of cuts it was in flight for —
//! and throughput to follow how long connections live, not the broker. A
//! RabbitMQ connection takes several round trips to set up (TCP, AMQP
//! handshake, channel, `confirm.select`) where NATS and Redis take one, so
//! under a reset storm more of its attempts are cut before they complete,
//! and each failed attempt lengthens the [reconnect
//! backoff](PublisherConfig::reconnect): that, not the publishing, is where
//! its time goes. The RabbitMQ publisher queues the frames of every waiting
//! message at once and waits for writes and confirms together, so more
//! messages are on the wire when a cut comes, and more are re-sent, than if
//! it waited for each write. The test
//! `a_reset_storm_stores_each_message_at_most_once_per_send` (resets through
//! a TCP proxy) checks that every message is stored at least once and at
//! most `sends` times; `BENCHMARKS.md` in the repository has its figures.
//!
//! # Under the resilience stack
//!
//! Each confirmation is already bounded by
//! [`PublisherConfig::confirm_timeout`]: past it the connection counts as
//! broken and the message is sent again after the reconnect. A
//! `TimeoutLayer` above the retry layer bounds the whole publish (waiting
//! for room, re-sends and retries included); a per-attempt one below it is
//! rarely worth its cost. A timeout layer registers and cancels a tokio
//! timer for every message, as each waits for its confirmation (a total
//! timeout over a per-attempt one makes none of its own while the
//! attempt's is pending). What the publishers and the stack above them cost
//! per message, against the raw broker clients, is in `BENCHMARKS.md` in the
//! repository.
//!
//! # Metrics
//!
//! With `service` (the [name](PublisherConfig::name)) and `broker` labels:
//! `tower_mesh_publish_total{outcome}` (settled messages; `outcome` is
//! `success` or the [error kind](PublishError::kind)),
//! `tower_mesh_publish_confirm_seconds` (send to confirmation),
//! `tower_mesh_publish_connected` (gauge, 1 or 0),
//! `tower_mesh_publish_reconnects_total`, `tower_mesh_publish_resent_total`,
//! `tower_mesh_publish_connect_failures_total`; and
//! `tower_mesh_dead_letter_total{service, outcome}`. Connection state
//! changes are `info` tracing events, losses `warn`.

mod config;
mod confirm;
mod dead_letter;
mod error;
mod event;

pub use self::config::{PublisherConfig, ReconnectBackoff};
pub use self::confirm::{
    Confirmation, ConnectionState, LostSignal, Outgoing, Publisher, Receipt, ResponseFuture, Transport,
};
pub use self::dead_letter::{DeadLetter, DeadLetterLayer, DeadLettered, REASON_ATTRIBUTE, SERVICE_ATTRIBUTE};
pub use self::error::{InvalidEvent, PublishClassifier, PublishError};
pub use self::event::{ContentMode, Event, EventBuilder, MAX_ATTRIBUTE_LEN, SPEC_VERSION, STRUCTURED_CONTENT_TYPE};

#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
