//! MQTT publisher (`mqtt` feature, [rumqttc], MQTT 5).
//!
//! Each event is published with QoS 1 to a topic (the event type unless
//! [`MqttBuilder::topic`] says otherwise); the response future resolves on
//! the broker's `PUBACK` for that message's packet id. A `PUBACK` with an
//! error reason code (not authorized, quota exceeded, invalid topic...) is
//! [`PublishError::Nacked`] with the reason; "no matching subscribers" is a
//! success.
//!
//! Properties (MQTT 5): `content-type`, and every CloudEvents attribute as a
//! user property under its own name (the MQTT binding has no prefix),
//! `traceparent` and `tracestate` included.
//!
//! The client's event loop runs on a task of its own; it pairs each outgoing
//! `PUBLISH` with the message handed over (rumqttc takes requests in order)
//! and each `PUBACK` with the waiting confirmation. A lost connection ends
//! the task and fails every unconfirmed message as
//! [`PublishError::ConnectionLost`]: the publisher connects a fresh session
//! with backoff and sends them again (at least once: a message the broker had
//! already taken may arrive twice, with the same event id).
//!
//! ```no_run
//! use tower::ServiceExt;
//! use tower_mesh::publish::Event;
//! use tower_mesh::publish::mqtt::Mqtt;
//!
//! # async fn demo() -> Result<(), tower_mesh::BoxError> {
//! let publisher = Mqtt::builder("mqtt://127.0.0.1:1883")
//!     .topic(|e: &Event| format!("orders/{}", e.ty()))
//!     .build()?;
//! let event = Event::builder("/orders", "created").json(&serde_json::json!({"id": 42}))?.build()?;
//! let receipt = publisher.oneshot(event).await?;
//! println!("PUBACK for {}", receipt.event.id());
//! # Ok(()) }
//! ```
//!
//! [rumqttc]: https://docs.rs/rumqttc

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAck, PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event as MqttEvent, EventLoop, MqttOptions};
use tokio::sync::oneshot;

use super::{
    Confirmation, Event, InvalidEvent, LostSignal, Outgoing, PublishError, Publisher, PublisherConfig, Transport,
};
use crate::error::BoxError;

const BROKER: &str = "mqtt";

/// An MQTT publisher: [`Publisher`] over [`Mqtt`].
pub type MqttPublisher = Publisher<Mqtt>;

/// How the topic of an event is chosen.
pub type TopicFn = Arc<dyn Fn(&Event) -> String + Send + Sync>;

/// How the client options are made for each new session.
pub type OptionsFn = Arc<dyn Fn() -> MqttOptions + Send + Sync>;

/// The MQTT [`Transport`]: one MQTT 5 session per connection.
pub struct Mqtt {
    options: Result<OptionsFn, InvalidUrl>,
    topic: TopicFn,
    retain: bool,
    max_in_flight: usize,
}

impl fmt::Debug for Mqtt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The options may carry a password: leave them out.
        f.debug_struct("Mqtt").field("retain", &self.retain).finish_non_exhaustive()
    }
}

/// The broker URL given to [`Mqtt::builder`] is not `mqtt://[user:password@]host[:port]`.
#[derive(Clone, Debug)]
pub struct InvalidUrl {
    reason: &'static str,
}

impl fmt::Display for InvalidUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid MQTT broker URL: {}", self.reason)
    }
}

impl std::error::Error for InvalidUrl {}

/// `mqtt://[user:password@]host[:port]` (or `tcp://`, or bare `host:port`)
/// into options with a fresh client id per session.
fn options_from_url(url: &str) -> Result<OptionsFn, InvalidUrl> {
    let rest = url.strip_prefix("mqtt://").or_else(|| url.strip_prefix("tcp://")).unwrap_or(url);
    if rest.contains("://") {
        return Err(InvalidUrl { reason: "only mqtt:// and tcp:// are supported here; use MqttBuilder::options" });
    }
    let rest = rest.trim_end_matches('/');
    let (credentials, host_port) = match rest.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, rest),
    };
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| InvalidUrl { reason: "the port is not a number" })?)
        }
        _ => (host_port, 1883),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(InvalidUrl { reason: "no host" });
    }
    let host = host.to_owned();
    let credentials = credentials.map(|c| match c.split_once(':') {
        Some((u, p)) => (u.to_owned(), p.to_owned()),
        None => (c.to_owned(), String::new()),
    });
    Ok(Arc::new(move || {
        let id = format!("tower-mesh-{}", correlation_uuid::Uuid::new_v4().simple());
        let mut o = MqttOptions::new(id, host.clone(), port);
        o.set_keep_alive(Duration::from_secs(10)).set_clean_start(true);
        if let Some((u, p)) = &credentials {
            o.set_credentials(u.clone(), p.clone());
        }
        o
    }))
}

impl Mqtt {
    /// Start configuring a publisher for the broker at `url`
    /// (`mqtt://[user:password@]host[:port]`, port 1883 by default). For TLS
    /// or other settings use [`MqttBuilder::options`].
    pub fn builder(url: impl AsRef<str>) -> MqttBuilder {
        let config = PublisherConfig { name: BROKER.into(), ..Default::default() };
        MqttBuilder {
            transport: Mqtt {
                options: options_from_url(url.as_ref()),
                topic: Arc::new(|e: &Event| e.ty().to_owned()),
                retain: false,
                max_in_flight: config.max_in_flight,
            },
            config,
        }
    }

    /// The MQTT 5 properties this publisher sends `msg` with (public so
    /// that a benchmark can make the raw client send exactly the same message).
    pub fn properties(msg: &Outgoing) -> PublishProperties {
        PublishProperties {
            content_type: msg.content_type().map(str::to_owned),
            user_properties: msg.event.header_pairs().map(|(n, v)| (n.to_owned(), v.into_owned())).collect(),
            ..Default::default()
        }
    }
}

/// `true` for a topic a message can be published to: non-empty, no
/// wildcards, no NUL, at most 65,535 bytes.
fn valid_topic(t: &str) -> bool {
    !t.is_empty() && t.len() <= usize::from(u16::MAX) && !t.contains(['+', '#', '\0'])
}

/// Builder of an [`MqttPublisher`].
pub struct MqttBuilder {
    transport: Mqtt,
    config: PublisherConfig,
}

impl fmt::Debug for MqttBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttBuilder").field("transport", &self.transport).field("config", &self.config).finish()
    }
}

impl MqttBuilder {
    /// Choose the topic (default: the event type).
    pub fn topic(mut self, f: impl Fn(&Event) -> String + Send + Sync + 'static) -> Self {
        self.transport.topic = Arc::new(f);
        self
    }

    /// Publish with the retain flag (default: off).
    pub fn retain(mut self, retain: bool) -> Self {
        self.transport.retain = retain;
        self
    }

    /// Client options for every new session, instead of those from the URL
    /// (TLS, credentials, keep-alive...). Give each call a distinct client id:
    /// a new session must not take over one still closing.
    pub fn options(mut self, f: impl Fn() -> MqttOptions + Send + Sync + 'static) -> Self {
        self.transport.options = Ok(Arc::new(f));
        self
    }

    /// The publisher settings (in-flight bound, reconnect backoff, mode...).
    pub fn config(mut self, config: PublisherConfig) -> Self {
        self.config = config;
        self
    }

    /// Start the publisher (inside a Tokio runtime); it connects in the
    /// background. A malformed URL is a [`PublishError::Client`] error.
    pub fn build(mut self) -> Result<MqttPublisher, PublishError> {
        if let Err(e) = &self.transport.options {
            return Err(PublishError::Client { broker: BROKER, source: Box::new(e.clone()) });
        }
        self.transport.max_in_flight = self.config.max_in_flight;
        Publisher::new(self.transport, self.config)
    }
}

type Reply = oneshot::Sender<Result<Confirmation, PublishError>>;

/// Confirmations waiting: first for their packet id (in hand-over order),
/// then for their `PUBACK` (in send order, which is the order a broker
/// acknowledges QoS 1 messages in: the one acknowledged is found first).
#[derive(Default)]
struct Waiters {
    unsent: VecDeque<Reply>,
    sent: VecDeque<(u16, Reply)>,
}

impl Waiters {
    /// The confirmation waiting for the `PUBACK` of packet `pkid`.
    fn acknowledged(&mut self, pkid: u16) -> Option<Reply> {
        let i = self.sent.iter().position(|(id, _)| *id == pkid)?;
        self.sent.remove(i).map(|(_, reply)| reply)
    }
}

/// An open MQTT session; its event loop task ends when this is dropped.
pub struct MqttConnection {
    client: AsyncClient,
    waiters: Arc<Mutex<Waiters>>,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for MqttConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConnection").finish_non_exhaustive()
    }
}

impl Drop for MqttConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(w: &Mutex<Waiters>) -> std::sync::MutexGuard<'_, Waiters> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a `PUBACK` says about its message.
fn puback_result(ack: &PubAck) -> Result<Confirmation, PublishError> {
    match ack.reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
            Ok(Confirmation { sequence: Some(u64::from(ack.pkid)), ..Default::default() })
        }
        reason => {
            let text = ack.properties.as_ref().and_then(|p| p.reason_string.clone());
            Err(PublishError::Nacked {
                broker: BROKER,
                reason: Some(match text {
                    Some(t) => format!("{reason:?}: {t}"),
                    None => format!("{reason:?}"),
                }),
            })
        }
    }
}

/// Drive the session: pair outgoing publishes with waiters, answer them on
/// `PUBACK`; on the first connection error fail them all and stop.
async fn run(mut eventloop: EventLoop, waiters: Arc<Mutex<Waiters>>, lost: LostSignal) {
    loop {
        match eventloop.poll().await {
            Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                let mut w = lock(&waiters);
                if let Some(reply) = w.unsent.pop_front() {
                    w.sent.push_back((pkid, reply));
                }
            }
            Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => {
                let reply = lock(&waiters).acknowledged(ack.pkid);
                if let Some(reply) = reply {
                    let _ = reply.send(puback_result(&ack));
                }
            }
            Ok(MqttEvent::Incoming(Packet::Disconnect(d))) => {
                tracing::warn!(broker = BROKER, reason = ?d.reason_code, "MQTT broker disconnected the session");
                break;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(broker = BROKER, error = %e, "MQTT connection lost");
                break;
            }
        }
    }
    // Dropping the replies fails every unconfirmed message as ConnectionLost.
    let mut w = lock(&waiters);
    w.unsent.clear();
    w.sent.clear();
    drop(w);
    lost.fire();
}

impl Transport for Mqtt {
    const BROKER: &'static str = BROKER;
    // A broker sends the PUBACKs of QoS 1 messages in the order it received them (MQTT 5, 4.6).
    const CONFIRMS_IN_ORDER: bool = true;
    type Connection = MqttConnection;
    type Confirm = MqttConfirm;

    async fn connect(&mut self, lost: LostSignal) -> Result<MqttConnection, BoxError> {
        let options = match &self.options {
            Ok(f) => f,
            Err(e) => return Err(Box::new(e.clone())),
        };
        let mut options = options();
        let window = u16::try_from(self.max_in_flight).unwrap_or(u16::MAX).max(1);
        options.set_outgoing_inflight_upper_limit(window);
        // The request queue holds every unconfirmed message, so handing one
        // over never waits on the event loop.
        let (client, mut eventloop) = AsyncClient::new(options, self.max_in_flight.max(1));
        // The first poll connects and returns the CONNACK (or the refusal).
        match eventloop.poll().await? {
            MqttEvent::Incoming(Packet::ConnAck(_)) => {}
            other => return Err(format!("expected CONNACK, got {other:?}").into()),
        }
        let waiters = Arc::new(Mutex::new(Waiters::default()));
        let task = tokio::spawn(run(eventloop, waiters.clone(), lost));
        Ok(MqttConnection { client, waiters, task })
    }

    fn publish<'a>(
        &'a mut self,
        conn: &'a mut MqttConnection,
        msg: &'a Outgoing,
    ) -> impl Future<Output = Result<MqttConfirm, PublishError>> + Send + 'a {
        let topic = (self.topic)(&msg.event);
        let retain = self.retain;
        async move {
            if !valid_topic(&topic) {
                return Err(PublishError::InvalidEvent(InvalidEvent::Invalid {
                    attribute: "type",
                    reason: "does not make a valid MQTT topic",
                }));
            }
            if conn.task.is_finished() {
                return Err(PublishError::ConnectionLost { broker: BROKER, attempts: 0 });
            }
            let (tx, rx) = oneshot::channel();
            // Queued before the request: the event loop takes requests in
            // order and pairs each outgoing PUBLISH with the oldest waiter.
            lock(&conn.waiters).unsent.push_back(tx);
            let sent = conn
                .client
                .publish_with_properties(topic, QoS::AtLeastOnce, retain, msg.body.clone(), Mqtt::properties(msg))
                .await;
            if sent.is_err() {
                // The event loop is gone: the session is over.
                return Err(PublishError::ConnectionLost { broker: BROKER, attempts: 0 });
            }
            Ok(MqttConfirm { rx })
        }
    }
}

pin_project! {
    /// Resolves on the `PUBACK` for one message.
    pub struct MqttConfirm {
        #[pin]
        rx: oneshot::Receiver<Result<Confirmation, PublishError>>,
    }
}

impl fmt::Debug for MqttConfirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfirm").finish_non_exhaustive()
    }
}

impl Future for MqttConfirm {
    type Output = Result<Confirmation, PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(self.project().rx.poll(cx)) {
            Ok(res) => res,
            // The session ended before the PUBACK.
            Err(_) => Err(PublishError::ConnectionLost { broker: BROKER, attempts: 0 }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::ContentMode;
    use super::*;

    #[test]
    fn topics() {
        assert!(valid_topic("orders/created"));
        assert!(valid_topic("orders.created"));
        assert!(!valid_topic("orders/+"));
        assert!(!valid_topic("orders/#"));
        assert!(!valid_topic(""));
        assert!(!valid_topic("a\0b"));
    }

    #[test]
    fn urls() {
        let ok = |u: &str| {
            let o = options_from_url(u).unwrap()();
            (o.broker_address(), o.credentials().map(|l| l.username))
        };
        assert_eq!(ok("mqtt://127.0.0.1:1883"), (("127.0.0.1".to_owned(), 1883), None));
        assert_eq!(ok("tcp://broker"), (("broker".to_owned(), 1883), None));
        assert_eq!(ok("mqtt://u:p@h:1884/"), (("h".to_owned(), 1884), Some("u".to_owned())));
        assert_eq!(ok("[::1]:1883"), (("::1".to_owned(), 1883), None));
        assert!(options_from_url("mqtt://h:port").is_err());
        assert!(options_from_url("ws://h:1883").is_err());
        assert!(options_from_url("mqtt://").is_err());
        // A fresh client id for every session.
        let f = options_from_url("mqtt://h").unwrap();
        assert_ne!(f().client_id(), f().client_id());
    }

    #[test]
    fn properties_carry_the_attributes() {
        let e = Event::builder("/s", "t.x")
            .correlation_id("c-1")
            .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .build()
            .unwrap();
        let p = Mqtt::properties(&Outgoing::new(e.clone(), ContentMode::Structured));
        let get = |k: &str| p.user_properties.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("id"), Some(e.id()));
        assert_eq!(get("type"), Some("t.x"));
        assert_eq!(get("correlationid"), Some("c-1"));
        assert!(get("traceparent").is_some());
        assert_eq!(p.content_type.as_deref(), Some("application/cloudevents+json"));
    }

    #[test]
    fn pubacks_find_their_waiter_in_or_out_of_order() {
        let mut w = Waiters::default();
        let mut rxs = Vec::new();
        for pkid in [1, 2, 3] {
            let (tx, rx) = oneshot::channel();
            w.sent.push_back((pkid, tx));
            rxs.push(rx);
        }
        let ok = || Ok(Confirmation::default());
        // In order (the usual case), then one out of order.
        assert!(w.acknowledged(1).unwrap().send(ok()).is_ok());
        assert!(w.acknowledged(3).unwrap().send(ok()).is_ok());
        assert!(w.acknowledged(3).is_none());
        assert!(w.acknowledged(9).is_none());
        assert_eq!(w.sent.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [2]);
        assert!(rxs[0].try_recv().is_ok());
        assert!(rxs[1].try_recv().is_err());
        assert!(rxs[2].try_recv().is_ok());
    }

    #[test]
    fn pubacks() {
        let ack = |reason| PubAck { pkid: 7, reason, properties: None };
        assert_eq!(puback_result(&ack(PubAckReason::Success)).unwrap().sequence, Some(7));
        assert!(puback_result(&ack(PubAckReason::NoMatchingSubscribers)).is_ok());
        let err = puback_result(&ack(PubAckReason::NotAuthorized)).unwrap_err();
        assert!(matches!(err, PublishError::Nacked { .. }), "{err}");
        assert!(err.to_string().contains("NotAuthorized") || format!("{err:?}").contains("NotAuthorized"));
    }
}
