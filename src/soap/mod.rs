//! SOAP 1.1 / 1.2 for tower: envelopes, typed Faults, WS-Security,
//! WS-Addressing and WSDL, on the client and the server side.
//!
//! - **Client** — [`SoapEnvelopeLayer`] turns a [`SoapRequest`] (a raw XML
//!   Body, or any `serde::Serialize` through quick-xml) into an HTTP POST with
//!   the version's content type (1.1: `text/xml` and `SOAPAction`; 1.2:
//!   `application/soap+xml; action="…"`), optional header blocks, a
//!   WS-Security [`UsernameToken`] (PasswordText or PasswordDigest, fresh nonce
//!   and timestamp per request) and [`WsAddressing`] headers (a fresh
//!   `MessageID` per message; with the `correlation-id` feature the
//!   correlation id in scope in its own `CorrelationId` header block). The answer
//!   is a [`SoapResponse`] whose Body is a zero-copy slice of the response
//!   bytes (or deserialized into your type), or a [`SoapError`]; a Fault —
//!   also one inside an HTTP 500 — is a typed [`SoapFault`] with
//!   [`is_client`](SoapFault::is_client), [`is_server`](SoapFault::is_server),
//!   [`is_version_mismatch`](SoapFault::is_version_mismatch) and
//!   [`is_must_understand`](SoapFault::is_must_understand).
//! - **Classification** — [`SoapClassifier`] implements
//!   [`Classify`](crate::classify::Classify): server faults (and transport
//!   errors) are failures, client faults are not, so a circuit breaker and a
//!   retry layer above the SOAP layer open and retry for the right reasons.
//! - **Server** — [`SoapServerLayer`] around an axum or hyper handler refuses
//!   a media type other than the SOAP version's with `415`, parses the
//!   request envelope, refuses unknown `mustUnderstand` header blocks with a
//!   `MustUnderstand` fault, gives the handler the Body and the
//!   [`SoapOperation`] (SOAPAction or first Body element) for routing, and
//!   turns its errors into Faults of the request's SOAP version (bad input
//!   the handler meets, e.g. `env.deserialize()?`, as a `Client`/`Sender`
//!   fault; its own failures as a `Server`/`Receiver` fault).
//! - **Server-side WS-Security** — [`UsernameTokenValidator`], given to
//!   [`SoapServerLayer::username_token`], checks PasswordText and
//!   PasswordDigest against your [`PasswordLookup`] in constant time, refuses
//!   a `Created` time outside ±5 minutes and a replayed nonce
//!   ([`NonceStore`]: in memory, bounded, or shared such as Redis), and
//!   answers `wsse:FailedAuthentication` / `wsse:InvalidSecurity` faults
//!   ([`SoapFault::wsse`]), which [`SoapClassifier`] counts as client faults
//!   in both SOAP versions.
//! - **WSDL** — [`Wsdl::parse`] / [`Wsdl::fetch`] list services, ports,
//!   addresses and operations with their `soapAction` and messages (SOAP 1.1
//!   and 1.2 bindings). `fetch` takes the same HTTP client as the SOAP layer
//!   and follows `wsdl:import`s (relative or absolute, bounded in depth,
//!   count and total size, each document read once). A [`WsdlUrl`] with credentials
//!   (`https://user:pass@host/…`) fetches with basic auth and never shows the
//!   password.
//! - **Safety** — every message read (both sides, and WSDLs) refuses DOCTYPEs,
//!   expands no entity (XXE, billion laughs), is bounded in size (4 MiB by
//!   default) and nesting depth (64), and malformed XML or a wrong
//!   namespace is a typed [`SoapError`], never a panic. An envelope is also
//!   bounded in namespace declarations in scope (128, as quick-xml's own
//!   namespace reader), attributes per start tag (256) and header blocks
//!   (256) ([`SoapLimits`]); prefixes resolve through a hashed scope, so
//!   within the limits any message parses in time linear in its size.
//! - **Encodings** — UTF-8, with or without a byte order mark (as .NET and
//!   Java stacks send), and UTF-16 LE/BE (WS-I Basic Profile R4003; with a
//!   byte order mark, or without one when the message starts with `<`),
//!   transcoded to UTF-8 once read: the size limit counts the bytes
//!   received. Slices are of the message as parsed ([`Envelope::message`]).
//! - **Standalone fragments** — a fault's [`detail`](SoapFault::detail), a
//!   [`HeaderBlock::raw`] and [`SoapResponse::body`] carry the namespace
//!   declarations they use from their ancestors (the `Envelope`, `Header`,
//!   `Body`, `Fault`…) on their top-level elements, so each parses on its own
//!   with any namespace-aware parser; they stay slices of the message, without
//!   a copy, when nothing is to be added. [`Envelope::body`] is the plain
//!   slice ([`Envelope::standalone_body`] the standalone one).
//! - **One XML reader** — the whole message is read with quick-xml's
//!   reader, the content passed on as the Body slice (and a header block's
//!   content) too: its events are dropped after the checks above (depth,
//!   references, no DOCTYPE), quick-xml checking the markup itself (end tags
//!   matching their start tags, closed comments, CDATA sections and tags).
//!
//! # Metrics
//!
//! `tower_mesh_soap_faults_total{service, side, code}` counts faults received
//! (`side="client"`) and sent (`side="server"`); `code` is the fault code's
//! local name (`Client`, `Sender`, `Server`, `Receiver`, `MustUnderstand`, …).
//! `tower_mesh_soap_username_token_total{service, outcome}` counts the
//! UsernameTokens checked on the server (`authenticated`,
//! `failed_authentication`, `invalid_security`, `expired`, `replay`,
//! `store_error`).
//!
//! # Secrets
//!
//! The `Debug` output of [`UsernameToken`], [`SoapRequest`],
//! [`EnvelopeBody`], [`Envelope`] and [`HeaderBlock`] leaves out the content
//! of `Security` header blocks; [`WsdlUrl`] never shows its password.
//!
//! # Example
//!
//! A client stack calling a SOAP service — here our own server layer, in
//! memory; in production the innermost service is an HTTP client such as
//! hyper-util's `Client<_, EnvelopeBody>`:
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{BoxError, ServiceBuilder, ServiceExt};
//! use tower_mesh::soap::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // The service: routes on the operation, answers with a Body or a Fault.
//! let server = ServiceBuilder::new()
//!     // Checks the UsernameToken (digest or text, ±5 min, no replay) before the
//!     // handler runs; never just declare wsse:Security understood.
//!     .layer(SoapServerLayer::new().username_token(UsernameTokenValidator::new(|user: &str| {
//!         (user == "alice").then(|| "s3cret".to_owned())
//!     })))
//!     .service_fn(|req: http::Request<Full<Bytes>>| async move {
//!         let op = req.extensions().get::<SoapOperation>().unwrap();
//!         match op.name() {
//!             Some("GetPrice") => Ok(http::Response::new(Full::new(Bytes::from_static(
//!                 b"<m:GetPriceResponse xmlns:m=\"urn:shop\"><m:price>1.90</m:price></m:GetPriceResponse>",
//!             )))),
//!             _ => Err(BoxError::from(SoapFault::client("unknown operation"))),
//!         }
//!     });
//!
//! // The client: SOAP 1.2 with a UsernameToken, over the "network".
//! let client = ServiceBuilder::new()
//!     .layer(
//!         SoapEnvelopeLayer::new("http://127.0.0.1:8080/shop".parse().unwrap())
//!             .version(SoapVersion::V12)
//!             .username_token(UsernameToken::digest("alice", "s3cret")),
//!     )
//!     .service_fn(move |req: http::Request<EnvelopeBody>| server.clone().oneshot(req));
//!
//! let call = SoapRequest::new(r#"<m:GetPrice xmlns:m="urn:shop"><m:item>apple</m:item></m:GetPrice>"#)
//!     .action("urn:shop#GetPrice");
//! let res = client.clone().oneshot(call).await.unwrap();
//! #[derive(serde::Deserialize)]
//! struct Price { price: f64 }
//! assert_eq!(res.deserialize::<Price>().unwrap().price, 1.90);
//!
//! let err = client.oneshot(SoapRequest::new("<m:Refund xmlns:m=\"urn:shop\"/>")).await.unwrap_err();
//! let fault = err.fault().unwrap();
//! assert!(fault.is_client() && fault.version() == SoapVersion::V12);
//! assert_eq!(fault.http_status(), Some(http::StatusCode::BAD_REQUEST));
//! # }
//! ```
//!
//! With the resilience layers, put them above the SOAP layer with
//! [`SoapClassifier`]: a `Server` fault is retried and counts towards the
//! breaker, a `Client` fault is returned at once (see also
//! `examples/soap_client.rs`):
//!
//! ```
//! # #[cfg(all(feature = "retry", feature = "circuit-breaker"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_mesh::circuit_breaker::CircuitBreakerLayer;
//! use tower_mesh::retry::{Backoff, RetryLayer};
//! use tower_mesh::soap::*;
//!
//! let attempts = Arc::new(AtomicUsize::new(0));
//! let seen = attempts.clone();
//! // A flaky service: two Server faults, then an answer.
//! let server = ServiceBuilder::new().layer(SoapServerLayer::new()).service_fn(
//!     move |_req: http::Request<http_body_util::Full<bytes::Bytes>>| {
//!         let n = seen.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             if n < 2 {
//!                 Err(tower::BoxError::from(SoapFault::server("database busy")))
//!             } else {
//!                 Ok(http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"<ok/>"))))
//!             }
//!         }
//!     },
//! );
//! let client = ServiceBuilder::new()
//!     .layer(
//!         RetryLayer::builder()
//!             .max_retries(3)
//!             .backoff(Backoff::constant(Duration::from_millis(1)))
//!             .classifier(SoapClassifier::new())
//!             .build()
//!             .unwrap(),
//!     )
//!     .layer(CircuitBreakerLayer::builder().classifier(SoapClassifier::new()).build().unwrap())
//!     .layer(SoapEnvelopeLayer::new("http://127.0.0.1:8080/".parse().unwrap()))
//!     .service_fn(move |req: http::Request<EnvelopeBody>| server.clone().oneshot(req));
//!
//! let res = client.oneshot(SoapRequest::new("<m:Ping xmlns:m=\"urn:m\"/>")).await.unwrap();
//! assert_eq!(res.body_str(), "<ok/>");
//! assert_eq!(attempts.load(Ordering::SeqCst), 3);
//! # }
//! # #[cfg(not(all(feature = "retry", feature = "circuit-breaker")))]
//! # fn main() {}
//! ```

mod classify;
mod client;
mod envelope;
mod error;
mod fault;
mod security;
mod server;
mod skip;
mod validator;
mod version;
mod write;
mod wsdl;

pub use classify::{SoapClassifier, SERVER_FAULT};
pub use client::{ResponseFuture, SoapClient, SoapEnvelopeLayer, SoapRequest, SoapResponse, SOAP_ACTION};
pub use envelope::{
    Envelope, HeaderBlock, SoapLimits, DEFAULT_MAX_ATTRIBUTES, DEFAULT_MAX_BODY, DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_HEADER_BLOCKS, DEFAULT_MAX_NAMESPACES,
};
pub use error::{SoapError, XmlError};
pub use fault::{FaultCode, QualifiedName, SoapFault, WsseFault};
pub use security::{PasswordType, UsernameToken, WsAddressing, CORRELATION_NS, WSA_NS, WSSE_NS, WSU_NS};
pub use server::{ServerFuture, SoapOperation, SoapServer, SoapServerLayer};
pub use validator::{
    AuthenticatedUser, BoxFuture, MemoryNonceStore, NonceStore, PasswordLookup, UsernameTokenValidator,
    DEFAULT_CREATED_WINDOW, DEFAULT_NONCE_CAPACITY,
};
pub use version::{SoapVersion, SOAP11_ENV_NS, SOAP12_ENV_NS};
pub use write::EnvelopeBody;
pub use wsdl::{
    Wsdl, WsdlAbstractOperation, WsdlBinding, WsdlBindingOperation, WsdlImport, WsdlOperation, WsdlPort, WsdlPortType,
    WsdlService, WsdlUrl, WSDL_MAX_DOCUMENTS, WSDL_MAX_IMPORT_DEPTH, WSDL_NS, WSDL_SOAP11_NS, WSDL_SOAP12_NS,
};

#[cfg(test)]
mod tests;
