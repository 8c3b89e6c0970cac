//! A hyper-util client wrapped by the recommended stack, built from a TOML
//! configuration.
//!
//! The stack of the `orders` service comes from the `production` preset with
//! a few values changed in TOML (and any `TOWER_MESH__…` environment variable
//! on top). An embedded hyper upstream on 127.0.0.1 is healthy, then fails,
//! then recovers; each phase prints what the caller saw and what the
//! breaker did. No outside service; about 4 seconds.
//!
//! ```text
//! cargo run --example hyper_client --features stack
//! ```

#[path = "../tests/support/upstream.rs"]
mod upstream;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_mesh::service_error::ServiceError;
use tower_mesh::stack::MeshConfig;
use upstream::{Mode, Upstream};

const CONFIG: &str = r#"
preset = "production"

[client.orders]
timeout = { attempt = "300ms", total = "2s" }
retry = { max_retries = 2, backoff = { initial = "20ms", max_delay = "200ms" } }
circuit_breaker = { sliding_window = { count = 20 }, minimum_calls = 10, wait_in_open = "1s" }
bulkhead = { max_concurrent_calls = 32 }
"#;

#[tokio::main]
async fn main() -> Result<(), tower_mesh::BoxError> {
    let up = Upstream::start().await;

    // The file, with environment overrides on top (none are needed here).
    let mut cfg = MeshConfig::from_toml_str(CONFIG)?;
    if std::env::vars().any(|(k, _)| k.starts_with(tower_mesh::stack::ENV_PREFIX)) {
        cfg = MeshConfig::from_env()?;
    }
    let orders = cfg.client("orders")?;
    let stack = orders.http_stack()?;
    let breaker = stack.breaker().expect("the preset has a breaker");
    println!("stack for `orders`: {stack:?}");

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut svc = ServiceBuilder::new().layer(stack).service(client);

    for (phase, mode, calls) in [
        ("healthy", Mode::Healthy, 20),
        ("failing (503)", Mode::Status(503), 20),
        ("healthy again, breaker still open", Mode::Healthy, 5),
    ] {
        up.control.set(mode);
        let before = up.control.requests();
        let (mut ok, mut failed) = (0, Vec::new());
        for _ in 0..calls {
            let req = Request::get(up.uri("/orders/42")).body(Full::new(Bytes::new()))?;
            let result = svc.ready().await?.call(req).await;
            // One error type for every failure: an error status with its body
            // excerpt, or a layer's rejection.
            let outcome = match result {
                Ok(res) => ServiceError::from_http(res.status(), res.headers(), b"").map_or(Ok(()), Err),
                Err(e) => Err(ServiceError::from_error(e)),
            };
            match outcome {
                Ok(()) => ok += 1,
                Err(e) => failed.push(format!("{:?} (retryable: {})", e.kind(), e.is_retryable())),
            }
        }
        failed.dedup();
        println!(
            "{phase:<36} {ok:>2} ok, {:>2} failed {:?}; upstream saw {} requests; breaker {:?}",
            calls - ok,
            failed,
            up.control.requests() - before,
            breaker.state()
        );
    }

    // After the open wait the breaker lets probes through and closes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut ok = 0;
    for _ in 0..10 {
        let req = Request::get(up.uri("/orders/42")).body(Full::new(Bytes::new()))?;
        if svc.ready().await?.call(req).await.is_ok_and(|r| r.status().is_success()) {
            ok += 1;
        }
    }
    println!("{:<36} {ok:>2} ok; breaker {:?}", "after the open wait", breaker.state());
    Ok(())
}
