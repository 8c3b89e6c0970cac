//! Keys loaded from a JWKS URL: a cache, refreshed when it ages and — at most
//! once per interval — when a token names a `kid` it does not know.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use metrics::Counter;
use tokio::sync::watch;
use tokio::time::Instant;

use super::error::{JwksError, JwtConfigError};
use super::jws::ClaimRules;
use super::key::{JwtKey, VerifyKey};
use crate::config::check_nonzero;

type FetchFuture = Pin<Box<dyn Future<Output = Result<Bytes, JwksError>> + Send>>;
type FetchFn = Arc<dyn Fn(Uri, usize) -> FetchFuture + Send + Sync>;

/// Where and how to load verification keys from a JWK Set URL (RFC 7517).
///
/// The keys are fetched on first use, kept, and fetched again
/// - in the background once they are older than [`max_age`](Jwks::max_age)
///   (requests go on being checked with the cached keys meanwhile), and
/// - when a token names a `kid` not in the cache — the request waits for that
///   fetch — but **at most once per [`min_refresh_interval`](Jwks::min_refresh_interval)**:
///   a flood of tokens with made-up `kid`s costs one fetch per interval, and
///   the others are refused as [`UnknownKey`](super::JwtError::UnknownKey).
///
/// Concurrent requests share one fetch. A failed fetch keeps the keys
/// already cached. The fetch runs on its own tokio task, bounded by
/// [`timeout`](Jwks::timeout) and [`max_size`](Jwks::max_size), so a
/// cancelled request never abandons it half-way.
///
/// Each key's algorithm comes from the JWK's `alg` member, which must be one
/// of the [allowed algorithms](Jwks::algorithms); a JWK without `alg` gets the
/// first allowed algorithm of its kind (RSA, P-256, P-384, Ed25519). Keys
/// marked `"use": "enc"`, symmetric (`oct`) keys and keys of other kinds are
/// ignored.
///
/// The built-in client speaks plain HTTP (hyper-util); for `https` give a
/// client with a TLS connector ([`with_client`](Jwks::with_client)).
///
/// ```
/// use std::time::Duration;
/// use tower_mesh::jwt::{Algorithm, Jwks};
///
/// let jwks = Jwks::new("http://127.0.0.1:8080/.well-known/jwks.json")
///     .unwrap()
///     .algorithms([Algorithm::RS256, Algorithm::ES256])
///     .min_refresh_interval(Duration::from_secs(60));
/// assert!(Jwks::new("file:///etc/jwks.json").is_err());
/// ```
#[derive(Clone)]
pub struct Jwks {
    url: Uri,
    algorithms: Vec<Algorithm>,
    min_refresh_interval: Duration,
    max_age: Duration,
    timeout: Duration,
    max_size: usize,
    fetch: Option<FetchFn>,
}

impl Jwks {
    /// Keys from `url`, an absolute `http` or `https` URL.
    ///
    /// Defaults: algorithms `RS256`, `ES256`, `ES384`, `EdDSA`; refresh on an
    /// unknown `kid` at most every 30 s; keys kept 10 minutes; a fetch may
    /// take 5 s and 256 KiB.
    pub fn new(url: &str) -> Result<Self, JwtConfigError> {
        let bad = || JwtConfigError::JwksUrl(crate::redact::redact_url(url).into_owned());
        let parsed: Uri = url.parse().map_err(|_| bad())?;
        match (parsed.scheme_str(), parsed.authority()) {
            (Some("http" | "https"), Some(a)) if !a.as_str().contains('@') => {}
            _ => return Err(bad()),
        }
        Ok(Jwks {
            url: parsed,
            algorithms: vec![Algorithm::RS256, Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA],
            min_refresh_interval: Duration::from_secs(30),
            max_age: Duration::from_secs(600),
            timeout: Duration::from_secs(5),
            max_size: 256 * 1024,
            fetch: None,
        })
    }

    /// The algorithms keys may have. HMAC algorithms are ignored: a JWKS is
    /// public, and so is any secret in it.
    pub fn algorithms(mut self, algorithms: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = algorithms.into_iter().filter(|a| a.family() != AlgorithmFamily::Hmac).collect();
        self
    }

    /// The least time between two fetches caused by unknown `kid`s (default
    /// 30 s).
    pub fn min_refresh_interval(mut self, interval: Duration) -> Self {
        self.min_refresh_interval = interval;
        self
    }

    /// How long fetched keys are used before they are fetched again in the
    /// background (default 10 minutes).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// How long one fetch may take (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest JWKS document accepted, in bytes (default 256 KiB).
    pub fn max_size(mut self, bytes: usize) -> Self {
        self.max_size = bytes;
        self
    }

    /// Fetch with `client` (e.g. one with an HTTPS connector) instead of the
    /// built-in plain-HTTP client.
    pub fn with_client<C>(mut self, client: Client<C, Empty<Bytes>>) -> Self
    where
        C: Connect + Clone + Send + Sync + 'static,
    {
        self.fetch = Some(fetch_with(client));
        self
    }

    /// The URL.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    pub(crate) fn validate(&self) -> Result<(), JwtConfigError> {
        check_nonzero("jwt.jwks.timeout", self.timeout.is_zero())?;
        check_nonzero("jwt.jwks.max_size", self.max_size == 0)?;
        check_nonzero("jwt.jwks.max_age", self.max_age.is_zero())?;
        check_nonzero("jwt.jwks.algorithms", self.algorithms.is_empty())?;
        Ok(())
    }
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &crate::redact::RedactedUrl(&self.url))
            .field("algorithms", &self.algorithms)
            .field("min_refresh_interval", &self.min_refresh_interval)
            .field("max_age", &self.max_age)
            .field("timeout", &self.timeout)
            .field("max_size", &self.max_size)
            .finish_non_exhaustive()
    }
}

fn fetch_with<C>(client: Client<C, Empty<Bytes>>) -> FetchFn
where
    C: Connect + Clone + Send + Sync + 'static,
{
    Arc::new(move |uri: Uri, max: usize| {
        let client = client.clone();
        Box::pin(async move {
            let res = client.get(uri).await.map_err(|e| JwksError::Http(e.into()))?;
            if res.status() != StatusCode::OK {
                return Err(JwksError::Status(res.status()));
            }
            match Limited::new(res.into_body(), max).collect().await {
                Ok(body) => Ok(body.to_bytes()),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(JwksError::TooLarge { max }),
                Err(e) => Err(JwksError::Http(e)),
            }
        })
    })
}

/// The keys of one fetch.
#[derive(Default)]
struct KeyMap {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    without_kid: Vec<Arc<VerifyKey>>,
    /// When they were fetched (`None`: never).
    fetched: Option<Instant>,
}

impl KeyMap {
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Arc<VerifyKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            // No `kid`: only a key set with exactly one key of that algorithm
            // says which key is meant.
            None => {
                let mut of_alg = self.by_kid.values().chain(&self.without_kid).filter(|k| k.alg == alg);
                match (of_alg.next(), of_alg.next()) {
                    (Some(k), None) => Some(k),
                    _ => None,
                }
            }
        }
    }
}

struct RefreshState {
    in_flight: bool,
    last_started: Option<Instant>,
    last_error: Option<Arc<JwksError>>,
}

/// What the cache says about a token's key.
pub(crate) enum Lookup {
    Found(Arc<VerifyKey>),
    /// Not cached; a fetch is under way. Look again when this completes.
    Wait(KeyWait),
    /// Not cached, and no fetch allowed now.
    Unknown,
    /// No keys could be loaded at all.
    Unavailable(Arc<JwksError>),
}

/// Completes when the fetch under way is done (boxed: only requests with an
/// unknown `kid` wait, at most once per refresh interval).
pub(crate) type KeyWait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The cache of one [`Jwks`], shared by the services of a layer.
pub(crate) struct JwksCache {
    url: Uri,
    algorithms: Vec<Algorithm>,
    min_refresh_interval: Duration,
    max_age: Duration,
    timeout: Duration,
    max_size: usize,
    fetch: FetchFn,
    rules: Arc<ClaimRules>,
    name: Arc<str>,
    keys: RwLock<Arc<KeyMap>>,
    state: Mutex<RefreshState>,
    done: watch::Sender<u64>,
    fetched_ok: Counter,
    fetched_err: Counter,
}

impl fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksCache").field("url", &crate::redact::RedactedUrl(&self.url)).finish_non_exhaustive()
    }
}

impl JwksCache {
    pub(crate) fn new(cfg: Jwks, rules: Arc<ClaimRules>, name: Arc<str>) -> Self {
        let fetch =
            cfg.fetch.unwrap_or_else(|| fetch_with(Client::builder(TokioExecutor::new()).build(HttpConnector::new())));
        let counter = |outcome: &'static str| metrics::counter!("tower_mesh_jwt_jwks_fetches_total", "service" => name.to_string(), "outcome" => outcome);
        JwksCache {
            url: cfg.url,
            algorithms: cfg.algorithms,
            min_refresh_interval: cfg.min_refresh_interval,
            max_age: cfg.max_age,
            timeout: cfg.timeout,
            max_size: cfg.max_size,
            fetch,
            rules,
            fetched_ok: counter("ok"),
            fetched_err: counter("error"),
            name,
            keys: RwLock::new(Arc::new(KeyMap::default())),
            state: Mutex::new(RefreshState { in_flight: false, last_started: None, last_error: None }),
            done: watch::channel(0).0,
        }
    }

    fn keys(&self) -> Arc<KeyMap> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The key for a token with `kid` and `alg`, fetching the set when it is
    /// not cached (if allowed) or old (in the background).
    pub(crate) fn lookup(self: &Arc<Self>, kid: Option<&str>, alg: Algorithm) -> Lookup {
        let keys = self.keys();
        if let Some(k) = keys.find(kid, alg) {
            if keys.fetched.is_some_and(|t| t.elapsed() >= self.max_age) {
                // Stale: refresh in the background, use the cached key meanwhile.
                let _ = self.start_fetch(false);
            }
            return Lookup::Found(k.clone());
        }
        match self.start_fetch(true) {
            Ok(Some(rx)) => Lookup::Wait(Box::pin(wait(rx))),
            Ok(None) => self.not_found(&keys),
            Err(e) => Lookup::Unavailable(e),
        }
    }

    /// The key, from the cache only (after waiting for a fetch).
    pub(crate) fn lookup_cached(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        let keys = self.keys();
        match keys.find(kid, alg) {
            Some(k) => Lookup::Found(k.clone()),
            None => self.not_found(&keys),
        }
    }

    fn not_found(&self, keys: &KeyMap) -> Lookup {
        if keys.fetched.is_none() {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = &state.last_error {
                return Lookup::Unavailable(e.clone());
            }
        }
        Lookup::Unknown
    }

    /// Start a fetch unless one is under way or (`rate_limited`) one started
    /// less than the refresh interval ago. `Ok(Some(rx))`: a fetch is under
    /// way, `rx` sees its end. `Ok(None)`: none allowed now.
    fn start_fetch(self: &Arc<Self>, rate_limited: bool) -> Result<Option<watch::Receiver<u64>>, Arc<JwksError>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.in_flight {
            return Ok(Some(self.done.subscribe()));
        }
        let now = Instant::now();
        let too_soon = state.last_started.is_some_and(|t| now.saturating_duration_since(t) < self.min_refresh_interval);
        if too_soon && (rate_limited || state.last_error.is_some()) {
            return Ok(None);
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            let e = Arc::new(JwksError::NoRuntime);
            state.last_error = Some(e.clone());
            return Err(e);
        };
        state.in_flight = true;
        state.last_started = Some(now);
        let rx = self.done.subscribe();
        drop(state);
        let this = self.clone();
        rt.spawn(async move { this.refresh().await });
        Ok(Some(rx))
    }

    async fn refresh(self: Arc<Self>) {
        let fetched = match tokio::time::timeout(self.timeout, (self.fetch)(self.url.clone(), self.max_size)).await {
            Ok(Ok(body)) => self.parse(&body),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(JwksError::Timeout),
        };
        let error = match fetched {
            Ok(map) => {
                self.fetched_ok.increment(1);
                tracing::info!(
                    service = %self.name,
                    url = %self.url,
                    keys = map.by_kid.len() + map.without_kid.len(),
                    "loaded JWKS"
                );
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
                None
            }
            Err(e) => {
                self.fetched_err.increment(1);
                tracing::warn!(service = %self.name, url = %self.url, error = %e, "JWKS fetch failed; keeping cached keys");
                Some(Arc::new(e))
            }
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.in_flight = false;
        state.last_error = error;
        drop(state);
        self.done.send_modify(|n| *n += 1);
    }

    fn parse(&self, body: &[u8]) -> Result<KeyMap, JwksError> {
        let set: JwkSet = serde_json::from_slice(body).map_err(JwksError::Json)?;
        let mut map = KeyMap { fetched: Some(Instant::now()), ..KeyMap::default() };
        for jwk in &set.keys {
            let Some(key) = self.usable(jwk) else { continue };
            let key = Arc::new(VerifyKey::new(key, &self.rules));
            match key.kid.clone() {
                Some(kid) => {
                    map.by_kid.entry(kid).or_insert(key);
                }
                None => map.without_kid.push(key),
            }
        }
        if map.by_kid.is_empty() && map.without_kid.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        Ok(map)
    }

    /// The key of `jwk` with its algorithm, if it is a signature key of an
    /// allowed algorithm.
    fn usable(&self, jwk: &Jwk) -> Option<JwtKey> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))) {
            return None;
        }
        let fits = |alg: &Algorithm| match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => alg.family() == AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => *alg == Algorithm::ES256,
                EllipticCurve::P384 => *alg == Algorithm::ES384,
                _ => false,
            },
            AlgorithmParameters::OctetKeyPair(p) => p.curve == EllipticCurve::Ed25519 && *alg == Algorithm::EdDSA,
            // Secrets have no business in a public key set.
            _ => false,
        };
        let alg = match jwk.common.key_algorithm {
            Some(a) => Algorithm::try_from(a).ok().filter(|a| self.algorithms.contains(a) && fits(a))?,
            None => *self.algorithms.iter().find(|a| fits(a))?,
        };
        let key = DecodingKey::from_jwk(jwk).ok()?;
        let key = JwtKey::from_decoding_key(key, alg).ok()?;
        Some(match &jwk.common.key_id {
            Some(kid) => key.with_kid(kid.clone()),
            None => key,
        })
    }
}

async fn wait(mut rx: watch::Receiver<u64>) {
    // The sender lives as long as the cache, which outlives every lookup;
    // an error would only mean it is gone, and then there is nothing to wait for.
    let _ = rx.changed().await;
}
