//! One call in flight for a key, and the callers waiting for its answer.

use std::collections::hash_map::Entry as HashEntry;
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

/// A call in flight: which caller runs it (`id`), and the channel to its
/// waiters, made when the first one comes (a call nobody waits for makes
/// none).
struct Entry<Res> {
    id: u64,
    tx: Option<Sender<Res>>,
}

struct Map<K, Res> {
    entries: HashMap<K, Entry<Res>, foldhash::fast::RandomState>,
    next_id: u64,
}

/// The calls in flight, by key.
pub(crate) struct Flights<K, Res> {
    map: Mutex<Map<K, Res>>,
    max_keys: usize,
}

/// What a caller does with its request.
pub(crate) enum Role<K: Key, Res> {
    /// Run the call and tell the others (the guard reports).
    Lead(Guard<K, Res>),
    /// Wait for the call another caller runs (the key is handed back).
    Follow(watch::Receiver<Slot<Res>>, K),
    /// Too many keys in flight: run the call alone.
    Alone,
}

impl<K: Hash + Eq, Res> Flights<K, Res> {
    pub(crate) fn new(max_keys: usize) -> Self {
        Flights { map: Mutex::new(Map { entries: HashMap::default(), next_id: 0 }), max_keys }
    }

    fn lock(&self) -> MutexGuard<'_, Map<K, Res>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The number of keys in flight.
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Ends `key`'s flight if it is still call `id`'s: the channel to its
    /// waiters, if any came.
    fn end(&self, key: &K, id: u64) -> Option<Sender<Res>> {
        let mut map = self.lock();
        match map.entries.get(key) {
            Some(entry) if entry.id == id => map.entries.remove(key).and_then(|e| e.tx),
            _ => None,
        }
    }
}

impl<K: Hash + Eq + Clone, Res> Flights<K, Res> {
    /// Joins the flight for `key`, or starts one.
    pub(crate) fn join(self: &Arc<Self>, key: K) -> Role<K, Res> {
        let mut map = self.lock();
        let full = map.entries.len() >= self.max_keys;
        let id = map.next_id;
        match map.entries.entry(key) {
            HashEntry::Occupied(mut running) => {
                let tx = running.get_mut().tx.get_or_insert_with(|| Arc::new(watch::Sender::new(Slot::Running)));
                let rx = tx.subscribe();
                Role::Follow(rx, running.key().clone())
            }
            HashEntry::Vacant(_) if full => Role::Alone,
            HashEntry::Vacant(free) => {
                let key = free.key().clone();
                free.insert(Entry { id, tx: None });
                map.next_id += 1;
                Role::Lead(Guard { flights: self.clone(), key: Some(key), id })
            }
        }
    }
}

/// Held by the caller that runs a flight's call: it ends the flight with
/// the answer ([`finish`](Guard::finish)) or, dropped before, abandons it so
/// a waiter runs the call again.
pub(crate) struct Guard<K: Key, Res> {
    flights: Arc<Flights<K, Res>>,
    key: Option<K>,
    id: u64,
}

impl<K: Key, Res: Clone> Guard<K, Res> {
    /// Ends the flight with `result`, shared with the waiters (if any); the
    /// caller's own result is the original one, or, when others waited for
    /// an error, the same [`CoalescedError`] they get.
    pub(crate) fn finish(mut self, result: Result<Res, BoxError>) -> Result<Res, BoxError> {
        let key = self.key.take().expect("a guard finishes once");
        let Some(tx) = self.flights.end(&key, self.id).filter(|tx| tx.receiver_count() > 0) else {
            return result;
        };
        match result {
            Ok(res) => {
                tx.send_replace(Slot::Done(Ok(res.clone())));
                Ok(res)
            }
            Err(e) => {
                let shared = CoalescedError(Arc::from(e));
                tx.send_replace(Slot::Done(Err(shared.clone())));
                Err(Box::new(shared))
            }
        }
    }
}

impl<K: Key, Res> Drop for Guard<K, Res> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            if let Some(tx) = self.flights.end(&key, self.id) {
                tx.send_replace(Slot::Abandoned);
            }
        }
    }
}
