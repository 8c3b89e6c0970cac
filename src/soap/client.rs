//! The client side: [`SoapEnvelopeLayer`].

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::envelope::{Envelope, HeaderBlock, SoapLimits};
use super::error::SoapError;
use super::security::{UsernameToken, WsAddressing};
use super::version::SoapVersion;
use super::write::{bare_head, open_envelope, push_str, EnvelopeBody, Redacted};
use crate::deadline::{Deadline, DeadlineCarrier};
use crate::BoxError;

/// The `SOAPAction` header of SOAP 1.1.
pub const SOAP_ACTION: http::HeaderName = http::HeaderName::from_static("soapaction");

/// A SOAP call: the Body content (raw XML, or a serialized value), the action
/// and extra header blocks. Cheap to clone (the payload is shared), so retry
/// layers can resend it.
///
/// ```
/// use tower_mesh::soap::SoapRequest;
///
/// #[derive(serde::Serialize)]
/// struct Add { a: i32, b: i32 }
///
/// let raw = SoapRequest::new(r#"<m:Add xmlns:m="urn:calc"><m:a>1</m:a><m:b>2</m:b></m:Add>"#)
///     .action("urn:calc#Add");
/// let typed = SoapRequest::serialize("Add", &Add { a: 1, b: 2 }).unwrap();
/// assert_eq!(typed.payload(), "<Add><a>1</a><b>2</b></Add>");
/// assert_eq!(raw.soap_action(), Some("urn:calc#Add"));
/// ```
///
/// Its `Debug` output leaves out the content of a `Security` header block.
#[derive(Clone, Default)]
pub struct SoapRequest {
    action: Option<Cow<'static, str>>,
    payload: Bytes,
    headers: Vec<Bytes>,
    deadline: Option<Deadline>,
}

impl fmt::Debug for SoapRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<_> = self.headers.iter().map(|h| Redacted(h)).collect();
        f.debug_struct("SoapRequest")
            .field("action", &self.action)
            .field("payload", &Redacted(&self.payload))
            .field("headers", &headers)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// A `TimeoutLayer` (feature `timeout`) above the SOAP layer
/// attaches its deadline here; the HTTP request then carries it (as an
/// extension) to the layers below.
impl DeadlineCarrier for SoapRequest {
    fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }

    fn set_deadline(&mut self, deadline: Deadline) {
        self.deadline = Some(deadline);
    }
}

impl SoapRequest {
    /// A call whose Body content is `payload`, raw XML (well-formed, with its
    /// namespaces declared; it is sent as is).
    pub fn new(payload: impl Into<Bytes>) -> Self {
        SoapRequest { action: None, payload: payload.into(), headers: Vec::new(), deadline: None }
    }

    /// A call whose Body content is `value` serialized by quick-xml as the
    /// element `root`.
    pub fn serialize<T: serde::Serialize + ?Sized>(root: &str, value: &T) -> Result<Self, SoapError> {
        let mut out = String::new();
        quick_xml::se::to_writer_with_root(&mut out, root, value).map_err(|e| SoapError::Serialize(e.to_string()))?;
        Ok(Self::new(out))
    }

    /// The SOAP action (1.1 `SOAPAction` header, 1.2 `action` parameter, and
    /// `wsa:Action` with WS-Addressing).
    pub fn action(mut self, action: impl Into<Cow<'static, str>>) -> Self {
        self.action = Some(action.into());
        self
    }

    /// Add a header block: one raw XML element with its namespaces declared
    /// (the envelope prefix `soap` is bound, for `soap:mustUnderstand`).
    pub fn header(mut self, block: impl Into<Bytes>) -> Self {
        self.headers.push(block.into());
        self
    }

    /// The action.
    pub fn soap_action(&self) -> Option<&str> {
        self.action.as_deref()
    }

    /// The Body content.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
}

/// A successful SOAP response: the parsed envelope (its Body is a slice of
/// the response bytes) and the HTTP status and headers.
#[derive(Clone, Debug)]
pub struct SoapResponse {
    status: StatusCode,
    headers: HeaderMap,
    envelope: Envelope,
}

impl SoapResponse {
    /// The Body content as standalone XML (see [`Envelope::standalone_body`]):
    /// the namespace declarations it uses from the `Envelope` and `Body` are
    /// carried onto its elements, so any namespace-aware parser reads it on
    /// its own. A slice of the response without a copy when none is needed.
    pub fn body(&self) -> Bytes {
        self.envelope.standalone_body().clone()
    }

    /// The Body content as text (as [`body`](Self::body)).
    pub fn body_str(&self) -> &str {
        // Made of the UTF-8 message and, when it was copied, of UTF-8 declarations.
        std::str::from_utf8(self.envelope.standalone_body()).unwrap_or_default()
    }

    /// Deserialize the first Body element (see [`Envelope::deserialize`]).
    pub fn deserialize<'de, T: serde::Deserialize<'de>>(&'de self) -> Result<T, SoapError> {
        self.envelope.deserialize()
    }

    /// The header blocks of the response envelope.
    pub fn header_blocks(&self) -> &[HeaderBlock] {
        self.envelope.headers()
    }

    /// The parsed envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The HTTP headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The envelope.
    pub fn into_envelope(self) -> Envelope {
        self.envelope
    }
}

#[derive(Clone)]
struct Config {
    endpoint: Uri,
    endpoint_str: String,
    version: SoapVersion,
    token: Option<UsernameToken>,
    addressing: Option<WsAddressing>,
    headers: Vec<Bytes>,
    authorization: Option<HeaderValue>,
    limits: SoapLimits,
    name: Arc<str>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoapEnvelopeLayer")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint_str)
            .field("version", &self.version)
            .field("token", &self.token)
            .field("addressing", &self.addressing)
            .field("authorization", &self.authorization.as_ref().map(|_| "<redacted>"))
            .field("limits", &self.limits)
            .finish()
    }
}

/// Client layer: turns [`SoapRequest`]s into SOAP 1.1 / 1.2 HTTP POSTs to an
/// endpoint, and the responses into [`SoapResponse`]s or typed
/// [`SoapError`]s — a Fault (also one inside an HTTP 500) becomes
/// [`SoapError::Fault`].
///
/// The service it wraps is an HTTP client taking `http::Request<EnvelopeBody>`
/// (hyper's, or a tower stack around it). Put resilience layers *above* this
/// one with [`SoapClassifier`](super::SoapClassifier), so that server faults
/// open the breaker and are retried and client faults are not.
///
/// See the [module docs](super) for an example.
#[derive(Clone, Debug)]
pub struct SoapEnvelopeLayer {
    config: Arc<Config>,
}

impl SoapEnvelopeLayer {
    /// A SOAP 1.1 client for `endpoint`.
    pub fn new(endpoint: Uri) -> Self {
        let endpoint_str = endpoint.to_string();
        SoapEnvelopeLayer {
            config: Arc::new(Config {
                endpoint,
                endpoint_str,
                version: SoapVersion::V11,
                token: None,
                addressing: None,
                headers: Vec::new(),
                authorization: None,
                limits: SoapLimits::default(),
                name: "soap".into(),
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The SOAP version to speak (default 1.1).
    pub fn version(mut self, version: SoapVersion) -> Self {
        self.config().version = version;
        self
    }

    /// Send a WS-Security UsernameToken with every request.
    pub fn username_token(mut self, token: UsernameToken) -> Self {
        self.config().token = Some(token);
        self
    }

    /// Send WS-Addressing headers (`Action`, `MessageID`, `To`).
    pub fn addressing(mut self, addressing: WsAddressing) -> Self {
        self.config().addressing = Some(addressing);
        self
    }

    /// A raw header block sent with every request.
    pub fn header(mut self, block: impl Into<Bytes>) -> Self {
        self.config().headers.push(block.into());
        self
    }

    /// HTTP basic authentication for every request (e.g. the credentials of a
    /// [`WsdlUrl`](super::WsdlUrl)). Never logged.
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        let mut value = super::wsdl::basic_auth_value(user, password);
        value.set_sensitive(true);
        self.config().authorization = Some(value);
        self
    }

    /// Size and depth limits for responses (default 4 MiB, 64).
    pub fn limits(mut self, limits: SoapLimits) -> Self {
        self.config().limits = limits;
        self
    }

    /// The name used in logs and as the `service` label of the metrics
    /// (default `"soap"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        let name: String = name.into();
        self.config().name = name.into();
        self
    }

    /// The SOAP version spoken.
    pub fn soap_version(&self) -> SoapVersion {
        self.config.version
    }
}

impl<S> Layer<S> for SoapEnvelopeLayer {
    type Service = SoapClient<S>;
    fn layer(&self, inner: S) -> SoapClient<S> {
        SoapClient { inner, config: self.config.clone() }
    }
}

/// The service made by [`SoapEnvelopeLayer`].
#[derive(Clone, Debug)]
pub struct SoapClient<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> SoapClient<S> {
    /// The wrapped HTTP client.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

const V12_CONTENT_TYPE: &str = "application/soap+xml; charset=utf-8";

fn action_value(version: SoapVersion, action: Option<&str>) -> Result<HeaderValue, SoapError> {
    // The exact length: a String filled to its capacity becomes the header's
    // bytes without another allocation.
    let len = match (version, action) {
        (SoapVersion::V11, a) => a.map_or(0, str::len) + 2,
        (SoapVersion::V12, None) => V12_CONTENT_TYPE.len(),
        (SoapVersion::V12, Some(a)) => V12_CONTENT_TYPE.len() + "; action=\"".len() + a.len() + 1,
    };
    let mut v = String::with_capacity(len);
    let ok = action.is_none_or(|a| !a.contains('"'));
    match version {
        SoapVersion::V11 => {
            v.push('"');
            v.push_str(action.unwrap_or_default());
            v.push('"');
            if !ok {
                return Err(SoapError::InvalidHeader("SOAPAction"));
            }
            HeaderValue::try_from(v).map_err(|_| SoapError::InvalidHeader("SOAPAction"))
        }
        SoapVersion::V12 => {
            v.push_str(V12_CONTENT_TYPE);
            if let Some(a) = action {
                v.push_str("; action=\"");
                v.push_str(a);
                v.push('"');
            }
            if !ok {
                return Err(SoapError::InvalidHeader("Content-Type action"));
            }
            HeaderValue::try_from(v).map_err(|_| SoapError::InvalidHeader("Content-Type action"))
        }
    }
}

impl Config {
    fn build(&self, req: SoapRequest) -> Result<Request<EnvelopeBody>, SoapError> {
        let action = req.action.as_deref();
        let has_header =
            self.token.is_some() || self.addressing.is_some() || !self.headers.is_empty() || !req.headers.is_empty();
        let head = if has_header {
            let mut head = Vec::with_capacity(1024);
            open_envelope(self.version, &mut head);
            push_str(&mut head, "<soap:Header>");
            if let Some(token) = &self.token {
                token.write(self.version, &mut head).map_err(|e| SoapError::Transport(Box::new(e)))?;
            }
            if let Some(wsa) = &self.addressing {
                wsa.write(self.version, action, &self.endpoint_str, &mut head);
            }
            for block in self.headers.iter().chain(&req.headers) {
                head.extend_from_slice(block);
            }
            push_str(&mut head, "</soap:Header>");
            push_str(&mut head, "<soap:Body>");
            Bytes::from(head)
        } else {
            bare_head(self.version)
        };
        let body = EnvelopeBody::from_parts(head, req.payload, Bytes::from_static(b"</soap:Body></soap:Envelope>"));

        let mut http = Request::new(body);
        if let Some(deadline) = req.deadline {
            http.extensions_mut().insert(deadline);
        }
        *http.method_mut() = Method::POST;
        *http.uri_mut() = self.endpoint.clone();
        let headers = http.headers_mut();
        match self.version {
            SoapVersion::V11 => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/xml; charset=utf-8"));
                headers.insert(SOAP_ACTION, action_value(self.version, action)?);
            }
            SoapVersion::V12 => {
                headers.insert(CONTENT_TYPE, action_value(self.version, action)?);
            }
        }
        if let Some(auth) = &self.authorization {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        Ok(http)
    }
}

impl<S, B> Service<SoapRequest> for SoapClient<S>
where
    S: Service<Request<EnvelopeBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = SoapResponse;
    type Error = SoapError;
    type Future = ResponseFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SoapError>> {
        self.inner.poll_ready(cx).map_err(|e| SoapError::Transport(e.into()))
    }

    fn call(&mut self, req: SoapRequest) -> Self::Future {
        match self.config.build(req) {
            Ok(http) => {
                ResponseFuture { state: State::Calling { fut: self.inner.call(http) }, config: self.config.clone() }
            }
            Err(e) => ResponseFuture { state: State::Failed { err: Some(e) }, config: self.config.clone() },
        }
    }
}

pin_project! {
    /// Response future of [`SoapClient`].
    pub struct ResponseFuture<F, B>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: State<F, B>,
        config: Arc<Config>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        Calling { #[pin] fut: F },
        Reading { #[pin] body: Collect<Limited<B>>, status: StatusCode, headers: Option<HeaderMap> },
        Failed { err: Option<SoapError> },
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").field("service", &self.config.name).finish_non_exhaustive()
    }
}

pub(crate) fn body_error(e: BoxError, limit: usize) -> SoapError {
    if e.downcast_ref::<LengthLimitError>().is_some() {
        SoapError::TooLarge { limit }
    } else {
        SoapError::Body(e)
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<SoapResponse, SoapError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { fut } => {
                    let res = ready!(fut.poll(cx)).map_err(|e| SoapError::Transport(e.into()))?;
                    let limit = this.config.limits.body_limit();
                    let (parts, body) = res.into_parts();
                    if body.size_hint().lower() > limit as u64 {
                        return Poll::Ready(Err(SoapError::TooLarge { limit }));
                    }
                    let body = Limited::new(body, limit).collect();
                    this.state.set(State::Reading { body, status: parts.status, headers: Some(parts.headers) });
                }
                StateProj::Reading { body, status, headers } => {
                    let limit = this.config.limits.body_limit();
                    let bytes = ready!(body.poll(cx)).map_err(|e| body_error(e, limit))?.to_bytes();
                    let status = *status;
                    let headers = headers.take().unwrap_or_default();
                    return Poll::Ready(finish(this.config, status, headers, bytes));
                }
                StateProj::Failed { err } => {
                    return Poll::Ready(Err(err
                        .take()
                        .unwrap_or(SoapError::Structure("future polled after completion"))))
                }
            }
        }
    }
}

fn finish(config: &Config, status: StatusCode, headers: HeaderMap, bytes: Bytes) -> Result<SoapResponse, SoapError> {
    let envelope = match Envelope::parse(bytes, &config.limits) {
        Ok(env) => env,
        Err(e) if !status.is_success() && !matches!(e, SoapError::TooLarge { .. }) => {
            return Err(SoapError::Status(status));
        }
        Err(e) => return Err(e),
    };
    match envelope.into_result() {
        Err(SoapError::Fault(mut fault)) => {
            fault.http_status = Some(status);
            let code = fault.metric_code(fault.version);
            metrics::counter!("tower_mesh_soap_faults_total", "service" => config.name.to_string(), "side" => "client", "code" => code)
                .increment(1);
            tracing::debug!(service = &*config.name, code, status = status.as_u16(), "SOAP fault received");
            Err(SoapError::Fault(fault))
        }
        Err(e) => Err(e),
        Ok(envelope) if envelope.version() != config.version => {
            Err(SoapError::WrongVersion { expected: config.version, found: envelope.version() })
        }
        Ok(_) if !status.is_success() => Err(SoapError::Status(status)),
        Ok(envelope) => Ok(SoapResponse { status, headers, envelope }),
    }
}

#[cfg(test)]
pub(crate) fn action_value_for_test(version: SoapVersion, action: Option<&str>) -> Result<HeaderValue, SoapError> {
    action_value(version, action)
}
