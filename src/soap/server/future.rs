//! The response future of [`SoapServer`](super::SoapServer).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Full, Limited};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{action_of, handler_fault, media_type_version, unsupported_media_type, Config, SoapOperation};
use crate::soap::client::body_error;
use crate::soap::envelope::Envelope;
use crate::soap::error::SoapError;
use crate::soap::fault::{FaultCode, QualifiedName, SoapFault};
use crate::soap::validator::{AuthenticatedUser, BoxFuture};
use crate::soap::version::SoapVersion;
use crate::soap::write::{escape_into, push_str, EnvelopeBody};
use crate::BoxError;

pin_project! {
    /// Response future of [`SoapServer`].
    pub struct ServerFuture<S, ReqB, ResB>
    where
        S: Service<Request<Full<Bytes>>>,
        ReqB: Body,
        ReqB::Error: Into<BoxError>,
        ResB: Body,
        ResB::Error: Into<BoxError>,
        ResB::Error: Into<BoxError>,
    {
        #[pin]
        pub(super) state: State<S, ReqB, ResB>,
    }
}

pin_project! {
    #[project = StateProj]
    pub(super) enum State<S, ReqB, ResB>
    where
        S: Service<Request<Full<Bytes>>>,
        ReqB: Body,
        ReqB::Error: Into<BoxError>,
        ResB: Body,
        ResB::Error: Into<BoxError>,
        ResB::Error: Into<BoxError>,
    {
        Reading { #[pin] body: Collect<Limited<ReqB>>, parts: Option<Parts>, inner: Option<S>, config: Arc<Config>, version: SoapVersion },
        Validating { fut: BoxFuture<Result<AuthenticatedUser, SoapFault>>, parts: Option<Parts>, inner: Option<S>, body: Bytes, config: Arc<Config>, version: SoapVersion },
        Calling { #[pin] fut: S::Future, config: Arc<Config>, version: SoapVersion },
        Writing { #[pin] body: Collect<Limited<ResB>>, parts: Option<http::response::Parts>, config: Arc<Config>, version: SoapVersion },
        Done { res: Option<Response<EnvelopeBody>> },
    }
}

impl<S, ReqB, ResB> fmt::Debug for ServerFuture<S, ReqB, ResB>
where
    S: Service<Request<Full<Bytes>>>,
    ReqB: Body,
    ReqB::Error: Into<BoxError>,
    ResB: Body,
    ResB::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerFuture").finish_non_exhaustive()
    }
}

pub(super) fn count_fault(config: &Config, version: SoapVersion, fault: &SoapFault) {
    let code = fault.metric_code(version);
    metrics::counter!("tower_mesh_soap_faults_total", "service" => config.name.to_string(), "side" => "server", "code" => code)
        .increment(1);
}

pub(super) fn fault_response(
    config: &Config,
    version: SoapVersion,
    fault: &SoapFault,
    headers: &[Bytes],
) -> Response<EnvelopeBody> {
    count_fault(config, version, fault);
    tracing::debug!(
        service = &*config.name,
        code = fault.metric_code(version),
        reason = fault.reason(),
        "answering with a SOAP fault"
    );
    let mut res = Response::new(EnvelopeBody::fault_with_headers(version, headers, fault));
    *res.status_mut() = fault.status_for(version);
    res.headers_mut().insert(CONTENT_TYPE, content_type(version));
    res
}

pub(super) fn content_type(version: SoapVersion) -> HeaderValue {
    match version {
        SoapVersion::V11 => HeaderValue::from_static("text/xml; charset=utf-8"),
        SoapVersion::V12 => HeaderValue::from_static("application/soap+xml; charset=utf-8"),
    }
}

/// The fault answering a request that could not be parsed.
pub(super) fn parse_fault(err: &SoapError) -> (SoapVersion, SoapFault) {
    match err {
        SoapError::VersionMismatch { .. } => (
            SoapVersion::V11,
            SoapFault::new(FaultCode::VersionMismatch, "the envelope namespace is not SOAP 1.1 or 1.2"),
        ),
        other => (SoapVersion::V11, SoapFault::client(other.to_string())),
    }
}

/// `NotUnderstood` header blocks (SOAP 1.2) for `names`.
pub(super) fn not_understood(names: &[&QualifiedName]) -> Vec<Bytes> {
    names
        .iter()
        .map(|n| {
            let mut out = Vec::with_capacity(128);
            push_str(&mut out, "<soap:NotUnderstood qname=\"");
            match &n.namespace {
                Some(ns) => {
                    push_str(&mut out, "nu:");
                    escape_into(&n.local, &mut out);
                    push_str(&mut out, "\" xmlns:nu=\"");
                    escape_into(ns, &mut out);
                }
                None => escape_into(&n.local, &mut out),
            }
            push_str(&mut out, "\"/>");
            Bytes::from(out)
        })
        .collect()
}

/// Check the request whose envelope was read (or could not be): the
/// envelope, with the [`SoapOperation`] it calls put in `parts`, or the
/// fault response answering it (boxed: an error path only).
pub(super) fn check_request(
    config: &Config,
    hint: SoapVersion,
    parts: &mut Parts,
    envelope: Result<Envelope, SoapError>,
) -> Result<Envelope, Box<Response<EnvelopeBody>>> {
    let envelope = match envelope {
        Ok(env) => env,
        Err(e) => {
            let (v, mut fault) = parse_fault(&e);
            let v = if fault.is_version_mismatch() { v } else { hint };
            fault.version = v;
            let mut res = fault_response(config, v, &fault, &[]);
            if matches!(e, SoapError::TooLarge { .. }) {
                *res.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            }
            return Err(Box::new(res));
        }
    };
    let version = envelope.version();
    if config.strict_content_type && media_type_version(parts.headers.get(CONTENT_TYPE)) != Some(version) {
        return Err(Box::new(unsupported_media_type(config, version, parts.headers.get(CONTENT_TYPE))));
    }
    let missing: Vec<&QualifiedName> = envelope
        .headers()
        .iter()
        .filter(|h| h.must_understand() && h.targets_ultimate_receiver())
        .map(|h| h.name())
        .filter(|n| !config.understood.contains(n))
        .collect();
    if !missing.is_empty() {
        let reason = format!("header block {} not understood", missing[0]);
        let fault = SoapFault::new(FaultCode::MustUnderstand, reason);
        let blocks = if version == SoapVersion::V12 { not_understood(&missing) } else { Vec::new() };
        return Err(Box::new(fault_response(config, version, &fault, &blocks)));
    }
    let op = SoapOperation { version, action: action_of(parts, version), element: envelope.body_element().cloned() };
    parts.extensions.insert(op);
    Ok(envelope)
}

/// The fault answering a request the server failed to serve.
pub(super) fn internal_error(config: &Config, version: SoapVersion) -> Response<EnvelopeBody> {
    fault_response(config, version, &SoapFault::server("internal error"), &[])
}

/// The response answering the handler's response `parts`, whose body was read
/// as `read`: the same with the body in a SOAP envelope, or a fault.
pub(super) fn written(
    config: &Config,
    version: SoapVersion,
    read: Result<Bytes, BoxError>,
    parts: Option<http::response::Parts>,
) -> Response<EnvelopeBody> {
    let (bytes, mut parts) = match (read, parts) {
        (Ok(bytes), Some(p)) => (bytes, p),
        (Err(e), _) => {
            let e = body_error(e, config.limits.body_limit());
            tracing::warn!(service = &*config.name, error = %e, "reading the SOAP handler's response failed");
            let fault = SoapFault::server("internal server error");
            return fault_response(config, version, &fault, &[]);
        }
        (Ok(_), None) => {
            let fault = SoapFault::server("internal server error");
            return fault_response(config, version, &fault, &[]);
        }
    };
    parts.headers.insert(CONTENT_TYPE, content_type(version));
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let body = EnvelopeBody::new(version, &[], bytes);
    Response::from_parts(parts, body)
}

impl<S, ReqB, ResB> Future for ServerFuture<S, ReqB, ResB>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ReqB: Body,
    ReqB::Error: Into<BoxError>,
    ResB: Body,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<EnvelopeBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Reading { body, parts, inner, config, version } => {
                    let config = config.clone();
                    let hint = *version;
                    let limit = config.limits.body_limit();
                    let read = ready!(body.poll(cx)).map(|c| c.to_bytes()).map_err(|e| body_error(e, limit));
                    let (Some(mut parts), Some(mut inner)) = (parts.take(), inner.take()) else {
                        return Poll::Ready(Ok(internal_error(&config, hint)));
                    };
                    let envelope = read.and_then(|bytes| Envelope::parse(bytes, &config.limits));
                    let envelope = match check_request(&config, hint, &mut parts, envelope) {
                        Ok(envelope) => envelope,
                        Err(res) => return Poll::Ready(Ok(*res)),
                    };
                    let version = envelope.version();
                    let body = envelope.body();
                    if let Some(validator) = &config.validator {
                        let fut = validator.validate_as(&envelope, config.name.clone());
                        parts.extensions.insert(envelope);
                        this.state.set(State::Validating {
                            fut,
                            parts: Some(parts),
                            inner: Some(inner),
                            body,
                            config,
                            version,
                        });
                        continue;
                    }
                    parts.extensions.insert(envelope);
                    let fut = inner.call(Request::from_parts(parts, Full::new(body)));
                    this.state.set(State::Calling { fut, config, version });
                }
                StateProj::Validating { fut, parts, inner, body, config, version } => {
                    let checked = ready!(fut.as_mut().poll(cx));
                    let (config, version) = (config.clone(), *version);
                    let (Some(mut parts), Some(mut inner)) = (parts.take(), inner.take()) else {
                        return Poll::Ready(Ok(internal_error(&config, version)));
                    };
                    match checked {
                        Ok(user) => {
                            parts.extensions.insert(user);
                            let fut = inner.call(Request::from_parts(parts, Full::new(std::mem::take(body))));
                            this.state.set(State::Calling { fut, config, version });
                        }
                        Err(fault) => return Poll::Ready(Ok(fault_response(&config, version, &fault, &[]))),
                    }
                }
                StateProj::Calling { fut, config, version } => {
                    let config = config.clone();
                    let version = *version;
                    match ready!(fut.poll(cx)) {
                        Ok(mut res) => {
                            // A handler that cannot return an error (axum) answers a fault this way.
                            if let Some(fault) = res.extensions_mut().remove::<SoapFault>() {
                                return Poll::Ready(Ok(fault_response(&config, version, &fault, &[])));
                            }
                            let (parts, body) = res.into_parts();
                            let body = Limited::new(body, config.limits.body_limit()).collect();
                            this.state.set(State::Writing { body, parts: Some(parts), config, version });
                        }
                        Err(e) => {
                            let fault = handler_fault(&config, e.into());
                            return Poll::Ready(Ok(fault_response(&config, version, &fault, &[])));
                        }
                    }
                }
                StateProj::Writing { body, parts, config, version } => {
                    let read = ready!(body.poll(cx)).map(|c| c.to_bytes());
                    return Poll::Ready(Ok(written(config, *version, read, parts.take())));
                }
                StateProj::Done { res } => {
                    let res = res.take().unwrap_or_else(|| internal_error(&Config::default(), SoapVersion::V11));
                    return Poll::Ready(Ok(res));
                }
            }
        }
    }
}
