//! The server-side layers on an axum router: correlation id, JWT validation,
//! load shedding (503), request timeout (504), metrics, and a readiness
//! endpoint that reports breaker and bulkhead states.
//!
//! The example serves on 127.0.0.1, then acts as its own client and prints
//! what each kind of request gets back. No outside service; about a second.
//!
//! ```text
//! cargo run --example axum_server --features stack,correlation-id,jwt
//! ```

use std::time::Duration;

use axum::extract::{Extension, Path};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{encode, EncodingKey, Header};
use tower_mesh::correlation::RequestContext;
use tower_mesh::health::Health;
use tower_mesh::jwt::{Algorithm, Claims, JwtKey, JwtPropagationLayer};
use tower_mesh::stack::MeshConfig;

const SECRET: &[u8] = b"example-secret-example-secret-32b";

const CONFIG: &str = r#"
preset = "production"

[server]
name = "orders-api"
timeout = "200ms"
max_concurrent_requests = 4

[client.inventory]
circuit_breaker = { minimum_calls = 5 }
"#;

async fn order(Path(id): Path<u32>, Extension(claims): Extension<Claims>) -> String {
    let id_in_scope = RequestContext::current().map(|c| c.correlation_id.to_string()).unwrap_or_default();
    format!("order {id} for {} (correlation id {id_in_scope})", claims.sub.unwrap_or_default())
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(2)).await;
    "too late"
}

fn token(sub: &str) -> String {
    let claims = serde_json::json!({
        "sub": sub, "iss": "https://auth.example", "aud": "orders-api",
        "exp": jsonwebtoken::get_current_timestamp() + 600,
    });
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

#[tokio::main]
async fn main() -> Result<(), tower_mesh::BoxError> {
    let cfg = MeshConfig::from_toml_str(CONFIG)?;
    let server = cfg.server.stack()?;
    // A downstream this server calls: its breaker shows in the readiness report.
    let inventory = cfg.client("inventory")?.http_stack()?;

    let health = Health::new()
        .breaker(inventory.breaker().expect("the preset has a breaker"))
        .bulkhead(server.load_shedding().expect("configured"), cfg.server.max_concurrent_requests.unwrap_or(0));

    let jwt = JwtPropagationLayer::builder()
        .key(JwtKey::hmac(SECRET, Algorithm::HS256)?)
        .issuer("https://auth.example")
        .audience("orders-api")
        .build()?;

    // The last `layer` is the outermost: the server stack wraps everything,
    // JWT only the API routes, not the probes.
    let app = Router::new()
        .route("/orders/{id}", get(order))
        .route("/slow", get(slow))
        .layer(jwt)
        .route_service("/ready", health.readiness())
        .route_service("/live", health.liveness())
        .layer(server);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("serving on http://{addr}\n");

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let call = |path: &str, headers: &[(&str, String)]| {
        let mut req = Request::get(format!("http://{addr}{path}"));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(Empty::new()).unwrap();
        let client = client.clone();
        async move {
            let res = client.request(req).await.unwrap();
            let status = res.status();
            let id = res.headers().get("x-correlation-id").map(|v| v.to_str().unwrap_or("").to_owned());
            let retry_after = res.headers().get("retry-after").map(|v| v.to_str().unwrap_or("").to_owned());
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, id, retry_after, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let bearer = format!("Bearer {}", token("alice"));

    let show = |what: &str, r: &(StatusCode, Option<String>, Option<String>, String)| {
        let body: String = r.3.chars().take(90).collect();
        println!("{what:<34} {} id={:?} retry-after={:?}\n{:<34} {body}", r.0, r.1, r.2, "");
    };

    let r = call("/orders/7", &[("authorization", bearer.clone()), ("x-correlation-id", "order-7".into())]).await;
    show("valid token, caller's id", &r);
    let r = call("/orders/7", &[("authorization", "Bearer not.a.token".into())]).await;
    show("bad token", &r);
    let r =
        call("/orders/7", &[("authorization", bearer.clone()), ("x-correlation-id", "not a valid id".into())]).await;
    show("invalid id (replaced)", &r);
    let r = call("/slow", &[("authorization", bearer.clone())]).await;
    show("slow handler", &r);

    // Five slow requests at once: four hold the permits, the fifth is shed.
    let burst: Vec<_> = (0..5).map(|_| tokio::spawn(call("/slow", &[("authorization", bearer.clone())]))).collect();
    let mut statuses = Vec::new();
    for b in burst {
        statuses.push(b.await?.0.as_u16());
    }
    statuses.sort();
    println!("{:<34} {statuses:?} (504 = timed out, 503 = shed)", "burst of 5 over a limit of 4");

    let r = call("/ready", &[]).await;
    show("readiness", &r);
    inventory.breaker().unwrap().transition_to_forced_open();
    let r = call("/ready", &[]).await;
    show("readiness, inventory breaker open", &r);
    let r = call("/live", &[]).await;
    show("liveness", &r);
    Ok(())
}
