//! The one list of the layers' error types.
//!
//! A boxed error can only be turned back into a [`MeshError`] by trying each
//! concrete type in turn; this is the only place that does it, so that
//! [`crate::error`] and [`crate::classify`] work with [`MeshError::kind`] and
//! name no layer. A new layer's error implements [`MeshError`] and gets one
//! line here.

use std::error::Error;

use crate::error::MeshError;

/// `e` as a tower-mesh error, if it is one (its sources are not looked at:
/// see [`crate::error::mesh_errors`]).
pub(crate) fn as_mesh_error<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a dyn MeshError> {
    macro_rules! try_each {
        ($($feature:literal => $ty:ty,)*) => {$(
            #[cfg(feature = $feature)]
            if let Some(e) = e.downcast_ref::<$ty>() {
                return Some(e);
            }
        )*};
    }
    try_each! {
        "circuit-breaker" => crate::circuit_breaker::CircuitOpen,
        "bulkhead" => crate::bulkhead::BulkheadFull,
        "adaptive-concurrency" => crate::adaptive_concurrency::ConcurrencyLimited,
        "rate-limit" => crate::rate_limit::RateLimited,
        "timeout" => crate::timeout::Elapsed,
        "discovery" => crate::discovery::DiscoveryError,
        "jwt" => crate::jwt::JwtError,
        "publish" => crate::publish::PublishError,
        "stack" => crate::service_error::ServiceError,
    }
    let _ = e;
    None
}
