//! Bearer JWTs: checked when a request comes in, carried onto the calls made
//! while handling it — to the hosts you allow, and no others.
//!
//! - [`JwtPropagationLayer`] (server side: axum, hyper, tonic) validates the
//!   `Authorization: Bearer` JWT with [`jsonwebtoken`] (aws-lc-rs backend):
//!   - the algorithm is the **key's**, never the token's: `alg: none`, or an
//!     `HS256` token made with the server's RSA public key as HMAC secret, is
//!     refused before any signature check;
//!   - keys are static ([`JwtKey`]: PEM or secret) and/or loaded from a JWK
//!     Set URL ([`Jwks`]) with a cache, a background refresh when they age
//!     and a rate-limited refresh when a token names an unknown `kid`;
//!   - `exp`, `nbf`, `iss`, `aud` (and optionally `sub`) are checked with a
//!     configurable leeway, with the rules of `jsonwebtoken`'s `Validation`;
//!     a registered claim of a type RFC 7519 does not give it (`exp` as a
//!     string, `sub` as a number …) is refused even when it is not checked;
//!     a header with `crit` is refused (no extension is understood); the
//!     `Authorization` value is size-capped before any decoding;
//!   - the signature and the registered claims are checked by
//!     `jsonwebtoken::decode`, with each key's `DecodingKey` and `Validation`
//!     made once, when the layer (or the JWKS cache) takes the key.
//!
//!   A request that fails is answered `401` with
//!   `WWW-Authenticate: Bearer error="invalid_token"` (gRPC: a trailers-only
//!   `UNAUTHENTICATED`) and the inner service is never called. Otherwise the
//!   claims ([`Claims`], or your own type) go in the request's extensions and
//!   the raw token becomes [current](BearerToken::current) on the task while
//!   the inner service handles the request. The request's `Authorization`
//!   header is marked sensitive before the inner service sees it.
//! - [`JwtClientLayer`] (client side: a hyper-util `Client`, a tonic
//!   `Channel`, any `Service<http::Request<B>>`) puts the current token on
//!   outgoing requests — **only** when their target is in the [`Allowlist`]
//!   (exact `host[:port]` or `*.suffix`; over `https` only, unless the entry
//!   is written `http://…`). The header is marked sensitive. An
//!   optional [`TokenExchange`] hook swaps the caller's token for one meant
//!   for the downstream service.
//!
//! The token is never logged: [`BearerToken`]'s `Debug` is redacted, errors
//! ([`JwtError`]) and events name the reason only.
//!
//! # Example
//!
//! A service that requires a token and calls a downstream service with it
//! (here both are `service_fn`s; in a real program the server is axum or
//! hyper and the client's inner service a hyper-util `Client` or a tonic
//! `Channel`):
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use jsonwebtoken::{encode, EncodingKey, Header};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_mesh::jwt::{Algorithm, Allowlist, Claims, JwtClientLayer, JwtKey, JwtPropagationLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_mesh::BoxError> {
//! let secret = b"an HMAC secret of at least 32 bytes";
//!
//! // What the downstream service receives.
//! let downstream = service_fn(|req: Request<()>| async move {
//!     Ok::<_, std::convert::Infallible>(Response::new(req.headers().get("authorization").cloned()))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(JwtClientLayer::new(Allowlist::new(["orders.internal"])?))
//!     .service(downstream);
//!
//! let server = ServiceBuilder::new()
//!     .layer(
//!         JwtPropagationLayer::builder()
//!             .key(JwtKey::hmac(secret, Algorithm::HS256)?)
//!             .issuer("https://auth.example")
//!             .audience("gateway")
//!             .build()?,
//!     )
//!     .service_fn(move |req: Request<()>| {
//!         let client = client.clone();
//!         async move {
//!             let claims = req.extensions().get::<Claims>().unwrap();
//!             assert_eq!(claims.sub.as_deref(), Some("alice"));
//!             // The token follows to an allowed host, and only there.
//!             let to = |uri: &str| Request::get(uri).body(()).unwrap();
//!             let allowed = client.clone().oneshot(to("https://orders.internal/o/1")).await?.into_body();
//!             let other = client.oneshot(to("http://example.com/")).await?.into_body();
//!             assert!(other.is_none());
//!             Ok::<_, tower_mesh::BoxError>(Response::new(allowed))
//!         }
//!     });
//!
//! let exp = jsonwebtoken::get_current_timestamp() + 300;
//! let claims = serde_json::json!({ "sub": "alice", "iss": "https://auth.example", "aud": "gateway", "exp": exp });
//! let token = encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))?;
//!
//! let req = Request::get("/").header("authorization", format!("Bearer {token}")).body(())?;
//! let res = server.clone().oneshot(req).await?;
//! assert_eq!(res.into_body().unwrap(), format!("Bearer {token}").as_str());
//!
//! // No token, or a bad one: 401, and the handler is not called.
//! let res = server.oneshot(Request::get("/").header("authorization", "Bearer x.y.z").body(())?).await?;
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! assert!(res.headers()["www-authenticate"].to_str()?.starts_with("Bearer error=\"invalid_token\""));
//! # Ok(())
//! # }
//! ```
//!
//! # Metrics
//!
//! With `service` the layer's name (default `"jwt"`):
//!
//! - `tower_mesh_jwt_validated_total{service}`: tokens accepted;
//! - `tower_mesh_jwt_rejected_total{service, reason}`: requests refused, by
//!   [reason](JwtError::reason) (`missing`, `expired`, `audience`,
//!   `algorithm`, `unknown_key`, …);
//! - `tower_mesh_jwt_jwks_fetches_total{service, outcome}`: JWKS fetches,
//!   `ok` or `error`;
//! - `tower_mesh_jwt_outbound_total{service, outcome}` (client side):
//!   outgoing requests by `attached`, `exchanged`, `exchange_failed`,
//!   `not_allowed` (token withheld), `no_token` (none current) or
//!   `caller_set` (the request had its own `Authorization`).
//!
//! Refusals are `debug` events with the reason; JWKS loads are `info`, failed
//! fetches `warn`; a withheld token is a `debug` event with the target.

mod allowlist;
mod claims;
mod client;
mod error;
mod future;
mod jwks;
mod jws;
mod key;
mod layer;
mod service;
mod token;
mod validate;

pub use allowlist::Allowlist;
pub use claims::Claims;
pub use client::{exchange_fn, ClientResponseFuture, ExchangeFn, JwtClient, JwtClientLayer, NoExchange, TokenExchange};
pub use error::{JwksError, JwtConfigError, JwtError};
pub use future::ResponseFuture;
pub use jsonwebtoken::Algorithm;
pub use jwks::Jwks;
pub use key::JwtKey;
#[allow(deprecated)]
pub use layer::JwtPropagationLayerBuilder;
pub use layer::{JwtPropagationBuilder, JwtPropagationLayer};
pub use service::JwtPropagation;
pub use token::{BearerToken, TokenScope};

#[cfg(test)]
mod tests;
