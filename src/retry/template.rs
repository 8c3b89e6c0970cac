//! The clone of a wrapped service that extra attempts are sent through.

use std::sync::{Mutex, OnceLock, PoisonError};

/// A clone of the wrapped service, taken at the first call and shared by the
/// layer's clones: retries (and hedges) are sent through clones of it, as
/// the caller's own service is busy with the first attempt. Locked only to
/// clone it (never across an `.await`).
#[derive(Debug)]
pub(crate) struct ServiceTemplate<S>(OnceLock<Mutex<S>>);

impl<S> ServiceTemplate<S> {
    pub(crate) fn new() -> Self {
        ServiceTemplate(OnceLock::new())
    }
}

impl<S: Clone> ServiceTemplate<S> {
    /// Keeps a clone of `service`, unless one is kept already.
    #[inline]
    pub(crate) fn keep(&self, service: &S) {
        if self.0.get().is_none() {
            let _ = self.0.set(Mutex::new(service.clone()));
        }
    }

    /// A clone of the kept service (`None` before the first call).
    pub(crate) fn get(&self) -> Option<S> {
        Some(self.0.get()?.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }
}
