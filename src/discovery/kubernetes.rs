//! Kubernetes: EndpointSlices of a Service, listed then watched.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Uri};
use http_body_util::Full;
use serde::Deserialize;

use super::registry::Registry;
use super::source::{failed, HttpClient, Lines, RetryDelay, SourceTask};
use crate::redact::{redact_opt, RedactedUrl};
use crate::BoxError;

/// Endpoints of a Kubernetes Service: the ready addresses of its
/// `discovery.k8s.io/v1` EndpointSlices (label
/// `kubernetes.io/service-name`), listed once and then watched
/// (`?watch=1&resourceVersion=…`), relisting when the watch expires.
///
/// It speaks the API over the given [`HttpClient`]: a real API server needs
/// HTTPS, so pass a TLS-capable client and the service-account token
/// ([`token`](Self::token)); the default plain-HTTP client suits `kubectl
/// proxy`.
///
/// ```no_run
/// use tower_mesh::discovery::{KubernetesSource, Registry};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_mesh::BoxError> {
/// let registry = Registry::new();
/// // through `kubectl proxy` on its default port
/// let _task = KubernetesSource::new("http://127.0.0.1:8001".parse()?, "shop", "orders")
///     .port_name("http")
///     .spawn(registry.clone(), "orders");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct KubernetesSource {
    base: Uri,
    namespace: String,
    k8s_service: String,
    port_name: Option<String>,
    token: Option<String>,
    client: HttpClient,
}

impl fmt::Debug for KubernetesSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bearer token and any user info in the URL stay out.
        f.debug_struct("KubernetesSource")
            .field("base", &RedactedUrl(&self.base))
            .field("namespace", &self.namespace)
            .field("k8s_service", &self.k8s_service)
            .field("port_name", &self.port_name)
            .field("token", &redact_opt(&self.token))
            .field("client", &self.client)
            .finish()
    }
}

#[derive(Deserialize)]
struct SliceList {
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<Slice>,
}

#[derive(Deserialize)]
struct ListMeta {
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
}

#[derive(Deserialize)]
struct Meta {
    name: String,
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
}

#[derive(Deserialize)]
struct Slice {
    metadata: Meta,
    #[serde(default)]
    endpoints: Vec<SliceEndpoint>,
    #[serde(default)]
    ports: Vec<SlicePort>,
}

#[derive(Deserialize)]
struct SliceEndpoint {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Conditions,
}

#[derive(Deserialize, Default)]
struct Conditions {
    /// Absent means unknown, which consumers treat as ready.
    ready: Option<bool>,
}

#[derive(Deserialize)]
struct SlicePort {
    name: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

impl KubernetesSource {
    /// Watch Service `k8s_service` in `namespace` on the API server at `base`.
    pub fn new(base: Uri, namespace: impl Into<String>, k8s_service: impl Into<String>) -> Self {
        KubernetesSource {
            base,
            namespace: namespace.into(),
            k8s_service: k8s_service.into(),
            port_name: None,
            token: None,
            client: HttpClient::default(),
        }
    }

    /// Use the slice port with this name (default: the first port).
    pub fn port_name(mut self, name: impl Into<String>) -> Self {
        self.port_name = Some(name.into());
        self
    }

    /// Bearer token for the API server, sent as a sensitive `Authorization`
    /// header (never in `Debug` or logs).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The HTTP client (default: plain HTTP).
    pub fn client(mut self, client: HttpClient) -> Self {
        self.client = client;
        self
    }

    /// Start listing and watching, publishing into `registry` under `service`.
    pub fn spawn(self, registry: Registry, service: &str) -> SourceTask {
        registry.register(service);
        let service = service.to_owned();
        SourceTask::spawn(async move {
            let mut delay = RetryDelay::new();
            loop {
                match self.list_and_watch(&registry, &service, &mut delay).await {
                    // The watch ended normally (expired): list again at once.
                    Ok(()) => {}
                    Err(e) => failed(&registry, &service, "kubernetes", e, &mut delay).await,
                }
            }
        })
    }

    fn request(&self, query: &str) -> Result<Request<Full<Bytes>>, BoxError> {
        let base = self.base.to_string();
        let uri = format!(
            "{}/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{}{query}",
            base.trim_end_matches('/'),
            self.namespace,
            self.k8s_service
        );
        let mut req = Request::get(uri).header("accept", "application/json").body(Full::new(Bytes::new()))?;
        if let Some(t) = &self.token {
            let mut v = http::HeaderValue::from_str(&format!("Bearer {t}"))?;
            v.set_sensitive(true);
            req.headers_mut().insert(http::header::AUTHORIZATION, v);
        }
        Ok(req)
    }

    async fn list_and_watch(&self, registry: &Registry, service: &str, delay: &mut RetryDelay) -> Result<(), BoxError> {
        let (_, body) =
            tokio::time::timeout(Duration::from_secs(30), self.client.fetch(self.request("")?, 16 << 20)).await??;
        let list: SliceList = serde_json::from_slice(&body)?;
        let mut slices: BTreeMap<String, Vec<Authority>> = BTreeMap::new();
        for s in list.items {
            slices.insert(s.metadata.name.clone(), self.endpoints_of(&s));
        }
        registry.set(service, union(&slices));
        delay.reset();

        let mut rv = list.metadata.resource_version;
        let watch = self.request(&format!("&watch=1&allowWatchBookmarks=true&resourceVersion={rv}"))?;
        let body = self.client.send(watch).await?.into_body();
        let mut lines = Lines::new(body);
        while let Some(line) = lines.next().await? {
            let ev: WatchEvent = serde_json::from_slice(&line)?;
            match ev.kind.as_str() {
                "ADDED" | "MODIFIED" | "DELETED" => {
                    let slice: Slice = serde_json::from_value(ev.object)?;
                    rv = slice.metadata.resource_version.clone();
                    if ev.kind == "DELETED" {
                        slices.remove(&slice.metadata.name);
                    } else {
                        slices.insert(slice.metadata.name.clone(), self.endpoints_of(&slice));
                    }
                    registry.set(service, union(&slices));
                }
                "BOOKMARK" => {
                    if let Some(v) = ev.object.pointer("/metadata/resourceVersion").and_then(|v| v.as_str()) {
                        rv = v.to_owned();
                    }
                }
                // 410 Gone and the like: the resource version expired; relist.
                "ERROR" => return Ok(()),
                other => return Err(format!("unexpected watch event type `{other}`").into()),
            }
        }
        tracing::debug!(service, resource_version = %rv, "kubernetes watch ended; relisting");
        Ok(())
    }

    fn endpoints_of(&self, slice: &Slice) -> Vec<Authority> {
        let port = match &self.port_name {
            Some(name) => slice.ports.iter().find(|p| p.name.as_deref() == Some(name.as_str())),
            None => slice.ports.first(),
        }
        .and_then(|p| p.port);
        let Some(port) = port else { return Vec::new() };
        slice
            .endpoints
            .iter()
            .filter(|e| e.conditions.ready.unwrap_or(true))
            .flat_map(|e| e.addresses.iter())
            .filter_map(|a| {
                let host = if a.contains(':') { format!("[{a}]") } else { a.clone() };
                format!("{host}:{port}").parse().ok()
            })
            .collect()
    }
}

fn union(slices: &BTreeMap<String, Vec<Authority>>) -> Vec<Authority> {
    slices.values().flatten().cloned().collect()
}
