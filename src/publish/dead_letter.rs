//! Dead-lettering: an event whose publish finally failed goes, with the
//! reason, to a dead-letter target.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::event::{Event, MAX_ATTRIBUTE_LEN};
use crate::error::BoxError;

/// Extension attribute with the failure reason on a dead-lettered event.
pub const REASON_ATTRIBUTE: &str = "deadletterreason";
/// Extension attribute with the [name](DeadLetterLayer::name) of the layer
/// that dead-lettered the event.
pub const SERVICE_ATTRIBUTE: &str = "deadletterservice";

/// Sends events whose publish failed to a dead-letter target.
///
/// Put it **above** the retry layer: when the call still fails after the
/// last retry, the layer publishes the same event (same id, plus the
/// extension attributes `deadletterreason` — the error, as text — and
/// `deadletterservice`) through `target`, any `Service<Event>` (typically a
/// publisher for a dead-letter exchange, stream or topic, possibly on another
/// broker), and reports it: the call fails with [`DeadLettered`], whose
/// [`source`](std::error::Error::source) is the original error, a `warn`
/// tracing event is emitted and
/// `tower_mesh_dead_letter_total{service, outcome}` counted (`outcome` is
/// `published` or `failed`, when the target failed too).
///
/// ```
/// use std::convert::Infallible;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_mesh::publish::{DeadLetterLayer, DeadLettered, Event};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (tx, mut dead) = tokio::sync::mpsc::unbounded_channel();
/// let dlq = service_fn(move |e: Event| {
///     let tx = tx.clone();
///     async move { tx.send(e).unwrap(); Ok::<_, Infallible>(()) }
/// });
/// let svc = ServiceBuilder::new()
///     .layer(DeadLetterLayer::new(dlq).name("orders"))
///     // .layer(retry) ...
///     .service_fn(|_e: Event| async { Err::<(), _>("broker said no") });
///
/// let event = Event::builder("/orders", "order.created").build().unwrap();
/// let err = svc.oneshot(event.clone()).await.unwrap_err();
/// let report = err.downcast_ref::<DeadLettered>().unwrap();
/// assert!(report.published());
/// let dl = dead.recv().await.unwrap();
/// assert_eq!(dl.id(), event.id());
/// assert_eq!(dl.extension("deadletterreason"), Some("broker said no"));
/// # }
/// ```
#[derive(Clone)]
pub struct DeadLetterLayer<T> {
    target: T,
    name: Arc<str>,
}

impl<T> fmt::Debug for DeadLetterLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterLayer").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<T> DeadLetterLayer<T> {
    /// Dead-letter to `target`.
    pub fn new(target: T) -> Self {
        DeadLetterLayer { target, name: Arc::from("dead_letter") }
    }

    /// The `service` label and `deadletterservice` attribute (default `dead_letter`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Arc::from(name.into());
        self
    }
}

impl<S, T: Clone> Layer<S> for DeadLetterLayer<T> {
    type Service = DeadLetter<S, T>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadLetter { inner, target: self.target.clone(), name: self.name.clone() }
    }
}

/// The service made by [`DeadLetterLayer`].
#[derive(Clone)]
pub struct DeadLetter<S, T> {
    inner: S,
    target: T,
    name: Arc<str>,
}

impl<S, T> fmt::Debug for DeadLetter<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<S, T> Service<Event> for DeadLetter<S, T>
where
    S: Service<Event>,
    S::Error: Into<BoxError>,
    T: Service<Event> + Clone,
    T::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, T>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, event: Event) -> Self::Future {
        // `Event` is reference-counted: keeping a copy does not allocate.
        let fut = self.inner.call(event.clone());
        ResponseFuture {
            state: State::Calling { fut },
            event: Some(event),
            target: Some(self.target.clone()),
            name: self.name.clone(),
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, TF> {
        Calling { #[pin] fut: F },
        TargetReady { reason: Option<BoxError> },
        Sending { #[pin] fut: TF, reason: Option<BoxError> },
        Done,
    }
}

pin_project! {
    /// Response future of [`DeadLetter`].
    pub struct ResponseFuture<F, T: Service<Event>> {
        #[pin]
        state: State<F, T::Future>,
        event: Option<Event>,
        target: Option<T>,
        name: Arc<str>,
    }
}

impl<F, T: Service<Event>> fmt::Debug for ResponseFuture<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<F, R, E, T> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
    T: Service<Event>,
    T::Error: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { fut } => match ready!(fut.poll(cx)) {
                    Ok(r) => {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(r));
                    }
                    Err(e) => this.state.set(State::TargetReady { reason: Some(e.into()) }),
                },
                StateProj::TargetReady { reason } => {
                    let target = this.target.as_mut().expect("target taken only when sending");
                    let reason = match ready!(target.poll_ready(cx)) {
                        Ok(()) => reason.take(),
                        Err(e) => {
                            let reason = reason.take().unwrap_or_else(|| "unknown".into());
                            let event = this.event.take().expect("event kept until dead-lettered");
                            this.state.set(State::Done);
                            return Poll::Ready(Err(report(this.name, &event, reason, Err(e.into()))));
                        }
                    };
                    let reason = reason.unwrap_or_else(|| "unknown".into());
                    let event = this.event.as_ref().expect("event kept until dead-lettered");
                    let dead = dead_letter_event(event, &reason, this.name);
                    let fut = target.call(dead);
                    this.state.set(State::Sending { fut, reason: Some(reason) });
                }
                StateProj::Sending { fut, reason } => {
                    let res = ready!(fut.poll(cx)).map(|_| ()).map_err(Into::into);
                    let reason = reason.take().unwrap_or_else(|| "unknown".into());
                    let event = this.event.take().expect("event kept until dead-lettered");
                    this.state.set(State::Done);
                    return Poll::Ready(Err(report(this.name, &event, reason, res)));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

/// The event as it goes to the dead-letter target.
fn dead_letter_event(event: &Event, reason: &BoxError, name: &str) -> Event {
    let mut text: String = reason.to_string().chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.len() > MAX_ATTRIBUTE_LEN {
        let mut cut = MAX_ATTRIBUTE_LEN;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    let with_reason = event.to_builder().extension(REASON_ATTRIBUTE, text).extension(
        SERVICE_ATTRIBUTE,
        name.chars().filter(|c| !c.is_control()).take(MAX_ATTRIBUTE_LEN).collect::<String>(),
    );
    // Only the two new attributes can be invalid, and they were made valid above;
    // fall back to the event as it is rather than lose it.
    with_reason.build().unwrap_or_else(|_| event.clone())
}

fn report(name: &Arc<str>, event: &Event, reason: BoxError, outcome: Result<(), BoxError>) -> BoxError {
    let label = if outcome.is_ok() { "published" } else { "failed" };
    metrics::counter!("tower_mesh_dead_letter_total", "service" => name.to_string(), "outcome" => label).increment(1);
    match &outcome {
        Ok(()) => {
            tracing::warn!(service = %name, event_id = event.id(), event_type = event.ty(), reason = %reason, "event dead-lettered")
        }
        Err(e) => {
            tracing::error!(service = %name, event_id = event.id(), event_type = event.ty(), reason = %reason, error = %e, "event could not be dead-lettered")
        }
    }
    Box::new(DeadLettered { event_id: event.id().to_owned(), reason, dead_letter: outcome })
}

/// The error of a call whose event was dead-lettered (or could not be).
#[derive(Debug)]
pub struct DeadLettered {
    event_id: String,
    reason: BoxError,
    dead_letter: Result<(), BoxError>,
}

impl DeadLettered {
    /// The id of the event.
    pub fn event_id(&self) -> &str {
        &self.event_id
    }
    /// Why the publish failed (also the error's `source`).
    pub fn reason(&self) -> &BoxError {
        &self.reason
    }
    /// `true` when the dead-letter target accepted the event.
    pub fn published(&self) -> bool {
        self.dead_letter.is_ok()
    }
    /// The dead-letter target's error, when it failed too.
    pub fn dead_letter_error(&self) -> Option<&BoxError> {
        self.dead_letter.as_ref().err()
    }
}

impl fmt::Display for DeadLettered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.dead_letter {
            Ok(()) => write!(f, "event {} dead-lettered: {}", self.event_id, self.reason),
            Err(e) => write!(f, "event {} failed ({}) and could not be dead-lettered: {e}", self.event_id, self.reason),
        }
    }
}

impl std::error::Error for DeadLettered {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_test::{assert_pending, assert_ready};
    use tower_test::mock;

    fn ev() -> Event {
        Event::builder("/t", "t").build().unwrap()
    }

    #[tokio::test]
    async fn success_passes_through_without_dead_lettering() {
        let (dlq, mut dlq_handle) = mock::pair::<Event, ()>();
        let (inner, mut handle) = mock::pair::<Event, u32>();
        let mut svc = mock::Spawn::new(DeadLetterLayer::new(dlq).layer(inner));
        handle.allow(1);
        assert_ready!(svc.poll_ready()).unwrap();
        let mut fut = tokio_test::task::spawn(svc.call(ev()));
        assert_pending!(fut.poll());
        handle.next_request().await.unwrap().1.send_response(7);
        assert_eq!(assert_ready!(fut.poll()).unwrap(), 7);
        dlq_handle.allow(1);
        assert!(tokio_test::task::spawn(dlq_handle.next_request()).poll().is_pending());
    }

    #[tokio::test]
    async fn failure_is_dead_lettered_with_reason_and_reported() {
        let (dlq, mut dlq_handle) = mock::pair::<Event, ()>();
        let (inner, mut handle) = mock::pair::<Event, u32>();
        let mut svc = mock::Spawn::new(DeadLetterLayer::new(dlq).name("orders").layer(inner));
        handle.allow(1);
        dlq_handle.allow(1);
        assert_ready!(svc.poll_ready()).unwrap();
        let event = ev();
        let mut fut = tokio_test::task::spawn(svc.call(event.clone()));
        assert_pending!(fut.poll());
        handle.next_request().await.unwrap().1.send_error("no\nroute");
        assert_pending!(fut.poll());
        let (dead, reply) = dlq_handle.next_request().await.unwrap();
        assert_eq!(dead.id(), event.id());
        assert_eq!(dead.extension(REASON_ATTRIBUTE), Some("no route"), "control characters removed");
        assert_eq!(dead.extension(SERVICE_ATTRIBUTE), Some("orders"));
        reply.send_response(());
        let err = assert_ready!(fut.poll()).unwrap_err();
        let report = err.downcast_ref::<DeadLettered>().unwrap();
        assert!(report.published());
        assert_eq!(report.event_id(), event.id());
        assert_eq!(std::error::Error::source(report).unwrap().to_string(), "no\nroute");
    }

    #[tokio::test]
    async fn target_failure_is_reported_too() {
        let dlq = tower::service_fn(|_e: Event| async { Err::<(), _>("dlq down") });
        let failing = tower::service_fn(|_e: Event| async { Err::<(), _>("publish failed") });
        let svc = DeadLetterLayer::new(dlq).layer(failing);
        let err = tower::ServiceExt::oneshot(svc, ev()).await.unwrap_err();
        let report = err.downcast_ref::<DeadLettered>().unwrap();
        assert!(!report.published());
        assert_eq!(report.dead_letter_error().unwrap().to_string(), "dlq down");
        assert!(err.to_string().contains("could not be dead-lettered"));
    }

    #[test]
    fn long_reasons_are_truncated() {
        let reason: BoxError = "é".repeat(2000).into();
        let dead = dead_letter_event(&ev(), &reason, "x");
        assert!(dead.extension(REASON_ATTRIBUTE).unwrap().len() <= MAX_ATTRIBUTE_LEN);
    }
}
