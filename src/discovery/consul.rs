//! Consul: the health API with blocking queries.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Uri};
use http_body_util::Full;
use serde::Deserialize;

use super::registry::Registry;
use super::source::{failed, HttpClient, RetryDelay, SourceTask};
use crate::redact::{redact_opt, RedactedUrl};
use crate::BoxError;

/// Endpoints of a Consul service: the instances passing their health checks,
/// from `GET /v1/health/service/<name>?passing&index=<i>&wait=<w>` — a
/// blocking query that returns as soon as the set changes (or after `wait`),
/// resumed from the `X-Consul-Index` it answered.
///
/// ```no_run
/// use tower_mesh::discovery::{ConsulSource, Registry};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_mesh::BoxError> {
/// let registry = Registry::new();
/// let _task = ConsulSource::new("http://127.0.0.1:8500".parse()?, "orders").spawn(registry.clone(), "orders");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ConsulSource {
    base: Uri,
    consul_service: String,
    token: Option<String>,
    wait: Duration,
    client: HttpClient,
}

impl fmt::Debug for ConsulSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The ACL token and any user info in the URL stay out.
        f.debug_struct("ConsulSource")
            .field("base", &RedactedUrl(&self.base))
            .field("consul_service", &self.consul_service)
            .field("token", &redact_opt(&self.token))
            .field("wait", &self.wait)
            .field("client", &self.client)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    node: Node,
    service: Service,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(default)]
    address: String,
    port: u16,
}

impl ConsulSource {
    /// Watch `consul_service` on the agent at `base` (e.g. `http://127.0.0.1:8500`).
    pub fn new(base: Uri, consul_service: impl Into<String>) -> Self {
        ConsulSource {
            base,
            consul_service: consul_service.into(),
            token: None,
            wait: Duration::from_secs(55),
            client: HttpClient::default(),
        }
    }

    /// ACL token, sent as `X-Consul-Token` (a header marked sensitive; never
    /// in `Debug` or logs).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Longest a blocking query waits for a change (default 55 s).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The HTTP client (default: plain HTTP).
    pub fn client(mut self, client: HttpClient) -> Self {
        self.client = client;
        self
    }

    /// Start watching, publishing into `registry` under `service`.
    pub fn spawn(self, registry: Registry, service: &str) -> SourceTask {
        registry.register(service);
        let service = service.to_owned();
        SourceTask::spawn(async move {
            let mut index: u64 = 0;
            let mut delay = RetryDelay::new();
            loop {
                match self.query(index).await {
                    Ok((next, endpoints)) => {
                        delay.reset();
                        registry.set(&service, endpoints);
                        // A lower index means Consul's state was reset: start over.
                        index = if next < index { 0 } else { next };
                    }
                    Err(e) => failed(&registry, &service, "consul", e, &mut delay).await,
                }
            }
        })
    }

    async fn query(&self, index: u64) -> Result<(u64, Vec<Authority>), BoxError> {
        let base = self.base.to_string();
        let uri = format!(
            "{}/v1/health/service/{}?passing&index={index}&wait={}s",
            base.trim_end_matches('/'),
            self.consul_service,
            self.wait.as_secs().max(1)
        );
        let mut req = Request::get(uri).body(Full::new(Bytes::new()))?;
        if let Some(t) = &self.token {
            let mut v = http::HeaderValue::from_str(t)?;
            v.set_sensitive(true);
            req.headers_mut().insert("x-consul-token", v);
        }
        let fetch = self.client.fetch(req, 8 << 20);
        let (headers, body) = tokio::time::timeout(self.wait + Duration::from_secs(10), fetch).await??;
        let next = headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or("missing or invalid X-Consul-Index")?;
        Ok((next, parse_entries(&body)?))
    }
}

/// The endpoints of a health-API answer (service address, else node address).
pub(crate) fn parse_entries(body: &[u8]) -> Result<Vec<Authority>, BoxError> {
    let entries: Vec<Entry> = serde_json::from_slice(body)?;
    entries
        .into_iter()
        .map(|e| {
            let host = if e.service.address.is_empty() { e.node.address } else { e.service.address };
            let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
            Ok(format!("{host}:{}", e.service.port).parse::<Authority>()?)
        })
        .collect()
}
