//! The endpoint registry: logical service names to live endpoint sets.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use http::uri::Authority;
use tokio::sync::watch;

use super::error::DiscoveryError;

/// The endpoints of one service as last known, shared cheaply.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Resolution {
    endpoints: Arc<[Authority]>,
    stale: bool,
}

impl Resolution {
    /// A fresh resolution with these endpoints (duplicates removed, order kept).
    pub fn new(endpoints: impl IntoIterator<Item = Authority>) -> Self {
        let mut seen: Vec<Authority> = Vec::new();
        for e in endpoints {
            if !seen.contains(&e) {
                seen.push(e);
            }
        }
        Resolution { endpoints: seen.into(), stale: false }
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[Authority] {
        &self.endpoints
    }

    /// Whether the source could not refresh this set and it is the last known
    /// one (stale-while-error).
    pub fn is_stale(&self) -> bool {
        self.stale
    }
}

/// Parse `host:port` strings into authorities, with a typed error for a bad
/// one (user info such as `user:password@` is refused, and redacted from the
/// error).
pub fn parse_endpoints<I, S>(endpoints: I) -> Result<Vec<Authority>, DiscoveryError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    endpoints
        .into_iter()
        .map(|e| {
            let e = e.as_ref();
            match e.parse::<Authority>() {
                // User info (`user:password@`) has no place in an endpoint.
                Ok(a) if a.port_u16().is_some() && !a.host().is_empty() && !a.as_str().contains('@') => Ok(a),
                _ => Err(DiscoveryError::InvalidEndpoint {
                    endpoint: crate::redact::redact_url(e).chars().take(256).collect(),
                }),
            }
        })
        .collect()
}

/// Logical service names and their live endpoint sets.
///
/// Endpoint sources write into it — [`Registry::set`] for a static list, or a
/// backend task (DNS, etcd, Consul, Kubernetes) that calls [`Registry::set`]
/// on every change and [`Registry::mark_stale`] when it cannot refresh — and
/// the [`DiscoveryLayer`](super::DiscoveryLayer) reads from it. Cloning is cheap
/// (one `Arc`); clones share the same services.
///
/// ```
/// use tower_mesh::discovery::Registry;
///
/// let registry = Registry::new();
/// registry.set_static("orders", ["10.0.0.1:8080", "10.0.0.2:8080"]).unwrap();
/// assert_eq!(registry.resolution("orders").unwrap().endpoints().len(), 2);
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    services: Arc<Mutex<HashMap<String, watch::Sender<Resolution>>>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        f.debug_struct("Registry").field("services", &names).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<Resolution>>> {
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace the endpoints of `service` (registering it if new). Watchers
    /// see the change at their next request. Clears the stale mark.
    pub fn set(&self, service: &str, endpoints: impl IntoIterator<Item = Authority>) {
        let resolution = Resolution::new(endpoints);
        let mut map = self.lock();
        match map.get(service) {
            Some(tx) => {
                tx.send_if_modified(|cur| {
                    if *cur == resolution {
                        false
                    } else {
                        *cur = resolution;
                        true
                    }
                });
            }
            None => {
                let (tx, _) = watch::channel(resolution);
                map.insert(service.to_owned(), tx);
            }
        }
        drop(map);
        tracing::debug!(service, "discovery endpoints updated");
    }

    /// [`set`](Self::set) from `host:port` strings.
    pub fn set_static<I, S>(&self, service: &str, endpoints: I) -> Result<(), DiscoveryError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let parsed = parse_endpoints(endpoints)?;
        self.set(service, parsed);
        Ok(())
    }

    /// Keep the last known endpoints of `service` but mark them stale: its
    /// source failed to refresh them. A no-op for an unknown service.
    pub fn mark_stale(&self, service: &str) {
        let map = self.lock();
        if let Some(tx) = map.get(service) {
            let changed = tx.send_if_modified(|cur| !std::mem::replace(&mut cur.stale, true));
            if changed {
                tracing::warn!(service, "discovery source failed; keeping the last known endpoints");
                metrics::gauge!("tower_mesh_discovery_stale", "service" => service.to_owned()).set(1.0);
            }
        }
    }

    /// Register `service` with no endpoints yet, if unknown (its requests fail
    /// fast with [`DiscoveryError::NoEndpoints`] until a source fills it).
    pub fn register(&self, service: &str) {
        self.lock().entry(service.to_owned()).or_insert_with(|| watch::channel(Resolution::default()).0);
    }

    /// Remove `service`; later requests for it fail with [`DiscoveryError::UnknownService`].
    pub fn remove(&self, service: &str) {
        self.lock().remove(service);
    }

    /// The current endpoints of `service`.
    pub fn resolution(&self, service: &str) -> Option<Resolution> {
        self.lock().get(service).map(|tx| tx.borrow().clone())
    }

    /// Watch `service`'s endpoint set.
    pub fn watch(&self, service: &str) -> Result<watch::Receiver<Resolution>, DiscoveryError> {
        self.lock()
            .get(service)
            .map(|tx| tx.subscribe())
            .ok_or_else(|| DiscoveryError::UnknownService { service: service.to_owned() })
    }

    /// Feed `service`'s endpoint changes into `tx` as `tower::discover::Change`s
    /// until `tx` is closed — for example into the sender of tonic's
    /// `Channel::balance_channel`, mapping each authority to a tonic `Endpoint`
    /// with `make` (return `None` to skip one).
    pub async fn feed_changes<T, F>(
        &self,
        service: &str,
        tx: tokio::sync::mpsc::Sender<tower::discover::Change<Authority, T>>,
        mut make: F,
    ) -> Result<(), DiscoveryError>
    where
        F: FnMut(&Authority) -> Option<T>,
    {
        use tower::discover::Change;
        let mut rx = self.watch(service)?;
        let mut current: Vec<Authority> = Vec::new();
        loop {
            let next: Vec<Authority> = rx.borrow_and_update().endpoints().to_vec();
            for gone in current.iter().filter(|a| !next.contains(a)) {
                if tx.send(Change::Remove(gone.clone())).await.is_err() {
                    return Ok(());
                }
            }
            for new in next.iter().filter(|a| !current.contains(a)) {
                if let Some(v) = make(new) {
                    if tx.send(Change::Insert(new.clone(), v)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            current = next;
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return Ok(()) },
                _ = tx.closed() => return Ok(()),
            }
        }
    }
}
