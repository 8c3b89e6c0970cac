//! [`ServiceBuilderExt`]: the resilience layers as `tower::ServiceBuilder`
//! methods, as `tower_http::ServiceBuilderExt` does for tower-http's layers.
//!
//! ```
//! # #[cfg(all(feature = "circuit-breaker", feature = "bulkhead", feature = "retry", feature = "timeout"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_mesh::BoxError> {
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_mesh::circuit_breaker::CircuitBreakerLayer;
//! use tower_mesh::retry::{RetryConfig, RetryLayer};
//! use tower_mesh::ServiceBuilderExt;
//!
//! let svc = ServiceBuilder::new()
//!     .mesh_timeout(Duration::from_secs(2))
//!     .mesh_retry(RetryLayer::from_config(&RetryConfig::standard())?)
//!     .circuit_breaker(CircuitBreakerLayer::builder().name("orders").build()?)
//!     .bulkhead(50)
//!     .mesh_attempt_timeout(Duration::from_millis(500))
//!     .service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n + 1) });
//!
//! assert_eq!(svc.oneshot(41).await?, 42);
//! # Ok(())
//! # }
//! # #[cfg(not(all(feature = "circuit-breaker", feature = "bulkhead", feature = "retry", feature = "timeout")))]
//! # fn main() {}
//! ```
//!
//! The timeout and retry methods are named `mesh_timeout` and `mesh_retry`:
//! `ServiceBuilder` has inherent `timeout` and `retry` methods when tower's
//! `timeout` and `retry` features are on, and an inherent method always wins
//! over a trait method of the same name.

use tower::ServiceBuilder;

// `pub` in a private module: nameable by no one outside, so the trait stays sealed.
#[allow(unreachable_pub)]
mod sealed {
    pub trait Sealed<L> {}
    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}

/// Extension methods on [`tower::ServiceBuilder`] that add this crate's
/// layers; each is present with its layer's feature.
///
/// `builder.circuit_breaker(layer)` is `builder.layer(layer)`: the methods
/// only read better in a chain. The order of the calls is the order of the
/// layers, outermost first (see the crate documentation for the order that
/// works: total timeout, retry, circuit breaker, bulkhead, attempt timeout).
///
/// This trait is sealed: it is implemented for `ServiceBuilder` only.
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Add a [`CircuitBreakerLayer`](crate::circuit_breaker::CircuitBreakerLayer),
    /// built with [`CircuitBreakerLayer::builder`](crate::circuit_breaker::CircuitBreakerLayer::builder)
    /// or [`from_config`](crate::circuit_breaker::CircuitBreakerLayer::from_config).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_mesh::BoxError> {
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_mesh::circuit_breaker::{CircuitBreakerLayer, CircuitState};
    /// use tower_mesh::ServiceBuilderExt;
    ///
    /// let breaker = CircuitBreakerLayer::builder().name("orders").build()?;
    /// let handle = breaker.handle();
    /// let svc = ServiceBuilder::new()
    ///     .circuit_breaker(breaker)
    ///     .service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>("ok") });
    ///
    /// assert_eq!(svc.oneshot(()).await?, "ok");
    /// assert_eq!(handle.state(), CircuitState::Closed);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "circuit-breaker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "circuit-breaker")))]
    fn circuit_breaker<C>(
        self,
        layer: crate::circuit_breaker::CircuitBreakerLayer<C>,
    ) -> ServiceBuilder<tower_layer::Stack<crate::circuit_breaker::CircuitBreakerLayer<C>, L>>;

    /// Add a [`BulkheadLayer`](crate::bulkhead::BulkheadLayer) that lets at
    /// most `max_concurrent` calls in flight
    /// ([`BulkheadLayer::new`](crate::bulkhead::BulkheadLayer::new): a call
    /// beyond fails at once with [`BulkheadFull`](crate::bulkhead::BulkheadFull)).
    /// For a maximum wait or a name, add a layer from
    /// [`BulkheadLayer::builder`](crate::bulkhead::BulkheadLayer::builder)
    /// with `.layer(..)`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_mesh::BoxError> {
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_mesh::ServiceBuilderExt;
    ///
    /// let svc = ServiceBuilder::new()
    ///     .bulkhead(50)
    ///     .service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n * 2) });
    ///
    /// assert_eq!(svc.oneshot(21).await?, 42);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "bulkhead")]
    #[cfg_attr(docsrs, doc(cfg(feature = "bulkhead")))]
    fn bulkhead(self, max_concurrent: usize) -> ServiceBuilder<tower_layer::Stack<crate::bulkhead::BulkheadLayer, L>>;

    /// Add a [`RetryLayer`](crate::retry::RetryLayer), built with
    /// [`RetryLayer::builder`](crate::retry::RetryLayer::builder) or
    /// [`from_config`](crate::retry::RetryLayer::from_config). Named
    /// `mesh_retry` because `ServiceBuilder::retry` (tower's `retry` feature)
    /// would take precedence over a trait method named `retry`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_mesh::BoxError> {
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_mesh::retry::{Backoff, RetryLayer};
    /// use tower_mesh::ServiceBuilderExt;
    ///
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let seen = calls.clone();
    /// let svc = ServiceBuilder::new()
    ///     .mesh_retry(
    ///         RetryLayer::builder()
    ///             .max_retries(2)
    ///             .backoff(Backoff::exponential(Duration::from_millis(1), 2.0, Duration::from_millis(10)))
    ///             .build()?,
    ///     )
    ///     .service_fn(move |_: ()| {
    ///         let n = seen.fetch_add(1, Ordering::SeqCst);
    ///         // the first attempt fails, the retry succeeds
    ///         async move { if n == 0 { Err("unavailable") } else { Ok("ok") } }
    ///     });
    ///
    /// assert_eq!(svc.oneshot(()).await?, "ok");
    /// assert_eq!(calls.load(Ordering::SeqCst), 2);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "retry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
    fn mesh_retry<C, P>(
        self,
        layer: crate::retry::RetryLayer<C, P>,
    ) -> ServiceBuilder<tower_layer::Stack<crate::retry::RetryLayer<C, P>, L>>;

    /// Add a total [`TimeoutLayer`](crate::timeout::TimeoutLayer)
    /// ([`TimeoutLayer::new`](crate::timeout::TimeoutLayer::new)): the whole
    /// call, retries below included, must complete within `total`. Named
    /// `mesh_timeout` because `ServiceBuilder::timeout` (tower's `timeout`
    /// feature) would take precedence over a trait method named `timeout`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_mesh::timeout::{Elapsed, TimeoutKind};
    /// use tower_mesh::ServiceBuilderExt;
    ///
    /// let svc = ServiceBuilder::new()
    ///     .mesh_timeout(Duration::from_millis(20))
    ///     .service_fn(|_: ()| async {
    ///         tokio::time::sleep(Duration::from_secs(5)).await;
    ///         Ok::<_, std::convert::Infallible>("too late")
    ///     });
    ///
    /// let err = svc.oneshot(()).await.unwrap_err();
    /// assert_eq!(err.downcast_ref::<Elapsed>().unwrap().kind(), TimeoutKind::Total);
    /// # }
    /// ```
    #[cfg(feature = "timeout")]
    #[cfg_attr(docsrs, doc(cfg(feature = "timeout")))]
    fn mesh_timeout(
        self,
        total: std::time::Duration,
    ) -> ServiceBuilder<tower_layer::Stack<crate::timeout::TimeoutLayer, L>>;

    /// Add a per-attempt [`TimeoutLayer`](crate::timeout::TimeoutLayer)
    /// ([`TimeoutLayer::per_attempt`](crate::timeout::TimeoutLayer::per_attempt)),
    /// for use below a retry layer: each attempt must complete within
    /// `attempt`, or before the enclosing deadline if that is earlier.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use tower::{ServiceBuilder, ServiceExt};
    /// use tower_mesh::timeout::{Elapsed, TimeoutKind};
    /// use tower_mesh::ServiceBuilderExt;
    ///
    /// let svc = ServiceBuilder::new()
    ///     .mesh_timeout(Duration::from_secs(2))
    ///     .mesh_attempt_timeout(Duration::from_millis(20))
    ///     .service_fn(|_: ()| async {
    ///         tokio::time::sleep(Duration::from_secs(5)).await;
    ///         Ok::<_, std::convert::Infallible>("too late")
    ///     });
    ///
    /// let err = svc.oneshot(()).await.unwrap_err();
    /// assert_eq!(err.downcast_ref::<Elapsed>().unwrap().kind(), TimeoutKind::Attempt);
    /// # }
    /// ```
    #[cfg(feature = "timeout")]
    #[cfg_attr(docsrs, doc(cfg(feature = "timeout")))]
    fn mesh_attempt_timeout(
        self,
        attempt: std::time::Duration,
    ) -> ServiceBuilder<tower_layer::Stack<crate::timeout::TimeoutLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "circuit-breaker")]
    fn circuit_breaker<C>(
        self,
        layer: crate::circuit_breaker::CircuitBreakerLayer<C>,
    ) -> ServiceBuilder<tower_layer::Stack<crate::circuit_breaker::CircuitBreakerLayer<C>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "bulkhead")]
    fn bulkhead(self, max_concurrent: usize) -> ServiceBuilder<tower_layer::Stack<crate::bulkhead::BulkheadLayer, L>> {
        self.layer(crate::bulkhead::BulkheadLayer::new(max_concurrent))
    }

    #[cfg(feature = "retry")]
    fn mesh_retry<C, P>(
        self,
        layer: crate::retry::RetryLayer<C, P>,
    ) -> ServiceBuilder<tower_layer::Stack<crate::retry::RetryLayer<C, P>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "timeout")]
    fn mesh_timeout(
        self,
        total: std::time::Duration,
    ) -> ServiceBuilder<tower_layer::Stack<crate::timeout::TimeoutLayer, L>> {
        self.layer(crate::timeout::TimeoutLayer::new(total))
    }

    #[cfg(feature = "timeout")]
    fn mesh_attempt_timeout(
        self,
        attempt: std::time::Duration,
    ) -> ServiceBuilder<tower_layer::Stack<crate::timeout::TimeoutLayer, L>> {
        self.layer(crate::timeout::TimeoutLayer::per_attempt(attempt))
    }
}

#[cfg(all(test, feature = "circuit-breaker", feature = "bulkhead", feature = "retry", feature = "timeout"))]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tower::{ServiceBuilder, ServiceExt};

    use super::ServiceBuilderExt;
    use crate::bulkhead::BulkheadFull;
    use crate::circuit_breaker::{CircuitBreakerLayer, CircuitState};
    use crate::retry::{Backoff, RetryLayer};
    use crate::timeout::{Elapsed, TimeoutKind};

    fn retry() -> RetryLayer {
        RetryLayer::builder()
            .max_retries(2)
            .backoff(Backoff::exponential(Duration::from_millis(1), 2.0, Duration::from_millis(5)))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn ext_builds_the_whole_stack_and_calls_through_it() {
        let calls = Arc::new(AtomicU32::new(0));
        let seen = calls.clone();
        let breaker = CircuitBreakerLayer::builder().name("ext").build().unwrap();
        let handle = breaker.handle();
        let svc = ServiceBuilder::new()
            .mesh_timeout(Duration::from_secs(5))
            .mesh_retry(retry())
            .circuit_breaker(breaker)
            .bulkhead(4)
            .mesh_attempt_timeout(Duration::from_secs(1))
            .service_fn(move |n: u32| {
                let call = seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    if call == 0 {
                        Err::<u32, crate::BoxError>("first attempt fails".into())
                    } else {
                        Ok(n + 1)
                    }
                }
            });

        assert_eq!(svc.oneshot(41).await.unwrap(), 42);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the failed attempt was retried through the stack");
        assert_eq!(handle.state(), CircuitState::Closed);
    }

    #[tokio::test]
    async fn ext_methods_are_the_same_as_layer() {
        // The same stack spelled with `.layer(..)`: same behaviour.
        let svc = ServiceBuilder::new()
            .layer(crate::timeout::TimeoutLayer::new(Duration::from_secs(5)))
            .layer(retry())
            .layer(CircuitBreakerLayer::builder().name("ext-layer").build().unwrap())
            .layer(crate::bulkhead::BulkheadLayer::new(4))
            .layer(crate::timeout::TimeoutLayer::per_attempt(Duration::from_secs(1)))
            .service_fn(|n: u32| async move { Ok::<_, crate::BoxError>(n + 1) });
        assert_eq!(svc.oneshot(1).await.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn ext_timeouts_are_total_and_per_attempt() {
        let slow = |_: ()| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, crate::BoxError>(())
        };
        let total = ServiceBuilder::new().mesh_timeout(Duration::from_millis(10)).service_fn(slow);
        let err = total.oneshot(()).await.unwrap_err();
        assert_eq!(err.downcast_ref::<Elapsed>().unwrap().kind(), TimeoutKind::Total);

        let attempt = ServiceBuilder::new()
            .mesh_timeout(Duration::from_secs(10))
            .mesh_attempt_timeout(Duration::from_millis(10))
            .service_fn(slow);
        let err = attempt.oneshot(()).await.unwrap_err();
        assert_eq!(err.downcast_ref::<Elapsed>().unwrap().kind(), TimeoutKind::Attempt);
    }

    #[tokio::test]
    async fn ext_bulkhead_limits_calls_in_flight() {
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let wait = Arc::new(tokio::sync::Mutex::new(Some(wait)));
        let svc = ServiceBuilder::new().bulkhead(1).service_fn(move |_: ()| {
            let wait = wait.clone();
            async move {
                if let Some(w) = wait.lock().await.take() {
                    let _ = w.await;
                }
                Ok::<_, crate::BoxError>(())
            }
        });
        let first = tokio::spawn(svc.clone().oneshot(()));
        tokio::task::yield_now().await;
        let err = svc.clone().oneshot(()).await.unwrap_err();
        assert!(err.downcast_ref::<BulkheadFull>().is_some(), "{err}");
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
    }
}
