#![cfg(all(
    feature = "mqtt",
    feature = "timeout",
    feature = "retry",
    feature = "circuit-breaker",
    feature = "bulkhead"
))]
//! The MQTT publisher against the real local Mosquitto (TOWER_MESH_MQTT_URL,
//! default mqtt://127.0.0.1:1883): 10,000 events through the full resilience
//! stack received by a raw rumqttc subscriber started before publishing,
//! connection cuts through a TCP proxy, broker down at start. Each test uses
//! topics of its own.

#[path = "support/services.rs"]
mod services;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event as MqttEvent, MqttOptions};
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};
use tower_mesh::publish::mqtt::{Mqtt, MqttBuilder};
use tower_mesh::publish::{Event, PublishError, PublisherConfig, ReconnectBackoff};

use services::proxy::Proxy;
use services::stack::{self, TP};

const DEFAULT_URL: &str = "mqtt://127.0.0.1:1883";

fn url() -> Option<String> {
    services::require_service("Mosquitto", "TOWER_MESH_MQTT_URL", DEFAULT_URL)?;
    Some(services::env_or("TOWER_MESH_MQTT_URL", DEFAULT_URL))
}

fn via(url: &str, addr: std::net::SocketAddr) -> String {
    url.replacen(services::host_port(url), &addr.to_string(), 1)
}

/// One received message: the event and its user properties.
struct Received {
    event: Event,
    props: HashMap<String, String>,
    content_type: Option<String>,
}

/// A raw rumqttc subscriber on `<prefix>/#`, subscribed before it returns.
struct Subscriber {
    prefix: String,
    rx: mpsc::UnboundedReceiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    async fn start(url: &str) -> Subscriber {
        let prefix = format!("towermesh/test/{}", correlation_uuid::Uuid::new_v4().simple());
        let (host, port) = services::host_port(url).rsplit_once(':').unwrap();
        let mut options =
            MqttOptions::new(format!("sub-{}", correlation_uuid::Uuid::new_v4().simple()), host, port.parse().unwrap());
        // A large receive maximum: the broker may have all messages in flight
        // to us instead of queueing (and, past its queue limit, dropping) them.
        options.set_receive_maximum(Some(u16::MAX)).set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        client.subscribe(format!("{prefix}/#"), QoS::AtLeastOnce).await.unwrap();
        loop {
            match eventloop.poll().await.expect("subscriber connects") {
                MqttEvent::Incoming(Packet::SubAck(_)) => break,
                _ => continue,
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Ok(event) = eventloop.poll().await {
                if let MqttEvent::Incoming(Packet::Publish(p)) = event {
                    let props = p.properties.clone().unwrap_or_default();
                    let received = Received {
                        event: Event::from_structured_json(&p.payload).expect("a CloudEvents JSON body"),
                        props: props.user_properties.into_iter().collect(),
                        content_type: props.content_type,
                    };
                    if tx.send(received).is_err() {
                        break;
                    }
                }
            }
        });
        Subscriber { prefix, rx, task }
    }

    /// Messages until `want` distinct events arrived (or nothing came for [`services::PATIENCE`]);
    /// checks the properties of each. Returns every copy, in arrival order.
    async fn consume(&mut self, want: usize) -> Vec<stack::Seen> {
        let mut seen = Vec::new();
        let mut ids = HashSet::new();
        while ids.len() < want {
            let Ok(Some(r)) = tokio::time::timeout(services::PATIENCE, self.rx.recv()).await else { break };
            let get = |k: &str| r.props.get(k).map(String::as_str);
            assert_eq!(get("id"), Some(r.event.id()));
            assert_eq!(get("type"), Some(r.event.ty()));
            assert_eq!(get("correlationid"), Some("req-7f3a"));
            assert_eq!(&get("traceparent").expect("traceparent")[..35], &TP[..35]);
            assert_eq!(get("tracestate"), Some("vendor=1"));
            assert_eq!(r.content_type.as_deref(), Some("application/cloudevents+json"));
            ids.insert(r.event.id().to_owned());
            seen.push(stack::Seen::of(&r.event));
        }
        seen
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config() -> PublisherConfig {
    PublisherConfig {
        max_in_flight: 512,
        confirm_timeout: Duration::from_secs(3),
        reconnect: ReconnectBackoff {
            initial: Duration::from_millis(50),
            multiplier: 2.0,
            max: Duration::from_millis(500),
        },
        ..Default::default()
    }
}

fn builder(url: &str, sub: &Subscriber) -> MqttBuilder {
    let prefix = sub.prefix.clone();
    Mqtt::builder(url)
        .topic(move |e: &Event| format!("{prefix}/{}", e.partition_key().unwrap_or("none")))
        .config(config())
}

/// The first copy of each event, in arrival order; checks that every
/// duplicate is the same event (same id, key and seq).
fn first_copies(seen: &[stack::Seen]) -> Vec<stack::Seen> {
    let mut first: HashMap<&str, &stack::Seen> = HashMap::new();
    let mut unique = Vec::new();
    for s in seen {
        match first.get(s.id.as_str()) {
            Some(prev) => assert_eq!((&prev.key, prev.seq), (&s.key, s.seq), "a duplicate is the same event"),
            None => {
                first.insert(&s.id, s);
                unique.push(s.clone());
            }
        }
    }
    unique
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_through_the_full_stack() {
    let Some(url) = url() else { return };
    let mut sub = Subscriber::start(&url).await;
    let publisher = builder(&url, &sub).build().unwrap();
    let svc = stack::full_stack(publisher, Duration::from_secs(1), stack::breaker("mqtt"));
    let receipts = stack::publish_all(svc, stack::N, "mqtt", |_| {}).await;
    assert_eq!(receipts, stack::N);
    let seen = sub.consume(stack::N).await;
    assert_eq!(seen.len(), stack::N, "each event once without a fault");
    stack::check_all_present_in_order(&seen, stack::N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_stream_loses_nothing() {
    let Some(url) = url() else { return };
    let mut sub = Subscriber::start(&url).await;
    let proxy = Proxy::start(services::host_port(&url)).await;
    let publisher = builder(&via(&url, proxy.addr()), &sub).build().unwrap();
    let svc = stack::full_stack(publisher, Duration::from_secs(1), stack::breaker("mqtt-fault"));
    let mut cuts = 0;
    let receipts = stack::publish_all(svc, stack::FAULT_N, "mqtt-fault", |i| {
        if i > 0 && i % (stack::FAULT_N / 6) == 0 {
            proxy.cut();
            cuts += 1;
        }
    })
    .await;
    assert_eq!(receipts, stack::FAULT_N);
    assert!(cuts >= 3);
    assert!(proxy.accepted() > cuts, "the publisher reconnected after every cut");
    let seen = sub.consume(stack::FAULT_N).await;
    let unique = first_copies(&seen);
    assert_eq!(unique.len(), stack::FAULT_N, "0 lost");
    stack::check_all_present_in_order(&unique, stack::FAULT_N);
    println!(
        "mqtt fault test: {cuts} cuts, {} connections, 0 lost, {} duplicates",
        proxy.accepted(),
        seen.len() - stack::FAULT_N
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_opens_the_breaker_and_recovers() {
    let Some(url) = url() else { return };
    let sub = Subscriber::start(&url).await;
    let proxy = Proxy::start(services::host_port(&url)).await;
    proxy.set_refusing(true);
    let publisher = builder(&via(&url, proxy.addr()), &sub).build().unwrap();
    stack::down_then_recover(publisher, &proxy, "mqtt-down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puback_confirms_and_bad_topics_are_typed() {
    let Some(url) = url() else { return };
    let mut sub = Subscriber::start(&url).await;
    let mut publisher = builder(&url, &sub).build().unwrap();
    let event = stack::context().sync_scope(|| stack::event(5, "mqtt-one"));
    let receipt = publisher.ready().await.unwrap().call(event.clone()).await.unwrap();
    assert!(receipt.confirmation.sequence.is_some(), "the PUBACK's packet id");
    assert_eq!(receipt.sends, 1);
    let seen = sub.consume(1).await;
    assert_eq!(seen[0].id, event.id());

    let mut wild = Mqtt::builder(&url).topic(|_| "towermesh/test/+".to_owned()).config(config()).build().unwrap();
    let err = wild.ready().await.unwrap().call(Event::builder("/t", "t").build().unwrap()).await.unwrap_err();
    assert!(matches!(err, PublishError::InvalidEvent(_)), "{err}");
    assert!(!err.is_transient());
}
