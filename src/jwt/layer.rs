//! The server-side layer and its builder.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use http::header::WWW_AUTHENTICATE;
use http::{HeaderValue, Request, Response};
use metrics::Counter;
use serde::de::DeserializeOwned;
use tower_layer::Layer;

use super::claims::Claims;
use super::error::{JwtConfigError, JwtError, REASONS};
use super::jwks::{Jwks, JwksCache};
use super::key::{JwtKey, VerifyKey};
use super::service::JwtPropagation;
use super::validate::{Rules, Validator};
use crate::config::check_nonzero;
use crate::error::{to_response, ErrorResponse};

const DEFAULT_NAME: &str = "jwt";

/// Server-side layer that requires a valid bearer JWT, puts its claims in the
/// request's extensions and makes the token [current](super::BearerToken::current)
/// while the inner service handles the request.
///
/// A request without a valid token is answered here — the inner service is
/// never called — with `401 Unauthorized` and
/// `WWW-Authenticate: Bearer error="invalid_token", error_description="…"`
/// (just `Bearer` when no token came, as RFC 6750 asks), or, for a gRPC
/// request, a trailers-only response with `grpc-status: 16`
/// (`UNAUTHENTICATED`). The [`JwtError`] is in the response's extensions.
///
/// Build one with [`JwtPropagationLayer::builder`]; see the
/// [module docs](super) for an example.
pub struct JwtPropagationLayer<C = Claims> {
    shared: Arc<Shared>,
    _claims: PhantomData<fn() -> C>,
}

impl<C> Clone for JwtPropagationLayer<C> {
    fn clone(&self) -> Self {
        JwtPropagationLayer { shared: self.shared.clone(), _claims: PhantomData }
    }
}

impl<C> fmt::Debug for JwtPropagationLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtPropagationLayer").field("name", &self.shared.name).finish_non_exhaustive()
    }
}

impl JwtPropagationLayer {
    /// Start building a layer.
    pub fn builder() -> JwtPropagationBuilder<Claims> {
        JwtPropagationBuilder {
            keys: Vec::new(),
            jwks: None,
            rules: Rules::default(),
            max_token_len: 8 * 1024,
            name: DEFAULT_NAME.into(),
            realm: None,
            _claims: PhantomData,
        }
    }
}

impl<S, C> Layer<S> for JwtPropagationLayer<C> {
    type Service = JwtPropagation<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        JwtPropagation::new(inner, self.shared.clone())
    }
}

/// Builder of a [`JwtPropagationLayer`].
///
/// At least one key ([`key`](Self::key)) or a JWKS URL ([`jwks`](Self::jwks))
/// is needed, and the audience must be said: [`audience`](Self::audience)
/// (what this service is called in tokens meant for it) or, deliberately,
/// [`any_audience`](Self::any_audience).
pub struct JwtPropagationBuilder<C> {
    keys: Vec<JwtKey>,
    jwks: Option<Jwks>,
    rules: Rules,
    max_token_len: usize,
    name: String,
    realm: Option<String>,
    _claims: PhantomData<fn() -> C>,
}

/// The old name of [`JwtPropagationBuilder`].
#[deprecated(note = "renamed to JwtPropagationBuilder")]
pub type JwtPropagationLayerBuilder<C> = JwtPropagationBuilder<C>;

impl<C> fmt::Debug for JwtPropagationBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtPropagationBuilder")
            .field("keys", &self.keys)
            .field("jwks", &self.jwks)
            .field("rules", &self.rules)
            .field("max_token_len", &self.max_token_len)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<C> JwtPropagationBuilder<C> {
    /// Add a static key. A token is checked with the key its `kid` names, or,
    /// without a `kid`, the first key of the token's algorithm.
    pub fn key(mut self, key: JwtKey) -> Self {
        self.keys.push(key);
        self
    }

    /// Load keys from a JWK Set URL (after the static keys).
    pub fn jwks(mut self, jwks: Jwks) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// Accept tokens from this issuer (`iss`); may be called more than once.
    /// When any is given, `iss` is required.
    pub fn issuer(mut self, iss: impl Into<String>) -> Self {
        self.rules.issuers.push(iss.into());
        self
    }

    /// Accept tokens for this audience (`aud`); may be called more than
    /// once. `aud` is then required and must name one of them.
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.rules.audiences.push(aud.into());
        self.rules.any_audience = false;
        self
    }

    /// Accept tokens for any audience (don't check `aud`). Only for a service
    /// whose keys sign tokens for it alone.
    pub fn any_audience(mut self) -> Self {
        self.rules.any_audience = true;
        self.rules.audiences.clear();
        self
    }

    /// Accept only tokens about this subject (`sub`).
    pub fn subject(mut self, sub: impl Into<String>) -> Self {
        self.rules.subject = Some(sub.into());
        self
    }

    /// Clock skew allowed on `exp` and `nbf` (default 60 s, whole seconds).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.rules.leeway = leeway.as_secs();
        self
    }

    /// Also require these claims to be present (`exp` always is; `iss`,
    /// `aud`, `sub` when checked). Only registered claims (`exp`, `nbf`,
    /// `iss`, `aud`, `sub`) are checked here; check others in your claims
    /// type.
    pub fn require(mut self, claims: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.rules.required.extend(claims.into_iter().map(Into::into));
        self
    }

    /// Whether to check `nbf` (default yes).
    pub fn check_nbf(mut self, check: bool) -> Self {
        self.rules.validate_nbf = check;
        self
    }

    /// The longest `Authorization` value accepted, in bytes (default 8 KiB,
    /// at most 16 KiB). Longer ones are refused before any decoding.
    pub fn max_token_len(mut self, bytes: usize) -> Self {
        self.max_token_len = bytes;
        self
    }

    /// The name used in logs and as the `service` label of the metrics
    /// (default `"jwt"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// A `realm` for the `WWW-Authenticate` challenge (letters, digits and
    /// `-._~:/`; anything else is dropped).
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = Some(realm.into());
        self
    }

    /// Deserialize the claims as `T` instead of [`Claims`] (it is what the
    /// handler finds in the request's extensions).
    pub fn claims<T>(self) -> JwtPropagationBuilder<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        JwtPropagationBuilder {
            keys: self.keys,
            jwks: self.jwks,
            rules: self.rules,
            max_token_len: self.max_token_len,
            name: self.name,
            realm: self.realm,
            _claims: PhantomData,
        }
    }

    /// Build the layer.
    pub fn build(self) -> Result<JwtPropagationLayer<C>, JwtConfigError> {
        if self.keys.is_empty() && self.jwks.is_none() {
            return Err(JwtConfigError::NoKeys);
        }
        if !self.rules.any_audience && self.rules.audiences.is_empty() {
            return Err(crate::config::ConfigError::Conflict {
                field: "jwt.audience",
                other: "jwt.any_audience",
                reason: "say which audience tokens must be for, or that any will do",
            }
            .into());
        }
        check_nonzero("jwt.max_token_len", self.max_token_len == 0)?;
        crate::config::check_range("jwt.max_token_len", self.max_token_len as f64, 1.0, super::token::MAX_LEN as f64)?;
        for (i, k) in self.keys.iter().enumerate() {
            if let Some(kid) = &k.kid {
                if self.keys[..i].iter().any(|o| o.kid.as_ref() == Some(kid)) {
                    return Err(JwtConfigError::DuplicateKid(kid.clone()));
                }
            }
        }
        if let Some(j) = &self.jwks {
            j.validate()?;
        }
        install_crypto_provider();

        let rules = Arc::new(self.rules.claim_rules());
        let name: Arc<str> = self.name.into();
        let keys = self.keys.into_iter().map(|k| Arc::new(VerifyKey::new(k, &rules))).collect();
        let jwks = self.jwks.map(|j| Arc::new(JwksCache::new(j, rules, name.clone())));
        let validator = Validator::new(keys, jwks, self.max_token_len);
        Ok(JwtPropagationLayer { shared: Arc::new(Shared::new(validator, name, self.realm)), _claims: PhantomData })
    }
}

/// Make sure `jsonwebtoken` has a crypto provider: with both of its backends
/// enabled in one build (by another crate) it would otherwise panic on the
/// first `decode`. A provider installed before is kept.
fn install_crypto_provider() {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
}

/// What the services of a layer share.
pub(crate) struct Shared {
    pub(crate) validator: Validator,
    name: Arc<str>,
    validated: Counter,
    rejected: [Counter; REASONS.len()],
    challenge_missing: HeaderValue,
    challenges: [HeaderValue; REASONS.len()],
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Shared {
    fn new(validator: Validator, name: Arc<str>, realm: Option<String>) -> Self {
        let realm: Option<String> = realm
            .map(|r| r.chars().filter(|c| c.is_ascii_alphanumeric() || "-._~:/ ".contains(*c)).collect::<String>());
        let challenge = |error: Option<&str>| {
            let mut v = String::from("Bearer");
            let mut sep = " ";
            if let Some(r) = &realm {
                v.push_str(&format!("{sep}realm=\"{r}\""));
                sep = ", ";
            }
            if let Some(desc) = error {
                v.push_str(&format!("{sep}error=\"invalid_token\", error_description=\"{desc}\""));
            }
            HeaderValue::try_from(v).unwrap_or(HeaderValue::from_static("Bearer"))
        };
        let challenges = std::array::from_fn(|i| challenge(Some(DESCRIPTIONS[i])));
        let rejected = std::array::from_fn(
            |i| metrics::counter!("tower_mesh_jwt_rejected_total", "service" => name.to_string(), "reason" => REASONS[i]),
        );
        Shared {
            validator,
            validated: metrics::counter!("tower_mesh_jwt_validated_total", "service" => name.to_string()),
            rejected,
            challenge_missing: challenge(None),
            challenges,
            name,
        }
    }

    #[inline]
    pub(crate) fn accepted(&self) {
        self.validated.increment(1);
    }

    /// Count, log and answer a refused request.
    #[cold]
    pub(crate) fn reject<B, ResB: Default>(&self, req: &Request<B>, err: JwtError) -> Response<ResB> {
        let i = err.index();
        self.rejected[i].increment(1);
        // The reason only: never the token, a claim or the `kid`.
        tracing::debug!(service = %self.name, reason = REASONS[i], "refused bearer token");
        let grpc = is_grpc(req);
        let mut res: Response<ResB> = to_response(ErrorResponse::of(&err), grpc);
        if grpc {
            res.headers_mut().insert("grpc-message", HeaderValue::from_static(GRPC_MESSAGES[i]));
        } else if matches!(err, JwtError::Missing) {
            res.headers_mut().insert(WWW_AUTHENTICATE, self.challenge_missing.clone());
        } else if err.is_invalid_token() {
            res.headers_mut().insert(WWW_AUTHENTICATE, self.challenges[i].clone());
        }
        res.extensions_mut().insert(err);
        res
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// `error_description` per reason (same order as `REASONS`).
const DESCRIPTIONS: [&str; REASONS.len()] = [
    "no token",
    "malformed token",
    "token too large",
    "token expired",
    "token not valid yet",
    "wrong audience",
    "untrusted issuer",
    "wrong subject",
    "bad signature",
    "algorithm not allowed",
    "missing claim",
    "invalid claims",
    "unknown key",
    "keys unavailable",
    "token exchange failed",
];

/// `grpc-message` per reason (percent-encoding needs nothing here).
const GRPC_MESSAGES: [&str; REASONS.len()] = [
    "missing bearer token",
    "invalid token: malformed",
    "invalid token: too large",
    "invalid token: expired",
    "invalid token: not valid yet",
    "invalid token: wrong audience",
    "invalid token: untrusted issuer",
    "invalid token: wrong subject",
    "invalid token: bad signature",
    "invalid token: algorithm not allowed",
    "invalid token: missing claim",
    "invalid token: invalid claims",
    "invalid token: unknown key",
    "token keys unavailable",
    "token exchange failed",
];
