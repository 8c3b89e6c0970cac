//! RabbitMQ publisher (`rabbitmq` feature, [lapin]).
//!
//! Events go to a topic exchange with a routing key (the event type unless
//! [`RabbitMqBuilder::routing_key`] says otherwise), as persistent messages,
//! on a channel in publisher-confirm mode. The response future resolves only
//! when RabbitMQ acknowledges the message; a `nack` is
//! [`PublishError::Nacked`], and a message no queue is bound for comes back
//! (it is published `mandatory`) as [`PublishError::Unroutable`] with
//! RabbitMQ's reply code (312 `NO_ROUTE`).
//!
//! AMQP properties: `message_id` = event id, `type` = event type,
//! `correlation_id` = correlation id, `timestamp` = event time,
//! `content_type`, `delivery_mode` 2 (persistent); every CloudEvents attribute
//! also as a header `cloudEvents:<name>` (AMQP binding), `traceparent` and
//! `tracestate` unprefixed.
//!
//! ```no_run
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_mesh::publish::{Event, PublisherConfig};
//! use tower_mesh::publish::rabbitmq::RabbitMq;
//!
//! # async fn demo() -> Result<(), tower_mesh::BoxError> {
//! let publisher = RabbitMq::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .exchange("orders")
//!     .config(PublisherConfig { max_in_flight: 256, ..Default::default() })
//!     .build()?;
//! let svc = ServiceBuilder::new()
//!     // .layer(timeout).layer(retry).layer(circuit breaker)...
//!     .service(publisher);
//! let event = Event::builder("/orders", "order.created").json(&serde_json::json!({"id": 42}))?.build()?;
//! let receipt = svc.oneshot(event).await?;
//! println!("confirmed {}", receipt.event.id());
//! # Ok(()) }
//! ```
//!
//! [lapin]: https://docs.rs/lapin

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::UNIX_EPOCH;

use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind, PublisherConfirm};

use super::{Confirmation, Event, LostSignal, Outgoing, PublishError, Publisher, PublisherConfig, Transport};
use crate::error::BoxError;

const BROKER: &str = "rabbitmq";

/// Header name prefix of the CloudEvents attributes (AMQP binding).
pub const HEADER_PREFIX: &str = "cloudEvents:";

/// A RabbitMQ publisher: [`Publisher`] over [`RabbitMq`].
pub type RabbitMqPublisher = Publisher<RabbitMq>;

/// How the routing key of an event is chosen.
pub type RoutingKeyFn = Arc<dyn Fn(&Event) -> String + Send + Sync>;

/// The RabbitMQ [`Transport`]: one connection and one confirm-mode channel.
pub struct RabbitMq {
    url: String,
    exchange: ShortString,
    declare: bool,
    routing_key: RoutingKeyFn,
    mandatory: bool,
    persistent: bool,
    connection_name: String,
}

impl fmt::Debug for RabbitMq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: leave it out.
        f.debug_struct("RabbitMq")
            .field("exchange", &self.exchange.as_str())
            .field("declare", &self.declare)
            .field("mandatory", &self.mandatory)
            .field("persistent", &self.persistent)
            .finish_non_exhaustive()
    }
}

impl RabbitMq {
    /// Start configuring a publisher for the broker at `url`
    /// (`amqp://user:pass@host:5672/vhost`).
    pub fn builder(url: impl Into<String>) -> RabbitMqBuilder {
        RabbitMqBuilder {
            transport: RabbitMq {
                url: url.into(),
                exchange: ShortString::from("amq.topic"),
                declare: false,
                routing_key: Arc::new(|e: &Event| e.ty().to_owned()),
                mandatory: true,
                persistent: true,
                connection_name: "tower-mesh publisher".into(),
            },
            config: PublisherConfig { name: BROKER.into(), ..Default::default() },
        }
    }

    /// The AMQP properties this publisher sends `msg` with (public so that a
    /// benchmark can make the raw client send exactly the same message).
    pub fn properties(msg: &Outgoing, persistent: bool) -> BasicProperties {
        let e = &msg.event;
        let mut headers = FieldTable::default();
        for (name, value) in e.header_pairs() {
            let key = if Event::is_trace_header(name) {
                ShortString::from(name)
            } else {
                let mut k = String::with_capacity(HEADER_PREFIX.len() + name.len());
                k.push_str(HEADER_PREFIX);
                k.push_str(name);
                ShortString::from(k)
            };
            headers.insert(key, AMQPValue::LongString(LongString::from(value.into_owned())));
        }
        let mut p = BasicProperties::default()
            .with_message_id(ShortString::from(e.id()))
            .with_type(ShortString::from(e.ty()))
            .with_headers(headers);
        if persistent {
            p = p.with_delivery_mode(2);
        }
        if let Some(ct) = msg.content_type() {
            p = p.with_content_type(ShortString::from(ct));
        }
        if let Some(c) = e.correlation_id() {
            p = p.with_correlation_id(ShortString::from(c));
        }
        if let Some(t) = e.time().and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            p = p.with_timestamp(t.as_secs());
        }
        p
    }
}

/// Builder of a [`RabbitMqPublisher`].
pub struct RabbitMqBuilder {
    transport: RabbitMq,
    config: PublisherConfig,
}

impl fmt::Debug for RabbitMqBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqBuilder").field("transport", &self.transport).field("config", &self.config).finish()
    }
}

impl RabbitMqBuilder {
    /// The exchange to publish to (default `amq.topic`).
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.transport.exchange = ShortString::from(exchange.into());
        self
    }

    /// Declare the exchange as a durable topic exchange on every connect
    /// (default: no, it must exist).
    pub fn declare_exchange(mut self, declare: bool) -> Self {
        self.transport.declare = declare;
        self
    }

    /// Choose the routing key (default: the event type).
    pub fn routing_key(mut self, f: impl Fn(&Event) -> String + Send + Sync + 'static) -> Self {
        self.transport.routing_key = Arc::new(f);
        self
    }

    /// Publish `mandatory` so unroutable messages come back as
    /// [`PublishError::Unroutable`] (default: yes).
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.transport.mandatory = mandatory;
        self
    }

    /// Persistent delivery (`delivery_mode` 2, default: yes).
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.transport.persistent = persistent;
        self
    }

    /// The connection name shown in the RabbitMQ management UI.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.transport.connection_name = name.into();
        self
    }

    /// The publisher settings (in-flight bound, reconnect backoff, mode...).
    pub fn config(mut self, config: PublisherConfig) -> Self {
        self.config = config;
        self
    }

    /// Start the publisher (inside a Tokio runtime); it connects in the background.
    pub fn build(self) -> Result<RabbitMqPublisher, PublishError> {
        Publisher::new(self.transport, self.config)
    }
}

/// An open RabbitMQ connection and its confirm-mode channel.
pub struct RabbitMqConnection {
    channel: Channel,
    _connection: Connection,
}

impl fmt::Debug for RabbitMqConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqConnection").field("channel", &self.channel.id()).finish()
    }
}

fn map_error(e: lapin::Error) -> PublishError {
    if e.is_amqp_soft_error() {
        // A channel-level refusal (e.g. 404 exchange not found): this message
        // fails; the closed channel makes the next send reconnect.
        PublishError::Rejected { broker: BROKER, reason: e.to_string() }
    } else {
        tracing::debug!(error = %e, "rabbitmq connection error");
        PublishError::ConnectionLost { broker: BROKER, attempts: 0 }
    }
}

impl Transport for RabbitMq {
    const BROKER: &'static str = BROKER;
    // A channel confirms its messages in delivery-tag order.
    const CONFIRMS_IN_ORDER: bool = true;
    type Connection = RabbitMqConnection;
    type Confirm = RabbitMqConfirm;

    async fn connect(&mut self, lost: LostSignal) -> Result<RabbitMqConnection, BoxError> {
        let props =
            ConnectionProperties::default().with_connection_name(LongString::from(self.connection_name.clone()));
        let connection = Connection::connect(&self.url, props).await?;
        let mut events = connection.events_listener();
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                if let lapin::Event::Error(e) = ev {
                    tracing::debug!(error = %e, "rabbitmq connection error event");
                    lost.fire();
                    break;
                }
            }
        });
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        if self.declare {
            channel
                .exchange_declare(
                    self.exchange.clone(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions { durable: true, ..Default::default() },
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(RabbitMqConnection { channel, _connection: connection })
    }

    /// Queues the message's frames on the channel and returns at once: the
    /// write to the socket and the broker's confirm are both awaited in the
    /// confirmation, so the next message is queued without waiting for this
    /// one's write (waiting for each write, one message at a time, left most
    /// of the in-flight messages queued in the publisher).
    fn publish<'a>(
        &'a mut self,
        conn: &'a mut RabbitMqConnection,
        msg: &'a Outgoing,
    ) -> impl Future<Output = Result<RabbitMqConfirm, PublishError>> + Send + 'a {
        let routing_key = (self.routing_key)(&msg.event);
        let res = if routing_key.len() > 255 {
            Err(PublishError::InvalidEvent(super::InvalidEvent::Invalid {
                attribute: "type",
                reason: "routing key longer than 255 bytes",
            }))
        } else {
            let props = RabbitMq::properties(msg, self.persistent);
            let options = BasicPublishOptions { mandatory: self.mandatory, ..Default::default() };
            let (channel, exchange, body) = (conn.channel.clone(), self.exchange.clone(), msg.body.clone());
            let mut write: Writing = Box::pin(async move {
                channel.basic_publish(exchange, ShortString::from(routing_key), options, &body, props).await
            });
            // The first poll queues the frames (in publish order) and waits
            // for their write.
            match write.as_mut().poll(&mut Context::from_waker(std::task::Waker::noop())) {
                Poll::Pending => Ok(RabbitMqConfirm { state: State::Writing(write) }),
                Poll::Ready(Ok(confirm)) => Ok(RabbitMqConfirm { state: State::Confirming(confirm) }),
                // Not queued: never written.
                Poll::Ready(Err(e)) => Err(map_error(e)),
            }
        };
        std::future::ready(res)
    }

    fn written(confirm: &mut RabbitMqConfirm) -> bool {
        confirm.written()
    }
}

/// A message's `basic.publish`: resolves once its frames are written to the
/// socket, with the publisher confirm to wait for.
type Writing = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>;

enum State {
    /// The frames are queued on the channel, not yet all written.
    Writing(Writing),
    /// Written: waiting for the broker's confirm.
    Confirming(PublisherConfirm),
    /// Settled; `written` says whether the frames reached the socket.
    Done { written: bool },
}

/// Resolves on RabbitMQ's publisher confirm for one message (after its
/// frames are written to the socket).
pub struct RabbitMqConfirm {
    state: State,
}

impl fmt::Debug for RabbitMqConfirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Writing(_) => "writing",
            State::Confirming(_) => "confirming",
            State::Done { .. } => "done",
        };
        f.debug_struct("RabbitMqConfirm").field("state", &state).finish()
    }
}

impl RabbitMqConfirm {
    /// Whether the frames were all written to the socket, as far as lapin
    /// has said (a write that has not completed by now counts as not
    /// written: asked when the connection broke).
    fn written(&mut self) -> bool {
        if let State::Writing(write) = &mut self.state {
            self.state = match write.as_mut().poll(&mut Context::from_waker(std::task::Waker::noop())) {
                Poll::Pending => return false,
                Poll::Ready(Ok(confirm)) => State::Confirming(confirm),
                Poll::Ready(Err(_)) => State::Done { written: false },
            };
        }
        match self.state {
            State::Writing(_) => false,
            State::Confirming(_) => true,
            State::Done { written } => written,
        }
    }
}

impl Future for RabbitMqConfirm {
    type Output = Result<Confirmation, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let State::Writing(write) = &mut this.state {
            match ready!(write.as_mut().poll(cx)) {
                Ok(confirm) => this.state = State::Confirming(confirm),
                Err(e) => {
                    this.state = State::Done { written: false };
                    return Poll::Ready(Err(map_error(e)));
                }
            }
        }
        let State::Confirming(confirm) = &mut this.state else {
            return Poll::Ready(Err(PublishError::Closed));
        };
        let res = ready!(Pin::new(confirm).poll(cx));
        this.state = State::Done { written: true };
        Poll::Ready(match res {
            Ok(lapin::Confirmation::Ack(None)) => Ok(Confirmation::default()),
            Ok(lapin::Confirmation::Ack(Some(returned))) => Err(PublishError::Unroutable {
                broker: BROKER,
                code: Some(returned.reply_code),
                reason: returned.reply_text.to_string(),
            }),
            Ok(lapin::Confirmation::Nack(returned)) => Err(PublishError::Nacked {
                broker: BROKER,
                reason: returned.map(|r| format!("{} {}", r.reply_code, r.reply_text)),
            }),
            Ok(lapin::Confirmation::NotRequested) => {
                Err(PublishError::Rejected { broker: BROKER, reason: "channel is not in confirm mode".into() })
            }
            Err(e) => Err(map_error(e)),
        })
    }
}
