//! The server side: [`SoapServerLayer`].

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use tower_layer::Layer;
use tower_service::Service;

use super::client::SOAP_ACTION;
use super::envelope::SoapLimits;
use super::error::SoapError;
use super::fault::{QualifiedName, SoapFault};
use super::security::WSSE_NS;
use super::validator::UsernameTokenValidator;
use super::version::SoapVersion;
use super::write::EnvelopeBody;
use crate::BoxError;

#[cfg(doc)]
use super::{envelope::Envelope, validator::AuthenticatedUser};

mod future;

pub use self::future::ServerFuture;
use self::future::{fault_response, State};

/// The operation a SOAP request calls, put in the request's extensions by
/// [`SoapServerLayer`] for routing (next to the parsed [`Envelope`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoapOperation {
    version: SoapVersion,
    action: Option<String>,
    element: Option<QualifiedName>,
}

impl SoapOperation {
    /// The SOAP version of the request.
    pub fn version(&self) -> SoapVersion {
        self.version
    }

    /// The action: the 1.1 `SOAPAction` header or the 1.2 `action` media type
    /// parameter, without quotes (`None` when absent or empty).
    pub fn action(&self) -> Option<&str> {
        self.action.as_deref()
    }

    /// The first element of the Body.
    pub fn element(&self) -> Option<&QualifiedName> {
        self.element.as_ref()
    }

    /// The name to route on: the first Body element's local name, or the
    /// action when the Body is empty.
    pub fn name(&self) -> Option<&str> {
        self.element.as_ref().map(|e| e.local.as_str()).or(self.action.as_deref())
    }
}

/// Printable ASCII without quotes, at most 1024 bytes: what an action may be
/// before it reaches a handler or a log.
fn clean_action(raw: &[u8]) -> Option<String> {
    let raw = raw.trim_ascii();
    let raw = raw.strip_prefix(b"\"").and_then(|r| r.strip_suffix(b"\"")).unwrap_or(raw);
    if raw.is_empty() || raw.len() > 1024 || !raw.iter().all(|b| (0x21..0x7f).contains(b) && *b != b'"') {
        return None;
    }
    std::str::from_utf8(raw).ok().map(str::to_owned)
}

fn action_of(parts: &Parts, version: SoapVersion) -> Option<String> {
    match version {
        SoapVersion::V11 => parts.headers.get(SOAP_ACTION).and_then(|v| clean_action(v.as_bytes())),
        SoapVersion::V12 => {
            let ct = parts.headers.get(CONTENT_TYPE)?.as_bytes();
            ct.split(|b| *b == b';').skip(1).find_map(|param| {
                let param = param.trim_ascii();
                let (k, v) = param.split_at(param.iter().position(|b| *b == b'=')?);
                k.trim_ascii().eq_ignore_ascii_case(b"action").then(|| clean_action(&v[1..])).flatten()
            })
        }
    }
}

#[derive(Clone, Debug)]
struct Config {
    limits: SoapLimits,
    understood: Vec<QualifiedName>,
    name: Arc<str>,
    strict_content_type: bool,
    input_errors_are_client_faults: bool,
    validator: Option<UsernameTokenValidator>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: SoapLimits::default(),
            understood: Vec::new(),
            name: "soap".into(),
            strict_content_type: true,
            input_errors_are_client_faults: true,
            validator: None,
        }
    }
}

/// The SOAP version a media type is for: `text/xml` (1.1) or
/// `application/soap+xml` (1.2), parameters ignored; `None` for any other.
fn media_type_version(content_type: Option<&HeaderValue>) -> Option<SoapVersion> {
    let value = content_type?.as_bytes();
    let essence = value.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
    if essence.eq_ignore_ascii_case(b"text/xml") {
        Some(SoapVersion::V11)
    } else if essence.eq_ignore_ascii_case(b"application/soap+xml") {
        Some(SoapVersion::V12)
    } else {
        None
    }
}

/// The 415 answer to a request whose media type is not its SOAP version's.
fn unsupported_media_type(
    config: &Config,
    version: SoapVersion,
    found: Option<&HeaderValue>,
) -> Response<EnvelopeBody> {
    let expected = match version {
        SoapVersion::V11 => "text/xml",
        SoapVersion::V12 => "application/soap+xml",
    };
    let found = found.and_then(|v| v.to_str().ok()).unwrap_or("none");
    let found: String = found.chars().take(64).collect();
    tracing::debug!(service = &*config.name, content_type = %found, "SOAP request with a wrong media type");
    let fault = SoapFault::client(format!("unsupported media type `{found}`: SOAP {version} needs {expected}"));
    let mut res = fault_response(config, version, &fault, &[]);
    *res.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    res
}

/// Errors a handler meets reading the request it was given (e.g.
/// `env.deserialize()?`): the caller's input was bad.
fn is_input_error(e: &SoapError) -> bool {
    matches!(
        e,
        SoapError::Deserialize(_)
            | SoapError::Malformed(_)
            | SoapError::NotUtf8
            | SoapError::TooDeep { .. }
            | SoapError::TooLarge { .. }
            | SoapError::DocType
            | SoapError::UndefinedEntity(_)
    )
}

/// The fault answering a handler's error.
fn handler_fault(config: &Config, e: BoxError) -> SoapFault {
    match e.downcast::<SoapFault>() {
        Ok(f) => *f,
        Err(e) => match e.downcast::<SoapError>() {
            Ok(se) => match *se {
                SoapError::Fault(f) => *f,
                other if config.input_errors_are_client_faults && is_input_error(&other) => {
                    tracing::debug!(service = &*config.name, error = %other, "SOAP request refused by the handler");
                    SoapFault::client(other.to_string())
                }
                other => {
                    tracing::warn!(service = &*config.name, error = %other, "SOAP handler failed");
                    SoapFault::server("internal server error")
                }
            },
            Err(e) => {
                tracing::warn!(service = &*config.name, error = %e, "SOAP handler failed");
                SoapFault::server("internal server error")
            }
        },
    }
}

/// Server layer: parses SOAP 1.1 / 1.2 request envelopes for an axum or
/// hyper handler, and wraps its answers in envelopes of the same version.
///
/// For each request it
/// 1. reads the body (at most the [limit](SoapLimits::max_body)) and parses
///    the envelope safely — a bad one is answered with a `Client`/`Sender`
///    fault, an unknown envelope namespace with a `VersionMismatch` fault;
/// 2. answers a `MustUnderstand` fault (SOAP 1.2: with `NotUnderstood` header
///    blocks) when a header block for this node has `mustUnderstand` set and is
///    not one declared with [`understands`](Self::understands);
/// 3. calls the handler with the Body content as an `http::Request<Full<Bytes>>`
///    (a slice of the request bytes, no copy) and the [`SoapOperation`] and
///    [`Envelope`] in its extensions;
/// 4. wraps the handler's response body as the Body of the response envelope,
///    or turns its error into a Fault: a [`SoapFault`] (or
///    [`SoapError::Fault`]) as is; a [`SoapError`] from reading the request
///    (`env.deserialize()?`: [`Deserialize`](SoapError::Deserialize),
///    [`Malformed`](SoapError::Malformed), …) as a `Client`/`Sender` fault
///    quoting it — the caller's input was bad (opt out with
///    [`input_errors_as_client_faults(false)`](Self::input_errors_as_client_faults));
///    anything else as a `Server`/`Receiver` fault that does not reveal the
///    error (which is logged). Handlers that cannot fail (axum's) answer a
///    fault with [`SoapFault::into_response`].
///
/// Before reading the body it refuses a request whose media type is not
/// SOAP's with `415 Unsupported Media Type` (and a `Client`/`Sender` fault):
/// SOAP 1.1 is sent as `text/xml`, SOAP 1.2 as `application/soap+xml`; an
/// envelope of the other version than its media type says is refused the
/// same way. [`lenient_content_type`](Self::lenient_content_type) accepts
/// any media type (the version is then the envelope's).
///
/// # WS-Security
///
/// A header block is only accepted as understood when something checks it.
/// With [`username_token`](Self::username_token), the layer understands
/// `wsse:Security` and checks every request's UsernameToken with a
/// [`UsernameTokenValidator`] before the handler is called: a refused
/// request is answered with `wsse:FailedAuthentication` /
/// `wsse:InvalidSecurity`, an accepted one reaches the handler with the
/// [`AuthenticatedUser`] in its extensions. Declaring `wsse:Security` with
/// [`understands`](Self::understands) instead accepts *any* token (the
/// handler must check it) and logs a warning.
///
/// The service never fails, as axum's `Router::layer` / `route_service` require.
#[derive(Clone, Debug)]
pub struct SoapServerLayer {
    config: Arc<Config>,
}

impl Default for SoapServerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl SoapServerLayer {
    /// A server layer with the default limits that understands no header blocks.
    pub fn new() -> Self {
        SoapServerLayer { config: Arc::new(Config::default()) }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Declare a header block the handler processes, so `mustUnderstand`
    /// blocks of that name are accepted.
    ///
    /// For `wsse:Security` use [`username_token`](Self::username_token):
    /// declared here, any token is accepted unless the handler checks it
    /// (a warning is logged).
    pub fn understands(mut self, header: QualifiedName) -> Self {
        if header.is(WSSE_NS, "Security") && self.config.validator.is_none() {
            tracing::warn!(
                "SOAP server declares wsse:Security understood without a UsernameTokenValidator: \
                 any token is accepted unless the handler checks it"
            );
        }
        self.config().understood.push(header);
        self
    }

    /// Check the WS-Security UsernameToken of every request with
    /// `validator` before calling the handler (see [WS-Security](Self#ws-security));
    /// `wsse:Security` becomes understood.
    pub fn username_token(mut self, validator: UsernameTokenValidator) -> Self {
        let config = self.config();
        config.validator = Some(validator);
        let security = QualifiedName::new(WSSE_NS, "Security");
        if !config.understood.contains(&security) {
            config.understood.push(security);
        }
        self
    }

    /// Accept requests of any media type (default: refuse with `415` a
    /// media type other than the SOAP version's, see [`SoapServerLayer`]).
    pub fn lenient_content_type(mut self) -> Self {
        self.config().strict_content_type = false;
        self
    }

    /// Whether a [`SoapError`] from reading the request in the handler (e.g.
    /// [`SoapError::Deserialize`]) is answered with a `Client`/`Sender`
    /// fault quoting it (default `true`) or, with `false`, with the
    /// `Server`/`Receiver` fault of any other handler error.
    pub fn input_errors_as_client_faults(mut self, client: bool) -> Self {
        self.config().input_errors_are_client_faults = client;
        self
    }

    /// Size and depth limits for requests (default 4 MiB, 64).
    pub fn limits(mut self, limits: SoapLimits) -> Self {
        self.config().limits = limits;
        self
    }

    /// The name used in logs and as the `service` label of the metrics.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        let name: String = name.into();
        self.config().name = name.into();
        self
    }
}

impl<S> Layer<S> for SoapServerLayer {
    type Service = SoapServer<S>;
    fn layer(&self, inner: S) -> SoapServer<S> {
        SoapServer { inner, config: self.config.clone(), ready_error: None }
    }
}

/// The service made by [`SoapServerLayer`].
pub struct SoapServer<S> {
    inner: S,
    config: Arc<Config>,
    ready_error: Option<BoxError>,
}

impl<S: Clone> Clone for SoapServer<S> {
    fn clone(&self) -> Self {
        SoapServer { inner: self.inner.clone(), config: self.config.clone(), ready_error: None }
    }
}

impl<S: fmt::Debug> fmt::Debug for SoapServer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoapServer").field("inner", &self.inner).field("config", &self.config).finish()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for SoapServer<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    ReqB: Body,
    ReqB::Error: Into<BoxError>,
    ResB: Body,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<EnvelopeBody>;
    type Error = Infallible;
    type Future = ServerFuture<S, ReqB, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.ready_error.is_none() {
            if let Err(e) = ready!(self.inner.poll_ready(cx)) {
                // Answered with a Receiver fault by the next call.
                self.ready_error = Some(e.into());
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let version =
            req.headers().get(CONTENT_TYPE).map_or(SoapVersion::V11, |v| SoapVersion::from_content_type(v.as_bytes()));
        let config = self.config.clone();
        if config.strict_content_type && media_type_version(req.headers().get(CONTENT_TYPE)).is_none() {
            let res = unsupported_media_type(&config, version, req.headers().get(CONTENT_TYPE));
            return ServerFuture { state: State::Done { res: Some(res) } };
        }
        if let Some(e) = self.ready_error.take() {
            tracing::warn!(service = &*config.name, error = %e, "SOAP handler not ready");
            let fault = SoapFault::server("service unavailable");
            return ServerFuture { state: State::Done { res: Some(fault_response(&config, version, &fault, &[])) } };
        }
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        let limit = config.limits.body_limit();
        if body.size_hint().lower() > limit as u64 {
            let fault = SoapFault::client(SoapError::TooLarge { limit }.to_string());
            let mut res = fault_response(&config, version, &fault, &[]);
            *res.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return ServerFuture { state: State::Done { res: Some(res) } };
        }
        ServerFuture {
            state: State::Reading {
                body: Limited::new(body, limit).collect(),
                parts: Some(parts),
                inner: Some(inner),
                config,
                version,
            },
        }
    }
}
