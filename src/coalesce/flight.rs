//! One call in flight for a key, and the callers waiting for its answer.

use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use super::Key;
use crate::error::BoxError;

/// An error shared by every caller of a coalesced call: the first caller's
/// error, which is its [`source`](Error::source) (so the crate's
/// classifiers and server error mapping, which walk sources, see it).
#[derive(Clone)]
pub struct CoalescedError(Arc<dyn Error + Send + Sync>);

impl CoalescedError {
    /// The shared error.
    pub fn get_ref(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for CoalescedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CoalescedError").field(&self.0).finish()
    }
}

impl fmt::Display for CoalescedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Error for CoalescedError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

/// What the waiters of a flight see.
#[derive(Debug, Clone)]
pub(crate) enum Slot<Res> {
    /// The call is running.
    Running,
    /// The call ended with this answer.
    Done(Result<Res, CoalescedError>),
    /// The caller that ran it went away first: one waiter runs it again.
    Abandoned,
}

type Sender<Res> = Arc<watch::Sender<Slot<Res>>>;

/// The calls in flight, by key.
pub(crate) struct Flights<K, Res> {
    map: Mutex<HashMap<K, Sender<Res>>>,
    max_keys: usize,
}

/// What a caller does with its request.
pub(crate) enum Role<K: Key, Res> {
    /// Run the call and tell the others (the guard reports).
    Lead(Guard<K, Res>),
    /// Wait for the call another caller runs.
    Follow(watch::Receiver<Slot<Res>>),
    /// Too many keys in flight: run the call alone.
    Alone,
}

impl<K: Hash + Eq, Res> Flights<K, Res> {
    pub(crate) fn new(max_keys: usize) -> Self {
        Flights { map: Mutex::new(HashMap::new()), max_keys }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Sender<Res>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The number of keys in flight.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Removes `key`'s entry if it is still `tx`'s flight.
    fn end(&self, key: &K, tx: &Sender<Res>) {
        let mut map = self.lock();
        if map.get(key).is_some_and(|current| Arc::ptr_eq(current, tx)) {
            map.remove(key);
        }
    }
}

impl<K: Hash + Eq + Clone, Res> Flights<K, Res> {
    /// Joins the flight for `key`, or starts one.
    pub(crate) fn join(self: &Arc<Self>, key: K) -> Role<K, Res> {
        let mut map = self.lock();
        if let Some(tx) = map.get(&key) {
            return Role::Follow(tx.subscribe());
        }
        if map.len() >= self.max_keys {
            return Role::Alone;
        }
        let tx = Arc::new(watch::Sender::new(Slot::Running));
        map.insert(key.clone(), tx.clone());
        Role::Lead(Guard { flights: self.clone(), key: Some(key), tx })
    }
}

/// Held by the caller that runs a flight's call: it ends the flight with
/// the answer ([`finish`](Guard::finish)) or, dropped before, abandons it so
/// a waiter runs the call again.
pub(crate) struct Guard<K: Key, Res> {
    flights: Arc<Flights<K, Res>>,
    key: Option<K>,
    tx: Sender<Res>,
}

impl<K: Hash + Eq + Clone, Res: Clone> Guard<K, Res> {
    /// Ends the flight with `result`, shared with the waiters (if any); the
    /// caller's own result is the original one, or, when others waited for
    /// an error, the same [`CoalescedError`] they get.
    pub(crate) fn finish(mut self, result: Result<Res, BoxError>) -> Result<Res, BoxError> {
        let key = self.key.take().expect("a guard finishes once");
        self.flights.end(&key, &self.tx);
        if self.tx.receiver_count() == 0 {
            return result;
        }
        match result {
            Ok(res) => {
                self.tx.send_replace(Slot::Done(Ok(res.clone())));
                Ok(res)
            }
            Err(e) => {
                let shared = CoalescedError(Arc::from(e));
                self.tx.send_replace(Slot::Done(Err(shared.clone())));
                Err(Box::new(shared))
            }
        }
    }
}

impl<K: Key, Res> Drop for Guard<K, Res> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.flights.end(&key, &self.tx);
            self.tx.send_replace(Slot::Abandoned);
        }
    }
}
