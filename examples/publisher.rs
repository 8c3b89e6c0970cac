//! Publish domain events to RabbitMQ (default) or NATS JetStream through the
//! resilience stack, with a dead-letter queue, and print the confirmations.
//!
//! ```text
//! cargo run --example publisher --features rabbitmq,nats,timeout,retry,circuit-breaker,bulkhead -- [rabbitmq|nats] [count] [outage-wait-seconds]
//! ```
//!
//! With `outage-wait-seconds`, the publisher **waits for the broker** that
//! long when it is down (`PublisherConfig::outage_wait`) instead of failing
//! calls at once: stop the broker while it runs and the events wait, at most
//! 256 of them (`max_in_flight`, so a faster producer is held back by
//! `poll_ready`), then go out once, in order, when it is back; an event still
//! unsent after the wait fails with `Unavailable` and is dead-lettered. The
//! total timeout is set above the wait.
//!
//! Broker addresses: `TOWER_MESH_RABBITMQ_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`), `TOWER_MESH_NATS_URL` (default
//! `nats://127.0.0.1:4222`). The last event has a type no queue or stream
//! takes: it is dead-lettered after the retries.

use std::time::Duration;

use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_mesh::bulkhead::BulkheadLayer;
use tower_mesh::circuit_breaker::CircuitBreakerLayer;
use tower_mesh::correlation::RequestContext;
use tower_mesh::publish::nats::Nats;
use tower_mesh::publish::rabbitmq::RabbitMq;
use tower_mesh::publish::{
    DeadLetterLayer, DeadLettered, Event, PublishClassifier, PublishError, Publisher, PublisherConfig, Receipt,
    Transport,
};
use tower_mesh::retry::{Backoff, Jitter, RetryLayer};
use tower_mesh::timeout::TimeoutLayer;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let broker = args.next().unwrap_or_else(|| "rabbitmq".into());
    let count: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(10);
    let outage_wait = Duration::from_secs(args.next().map(|s| s.parse()).transpose()?.unwrap_or(0));
    // Fail fast while the broker is down (0, the default), or wait for it that long.
    let config = PublisherConfig { max_in_flight: 256, outage_wait, ..Default::default() };

    match broker.as_str() {
        "rabbitmq" => {
            let url = env_or("TOWER_MESH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
            if let Err(e) = rabbitmq_topology(&url).await {
                eprintln!("no RabbitMQ reachable at {}: {e}", redact(&url));
                eprintln!("start one (e.g. `docker run -p 5672:5672 rabbitmq`) or set TOWER_MESH_RABBITMQ_URL");
                std::process::exit(2);
            }
            let orders =
                RabbitMq::builder(url.as_str()).exchange("tower-mesh.example").config(config.clone()).build()?;
            let dead = RabbitMq::builder(url.as_str()).exchange("tower-mesh.example.dlx").config(config).build()?;
            run("RabbitMQ", &url, orders, dead, count, outage_wait).await
        }
        "nats" => {
            let url = env_or("TOWER_MESH_NATS_URL", "nats://127.0.0.1:4222");
            let limits = |name: &str, subject: &str| async_nats::jetstream::stream::Config {
                name: name.into(),
                subjects: vec![subject.into()],
                max_messages: 10_000,
                ..Default::default()
            };
            let orders = Nats::builder(url.as_str())
                .stream_config(limits("TOWER_MESH_EXAMPLE", "tower-mesh.example.>"))
                .subject(|e: &Event| {
                    if e.ty().starts_with("order.") {
                        format!("tower-mesh.example.{}", e.ty())
                    } else {
                        format!("tower-mesh.unrouted.{}", e.ty())
                    }
                })
                .config(config.clone())
                .build()?;
            let dead = Nats::builder(url.as_str())
                .stream_config(limits("TOWER_MESH_EXAMPLE_DLQ", "tower-mesh.example-dlq.>"))
                .subject(|e: &Event| format!("tower-mesh.example-dlq.{}", e.ty()))
                .config(config)
                .build()?;
            run("NATS", &url, orders, dead, count, outage_wait).await
        }
        other => {
            eprintln!("unknown broker `{other}`: use `rabbitmq` or `nats`");
            std::process::exit(2);
        }
    }
}

async fn run<T, D>(
    name: &str,
    url: &str,
    orders: Publisher<T>,
    dead: Publisher<D>,
    count: usize,
    outage_wait: Duration,
) -> Result<(), BoxError>
where
    T: Transport,
    D: Transport,
{
    for p in [orders.wait_connected().await, dead.wait_connected().await] {
        if let Err(e) = p {
            eprintln!("no {name} reachable at {}: {e}", redact(url));
            std::process::exit(2);
        }
    }
    println!("connected to {name} at {}", redact(url));

    // Issue 7's retry policy: 1 s × 2.0, 3 attempts, 10 s max. The total
    // timeout covers a wait for the broker, if the publisher waits.
    let mut svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(30) + outage_wait))
        .layer(DeadLetterLayer::new(dead).name("orders"))
        .layer(
            RetryLayer::builder()
                .max_retries(2)
                .backoff(
                    Backoff::exponential(Duration::from_secs(1), 2.0, Duration::from_secs(10)).jitter(Jitter::Equal),
                )
                .classifier(PublishClassifier)
                .build()?,
        )
        .layer(CircuitBreakerLayer::builder().name("orders").classifier(PublishClassifier).build()?)
        .layer(BulkheadLayer::new(256))
        .layer(TimeoutLayer::per_attempt(Duration::from_secs(5) + outage_wait))
        .service(orders);

    // The request being handled: its correlation id and trace go into every event.
    let ctx = RequestContext::generate();
    println!("correlation id {}", ctx.correlation_id);
    for i in 0..=count {
        let ty = if i < count { "order.created" } else { "audit.unrouted" };
        let event = ctx.clone().sync_scope(|| {
            Event::builder("/examples/publisher", ty)
                .subject(format!("order-{i}"))
                .partition_key(format!("customer-{}", i % 3))
                .version("1")
                .json(&serde_json::json!({ "order": i, "total": format!("{}.90", 10 + i) }))
                .and_then(|b| b.build())
        })?;
        let res: Result<Receipt, BoxError> = svc.ready().await?.call(event).await;
        match res {
            Ok(r) => println!(
                "confirmed {} {} (seq {:?}, sends {}{})",
                r.event.ty(),
                r.event.id(),
                r.confirmation.sequence,
                r.sends,
                if r.confirmation.duplicate { ", duplicate" } else { "" }
            ),
            Err(e) => match e.downcast_ref::<DeadLettered>() {
                Some(d) if d.published() => println!("dead-lettered {}: {}", d.event_id(), d.reason()),
                _ if matches!(e.downcast_ref::<PublishError>(), Some(PublishError::Unavailable { .. })) => {
                    println!("{name} unavailable: {e}")
                }
                _ => println!("failed: {e}"),
            },
        }
    }
    Ok(())
}

/// A durable queue for the orders and one for the dead letters (both
/// bounded), so the example's events are routable and kept.
async fn rabbitmq_topology(url: &str) -> Result<(), BoxError> {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()),
    )
    .await
    .map_err(|_| "connection timed out")??;
    let ch = conn.create_channel().await?;
    for (exchange, queue, key) in [
        ("tower-mesh.example", "tower-mesh.example.orders", "order.#"),
        ("tower-mesh.example.dlx", "tower-mesh.example.dead", "#"),
    ] {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare(exchange.into(), lapin::ExchangeKind::Topic, durable, FieldTable::default()).await?;
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(10_000));
        let q = QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(queue.into(), q, args).await?;
        ch.queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), FieldTable::default())
            .await?;
    }
    conn.close(200, "bye".into()).await?;
    Ok(())
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.into())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}
