//! The response future of [`MapServiceError`](super::MapServiceError).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::SystemTime;

use bytes::Buf;
use http::{HeaderMap, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;

use super::error::ServiceError;
use super::layer::Shared;
use crate::error::BoxError;

pin_project! {
    /// Response future of [`MapServiceError`](super::MapServiceError):
    /// waits for the response and, if it is an error, reads the start of its
    /// body into the [`ServiceError`]. Dropping it at any point drops the call
    /// or the body being read.
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
        shared: Arc<Shared>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        /// Waiting for the inner service.
        Called {
            #[pin]
            inner: F,
        },
        /// An error response: reading up to `excerpt_limit` bytes of its body.
        Reading {
            #[pin]
            body: B,
            status: StatusCode,
            headers: HeaderMap,
            excerpt: Vec<u8>,
        },
        /// The output was returned.
        Done,
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn new(inner: F, shared: Arc<Shared>) -> Self {
        ResponseFuture { state: State::Called { inner }, shared }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Reading { .. } => "reading error body",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture").field("state", &state).finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { inner } => {
                    let res = match ready!(inner.poll(cx)) {
                        Ok(res) => res,
                        Err(e) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(this.shared.fail(ServiceError::from_error(e))));
                        }
                    };
                    if !this.shared.is_error(&res) {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(res));
                    }
                    let (parts, body) = res.into_parts();
                    if this.shared.excerpt_limit == 0 || body.is_end_stream() {
                        let limit = this.shared.excerpt_limit;
                        let e =
                            ServiceError::from_response(parts.status, &parts.headers, &[], limit, SystemTime::now());
                        this.state.set(State::Done);
                        return Poll::Ready(Err(this.shared.fail(e)));
                    }
                    this.state.set(State::Reading {
                        body,
                        status: parts.status,
                        headers: parts.headers,
                        excerpt: Vec::new(),
                    });
                }
                StateProj::Reading { mut body, status, headers, excerpt } => {
                    let limit = this.shared.excerpt_limit;
                    while excerpt.len() < limit {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => {
                                if let Ok(mut data) = frame.into_data() {
                                    while data.has_remaining() && excerpt.len() < limit {
                                        let chunk = data.chunk();
                                        let n = chunk.len().min(limit - excerpt.len());
                                        excerpt.extend_from_slice(&chunk[..n]);
                                        data.advance(n);
                                    }
                                }
                            }
                            // A body that fails or ends early: the status is the
                            // error, keep what was read.
                            Some(Err(_)) | None => break,
                        }
                    }
                    let e = ServiceError::from_response(*status, headers, excerpt, limit, SystemTime::now());
                    this.state.set(State::Done);
                    return Poll::Ready(Err(this.shared.fail(e)));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}
