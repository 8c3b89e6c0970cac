//! The discovery service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Uri};
use tokio::time::Instant;
use tower_service::Service;

use super::balance::{Shared, Table};
use super::error::DiscoveryError;
use super::future::{Guard, ResponseFuture};
use super::registry::Registry;
use crate::classify::{Classify, ResultClassifier};
use crate::BoxError;

/// Routes each request to a live endpoint of its logical service (see the
/// [module docs](super)). Made by [`DiscoveryLayer`](super::DiscoveryLayer).
#[derive(Clone)]
pub struct Discovery<S, C = ResultClassifier> {
    inner: S,
    registry: Registry,
    shared: Arc<Shared>,
    fixed: Option<Arc<str>>,
    keep_host: bool,
    classifier: C,
}

impl<S: fmt::Debug, C> fmt::Debug for Discovery<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field("service", &self.fixed)
            .field("keep_host", &self.keep_host)
            .finish_non_exhaustive()
    }
}

impl<S, C> Discovery<S, C> {
    pub(crate) fn new(
        inner: S,
        registry: Registry,
        shared: Arc<Shared>,
        fixed: Option<Arc<str>>,
        keep_host: bool,
        classifier: C,
    ) -> Self {
        Discovery { inner, registry, shared, fixed, keep_host, classifier }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Endpoints of `service` currently ejected by outlier detection, as this
    /// service last saw its endpoint set.
    pub fn ejected(&self, service: &str) -> Vec<Authority> {
        self.shared.current(service).map(|t| t.ejected(Instant::now())).unwrap_or_default()
    }

    /// Whether `service`'s endpoint source is failing and its last known
    /// endpoints are in use (stale-while-error), as this service last saw it.
    pub fn is_stale(&self, service: &str) -> bool {
        self.shared.current(service).is_some_and(|t| t.stale)
    }

    #[cfg(test)]
    pub(crate) fn table_for_test(&mut self, service: &str) -> Arc<Table> {
        self.table(service).expect("known service")
    }

    /// The table for `name`, refreshed if its endpoint set changed.
    fn table(&mut self, name: &str) -> Result<Arc<Table>, DiscoveryError> {
        self.shared.route(&self.registry, name)
    }
}

/// Point `uri` at `endpoint`, keeping scheme (default `http`), path and query.
fn rewrite(uri: &Uri, endpoint: &Authority) -> Result<Uri, DiscoveryError> {
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(endpoint.clone());
    if parts.scheme.is_none() {
        parts.scheme = Some(Scheme::HTTP);
    }
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).map_err(|e| DiscoveryError::InvalidUri { reason: e.to_string() })
}

impl<S, C, B> Service<Request<B>> for Discovery<S, C>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let classifier = self.classifier.clone();
        let original = req.uri().authority().cloned();
        let name: Arc<str> = match (&self.fixed, &original) {
            (Some(fixed), _) => fixed.clone(),
            (None, Some(a)) => Arc::from(a.host()),
            (None, None) => return ResponseFuture::failed(DiscoveryError::MissingAuthority, classifier),
        };
        let table = match self.table(&name) {
            Ok(t) => t,
            Err(e) => return ResponseFuture::failed(e, classifier),
        };
        let now = Instant::now();
        let Some(index) = table.pick(now) else {
            metrics::counter!("tower_mesh_discovery_no_endpoints_total", "service" => name.to_string()).increment(1);
            return ResponseFuture::failed(DiscoveryError::NoEndpoints { service: name }, classifier);
        };
        match rewrite(req.uri(), &table.endpoints[index].authority) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => return ResponseFuture::failed(e, classifier),
        }
        if self.keep_host {
            if let Some(a) = original {
                if !req.headers().contains_key(HOST) {
                    if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                        req.headers_mut().insert(HOST, v);
                    }
                }
            }
        }
        let guard = Guard::new(table, index, now);
        ResponseFuture::called(self.inner.call(req), guard, classifier)
    }
}
