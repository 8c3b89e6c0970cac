//! No secret in `Debug` output or error messages: every public source,
//! config, builder and layer that can hold one is formatted (`{:?}` and
//! `{:#?}`, and `Display` for errors) with a secret in it, and the secret
//! must not appear. The credential headers the crate sends or passes on are
//! marked sensitive. (SOAP has its own tests.)
//!
//! Each part needs its features; `cargo test --all-features --test secrets`
//! runs them all.

#![allow(dead_code, unused_imports, unused_macros)]

use std::fmt;

/// The secret put in every password, token and key below.
const SECRET: &str = "s3cr3tPa55w0rd";

/// `what`'s `Debug` (plain and pretty) does not show the secret.
fn hidden<T: fmt::Debug + ?Sized>(what: &str, value: &T) {
    for shown in [format!("{value:?}"), format!("{value:#?}")] {
        assert!(!shown.contains(SECRET), "{what} shows the secret: {shown}");
    }
}

/// An error's `Debug` and `Display` do not show the secret.
fn hidden_error<E: std::error::Error>(what: &str, e: &E) {
    hidden(what, e);
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(e) = source {
        assert!(!e.to_string().contains(SECRET), "{what} shows the secret: {e}");
        source = e.source();
    }
}

#[cfg(any(feature = "discovery-consul", feature = "discovery-k8s"))]
mod discovery_http {
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use tokio::sync::mpsc;
    use tower_mesh::discovery::HttpClient;

    /// An HTTP client that hands each request to the test and answers 500.
    pub fn capturing() -> (HttpClient, mpsc::UnboundedReceiver<Request<Full<Bytes>>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = HttpClient::new(tower::service_fn(move |req: Request<Full<Bytes>>| {
            let _ = tx.send(req);
            async {
                Ok::<_, std::convert::Infallible>(
                    Response::builder().status(500).body(Full::new(Bytes::new())).unwrap(),
                )
            }
        }));
        (client, rx)
    }
}

#[cfg(feature = "discovery-consul")]
#[tokio::test]
async fn consul_source_hides_its_token_and_sends_it_sensitive() {
    use tower_mesh::discovery::{ConsulSource, Registry};
    let base = format!("http://agent:{SECRET}@127.0.0.1:8500").parse().unwrap();
    let source = ConsulSource::new(base, "orders").token(SECRET);
    hidden("ConsulSource", &source);
    assert!(format!("{source:?}").contains("<redacted>"));

    let (client, mut requests) = discovery_http::capturing();
    let task = source.client(client).spawn(Registry::new(), "orders");
    let req = requests.recv().await.unwrap();
    let token = req.headers().get("x-consul-token").unwrap();
    assert_eq!(token, SECRET);
    assert!(token.is_sensitive(), "x-consul-token is not marked sensitive");
    hidden("Consul request headers", req.headers());
    hidden("SourceTask", &task);
}

#[cfg(feature = "discovery-k8s")]
#[tokio::test]
async fn kubernetes_source_hides_its_token_and_sends_it_sensitive() {
    use tower_mesh::discovery::{KubernetesSource, Registry};
    let base = format!("https://sa:{SECRET}@127.0.0.1:6443").parse().unwrap();
    let source = KubernetesSource::new(base, "shop", "orders").port_name("http").token(SECRET);
    hidden("KubernetesSource", &source);

    let (client, mut requests) = discovery_http::capturing();
    let _task = source.client(client).spawn(Registry::new(), "orders");
    let req = requests.recv().await.unwrap();
    let auth = req.headers().get(http::header::AUTHORIZATION).unwrap();
    assert_eq!(auth, &format!("Bearer {SECRET}"));
    assert!(auth.is_sensitive(), "authorization is not marked sensitive");
    hidden("Kubernetes request headers", req.headers());
}

#[cfg(feature = "discovery-etcd")]
#[test]
fn etcd_source_hides_user_info() {
    use tower_mesh::discovery::EtcdSource;
    let base = format!("http://root:{SECRET}@127.0.0.1:2379").parse().unwrap();
    hidden("EtcdSource", &EtcdSource::new(base, "/services/orders/"));
}

#[cfg(feature = "discovery")]
#[test]
fn endpoints_with_user_info_are_refused_without_echoing_it() {
    use tower_mesh::discovery::{parse_endpoints, Registry};
    let endpoint = format!("user:{SECRET}@10.0.0.7:8080");
    let err = parse_endpoints([endpoint.as_str()]).unwrap_err();
    hidden_error("parse_endpoints error", &err);
    let err = Registry::new().set_static("orders", [endpoint.as_str()]).unwrap_err();
    hidden_error("set_static error", &err);
}

#[cfg(feature = "jwt")]
mod jwt {
    use std::convert::Infallible;

    use http::{Request, Response};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use tower::{service_fn, Layer, ServiceExt};
    use tower_mesh::jwt::{
        Algorithm, Allowlist, BearerToken, Claims, Jwks, JwtClientLayer, JwtKey, JwtPropagationLayer,
    };

    use super::{hidden, hidden_error, SECRET};

    fn hmac_secret() -> String {
        format!("{SECRET}-an-hmac-secret-of-32-bytes-or-more")
    }

    #[tokio::test]
    async fn keys_tokens_layers_and_config_errors_hide_secrets() {
        let key = JwtKey::hmac(hmac_secret(), Algorithm::HS256).unwrap();
        hidden("JwtKey", &key);
        let builder = JwtPropagationLayer::builder().key(key).audience("api").name("edge");
        hidden("JwtPropagationBuilder", &builder);
        let layer = builder.build().unwrap();
        hidden("JwtPropagationLayer", &layer);
        hidden("JwtPropagation", &layer.layer(service_fn(|_: Request<()>| async { Ok::<_, Infallible>(()) })));

        let token = BearerToken::new(&format!("{SECRET}.{SECRET}.{SECRET}")).unwrap();
        hidden("BearerToken", &token);
        assert!(token.header_value().is_sensitive());
        let scope = token.clone().scope(async {});
        hidden("TokenScope", &scope);

        let client = JwtClientLayer::new(Allowlist::new(["orders.internal"]).unwrap());
        hidden("JwtClientLayer", &client);

        let err = Jwks::new(&format!("https://user:{SECRET}@auth.example/jwks")).unwrap_err();
        hidden_error("Jwks::new error", &err);
        let jwks = Jwks::new("https://auth.example/jwks").unwrap();
        hidden("Jwks", &jwks);
        let err = Allowlist::new([format!("u:{SECRET}@host")]).unwrap_err();
        hidden_error("Allowlist::new error", &err);
        let err = Allowlist::new([format!("http://u:{SECRET}@host")]).unwrap_err();
        hidden_error("Allowlist::new error", &err);
    }

    #[tokio::test]
    async fn the_inbound_authorization_header_reaches_the_handler_sensitive() {
        let layer = JwtPropagationLayer::builder()
            .key(JwtKey::hmac(hmac_secret(), Algorithm::HS256).unwrap())
            .any_audience()
            .build()
            .unwrap();
        let svc = layer.layer(service_fn(|req: Request<()>| async move {
            let auth = req.headers().get(http::header::AUTHORIZATION).unwrap();
            Ok::<_, Infallible>(Response::new((auth.is_sensitive(), format!("{:?}", req.headers()))))
        }));
        let claims = Claims { sub: Some(SECRET.to_owned()), exp: Some(u64::MAX / 2), ..Default::default() };
        let token = encode(&Header::default(), &claims, &EncodingKey::from_secret(hmac_secret().as_bytes())).unwrap();
        let req = Request::get("/").header("authorization", format!("Bearer {token}")).body(()).unwrap();
        let (sensitive, headers) = svc.oneshot(req).await.unwrap().into_body();
        assert!(sensitive, "the handler got the authorization header unmarked");
        assert!(!headers.contains(&token), "the handler's headers show the token: {headers}");
    }
}

#[cfg(feature = "rabbitmq")]
#[tokio::test]
async fn rabbitmq_url_password_is_hidden() {
    use tower_mesh::publish::rabbitmq::RabbitMq;
    let builder = RabbitMq::builder(format!("amqp://guest:{SECRET}@127.0.0.1:5672/%2f"));
    hidden("RabbitMqBuilder", &builder);
    match builder.build() {
        Ok(publisher) => hidden("RabbitMqPublisher", &publisher),
        Err(e) => hidden_error("RabbitMq build error", &e),
    }
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn nats_url_password_is_hidden() {
    use tower_mesh::publish::nats::Nats;
    let builder = Nats::builder(format!("nats://user:{SECRET}@127.0.0.1:4222"));
    hidden("NatsBuilder", &builder);
    match builder.build() {
        Ok(publisher) => hidden("NatsPublisher", &publisher),
        Err(e) => hidden_error("Nats build error", &e),
    }
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_url_password_is_hidden() {
    use tower_mesh::publish::redis::Redis;
    let builder = Redis::builder(format!("redis://:{SECRET}@127.0.0.1:6379/0"));
    hidden("RedisBuilder", &builder);
    match builder.build() {
        Ok(publisher) => hidden("RedisPublisher", &publisher),
        Err(e) => hidden_error("Redis build error", &e),
    }
    // A URL that does not parse: the error names no password either.
    let err = Redis::builder(format!("redis://:{SECRET}@127.0.0.1:notaport")).build().unwrap_err();
    hidden_error("Redis bad URL error", &err);
}

#[cfg(feature = "mqtt")]
#[tokio::test]
async fn mqtt_credentials_are_hidden() {
    use tower_mesh::publish::mqtt::Mqtt;
    let builder = Mqtt::builder(format!("mqtt://user:{SECRET}@127.0.0.1:1883"));
    hidden("MqttBuilder", &builder);
    match builder.build() {
        Ok(publisher) => hidden("MqttPublisher", &publisher),
        Err(e) => hidden_error("Mqtt build error", &e),
    }
    let err = Mqtt::builder(format!("mqtt://user:{SECRET}@127.0.0.1:notaport")).build().unwrap_err();
    hidden_error("Mqtt bad URL error", &err);
}

#[cfg(feature = "kafka")]
#[tokio::test]
async fn kafka_sasl_settings_are_hidden() {
    use tower_mesh::publish::kafka::Kafka;
    let builder = Kafka::builder("127.0.0.1:9092")
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanisms", "PLAIN")
        .set("sasl.username", "user")
        .set("sasl.password", SECRET);
    hidden("KafkaBuilder", &builder);
    match builder.build() {
        Ok(publisher) => hidden("KafkaPublisher", &publisher),
        Err(e) => hidden_error("Kafka build error", &e),
    }
}

#[cfg(feature = "stack")]
#[test]
fn stack_config_hides_user_info() {
    use tower_mesh::stack::{ClientConfig, MeshConfig};
    let mut client = ClientConfig::default().named("orders");
    client.endpoints = vec![format!("user:{SECRET}@10.0.0.7:8080")];
    client.forward_token_to = vec![format!("http://user:{SECRET}@orders.internal")];
    hidden("ClientConfig", &client);
    let mut mesh = MeshConfig::default();
    mesh.clients.insert("orders".into(), client.clone());
    hidden("MeshConfig", &mesh);
    let toml = format!("[client.orders]\nendpoints = [\"user:{SECRET}@10.0.0.7:8080\"]\n");
    match MeshConfig::from_toml_str(&toml) {
        Ok(mesh) => hidden("MeshConfig from TOML", &mesh),
        Err(e) => hidden_error("MeshConfig::from_toml_str error", &e),
    }
    if let Err(e) = client.http_stack() {
        hidden_error("ClientConfig::http_stack error", &e);
    }
}

#[cfg(all(feature = "stack", feature = "rate-limit-redis"))]
#[test]
fn rate_limit_store_password_is_hidden() {
    use tower_mesh::rate_limit::redis::RedisRateLimiter;
    use tower_mesh::rate_limit::RateLimitConfig;
    use tower_mesh::stack::{ClientConfig, MeshConfig};
    let store = format!("redis://:{SECRET}@127.0.0.1:6379/0");
    let rate_limit = RateLimitConfig { store: Some(store.clone()), ..RateLimitConfig::default() };
    hidden("RateLimitConfig", &rate_limit);
    let mut client = ClientConfig::default().named("orders");
    client.rate_limit = Some(rate_limit.clone());
    hidden("ClientConfig with a rate limit", &client);
    let mut mesh = MeshConfig::default();
    mesh.server.rate_limit = Some(rate_limit);
    hidden("MeshConfig with a server rate limit", &mesh);
    hidden("RedisRateLimiterBuilder", &RedisRateLimiter::builder(store));
}
