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
/// resumed from the `X-Consul-Index` it answered. As Consul's documentation
/// requires, an index of 0 is taken as 1 (a query with index 0 returns at once,
/// so it would never block), and an index that goes backwards resets the next
/// query to index 0. A query that gets no answer within `wait + wait/16 + 10 s`
/// fails; a failure marks the endpoints stale (the last set keeps serving) and
/// retries with backoff. The default client sets TCP keepalive.
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
                        index = next_index(index, next);
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
        // Consul adds up to `wait / 16` to spread wake-ups; allow for it and the network.
        let (headers, body) =
            tokio::time::timeout(self.wait + self.wait / 16 + Duration::from_secs(10), fetch).await??;
        let next = headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or("missing or invalid X-Consul-Index")?;
        Ok((next, parse_entries(&body)?))
    }
}

/// The index of the next blocking query, after an answer with index `next`
/// to one with `index`, by the rules of Consul's blocking-query documentation:
/// an index below 1 is taken as 1 (Consul should never answer one, and a
/// query with index 0 does not block: a busy loop), and an index lower than
/// the last one means Consul's state was reset (a restore, a new leader), so
/// the next query starts over from 0.
pub(crate) fn next_index(index: u64, next: u64) -> u64 {
    let next = next.max(1);
    if next < index {
        0
    } else {
        next
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

#[cfg(test)]
mod tests {
    use super::next_index;

    #[test]
    fn consul_index_rules() {
        assert_eq!(next_index(0, 7), 7, "follows the answer");
        assert_eq!(next_index(7, 7), 7, "a timeout keeps the index");
        assert_eq!(next_index(0, 0), 1, "0 is taken as 1");
        assert_eq!(next_index(7, 0), 0, "backwards: start over");
        assert_eq!(next_index(1, 0), 1, "after a reset, 0 stays 1: no busy loop of non-blocking queries");
        assert_eq!(next_index(9, 4), 0, "backwards: start over");
    }
}
