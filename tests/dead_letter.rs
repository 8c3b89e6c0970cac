#![cfg(all(feature = "rabbitmq", feature = "retry"))]
//! DeadLetterLayer against the real local RabbitMQ: events that still fail
//! after the last retry land, with their reason, on a dead-letter exchange.

#[path = "support/services.rs"]
mod services;

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_mesh::publish::rabbitmq::RabbitMq;
use tower_mesh::publish::{
    DeadLetterLayer, DeadLettered, Event, PublishClassifier, PublishError, PublisherConfig, ReconnectBackoff,
};
use tower_mesh::retry::{Backoff, RetryLayer};

use services::proxy::Proxy;

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn url() -> Option<String> {
    services::require_service("RabbitMQ", "TOWER_MESH_RABBITMQ_URL", DEFAULT_URL)?;
    Some(services::env_or("TOWER_MESH_RABBITMQ_URL", DEFAULT_URL))
}

async fn exchange_with_queue(ch: &Channel, binding: Option<&str>) -> (String, String) {
    let exchange = format!("tower-mesh.test.{}", correlation_uuid::Uuid::new_v4());
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions { auto_delete: true, ..Default::default() },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q = ch
        .queue_declare("".into(), QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default())
        .await
        .unwrap();
    if let Some(key) = binding {
        ch.queue_bind(
            q.name().as_str().into(),
            exchange.as_str().into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    (exchange, q.name().to_string())
}

fn config() -> PublisherConfig {
    PublisherConfig {
        reconnect: ReconnectBackoff {
            initial: Duration::from_millis(20),
            multiplier: 2.0,
            max: Duration::from_millis(200),
        },
        ..Default::default()
    }
}

async fn next_dead_letter(ch: &Channel, queue: &str) -> (Event, Option<String>) {
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(services::PATIENCE, consumer.next()).await.unwrap().unwrap().unwrap();
    let header = d.properties.headers().as_ref().and_then(|h| match h.inner().get("cloudEvents:deadletterreason") {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    });
    (Event::from_structured_json(&d.data).unwrap(), header)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_event_is_dead_lettered_with_its_reason() {
    let Some(url) = url() else { return };
    let conn = Connection::connect(&url, ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let (main_exchange, _) = exchange_with_queue(&ch, None).await;
    let (dlx, dlq) = exchange_with_queue(&ch, Some("#")).await;

    let main = RabbitMq::builder(url.as_str()).exchange(main_exchange.as_str()).config(config()).build().unwrap();
    let dead = RabbitMq::builder(url.as_str()).exchange(dlx.as_str()).config(config()).build().unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(dead).name("orders"))
        .layer(RetryLayer::builder().max_retries(2).classifier(PublishClassifier).build().unwrap())
        .service(main);

    let event =
        Event::builder("/orders", "order.created").json(&serde_json::json!({"id": 42})).unwrap().build().unwrap();
    let err = svc.ready().await.unwrap().call(event.clone()).await.unwrap_err();
    let report = err.downcast_ref::<DeadLettered>().expect("reported as dead-lettered");
    assert!(report.published());
    assert!(matches!(
        report.reason().downcast_ref::<PublishError>(),
        Some(PublishError::Unroutable { code: Some(312), .. })
    ));

    let (dl, header) = next_dead_letter(&ch, &dlq).await;
    assert_eq!(dl.id(), event.id());
    assert_eq!(dl.data(), event.data());
    let reason = dl.extension("deadletterreason").unwrap();
    assert!(reason.contains("312"), "{reason}");
    assert_eq!(header.as_deref(), Some(reason));
    assert_eq!(dl.extension("deadletterservice"), Some("orders"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_after_retries_is_dead_lettered() {
    let Some(url) = url() else { return };
    let conn = Connection::connect(&url, ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let (main_exchange, _) = exchange_with_queue(&ch, Some("#")).await;
    let (dlx, dlq) = exchange_with_queue(&ch, Some("#")).await;
    let proxy = Proxy::start(services::host_port(&url)).await;
    proxy.set_refusing(true);
    let via = url.replacen(services::host_port(&url), &proxy.addr().to_string(), 1);

    let main = RabbitMq::builder(via).exchange(main_exchange.as_str()).config(config()).build().unwrap();
    let dead = RabbitMq::builder(url.as_str()).exchange(dlx.as_str()).config(config()).build().unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new(dead))
        .layer(
            RetryLayer::builder()
                .max_retries(2)
                .backoff(Backoff::exponential(Duration::from_millis(10), 2.0, Duration::from_millis(100)))
                .classifier(PublishClassifier)
                .build()
                .unwrap(),
        )
        .service(main);

    let event = Event::builder("/orders", "order.created").build().unwrap();
    let err = svc.ready().await.unwrap().call(event.clone()).await.unwrap_err();
    let report = err.downcast_ref::<DeadLettered>().expect("dead-lettered");
    assert!(report.published());
    assert!(matches!(report.reason().downcast_ref::<PublishError>(), Some(PublishError::Unavailable { .. })));
    let (dl, _) = next_dead_letter(&ch, &dlq).await;
    assert_eq!(dl.id(), event.id());
    assert!(dl.extension("deadletterreason").unwrap().contains("unavailable"));
}
