//! One call in flight for a key, and the callers waiting for its answer.

use std::error::Error;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hashbrown::hash_table::Entry as TableEntry;
use hashbrown::HashTable;
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

/// A call in flight: its key and the key's hash (computed once, when the
/// caller joins), which caller runs it (`id`, unique), and the channel to
/// its waiters, made when the first one comes (a call nobody waits for
/// makes none).
struct Entry<K, Res> {
    hash: u64,
    id: u64,
    key: K,
    tx: Option<Sender<Res>>,
}

struct Map<K, Res> {
    entries: HashTable<Entry<K, Res>>,
    next_id: u64,
}

/// The calls in flight, by key.
///
/// A table of entries that keep their hash: a caller hashes its key once;
/// the key is moved in (never cloned); a key is compared only with the keys
/// of equal hash; and the flight ends by hash and `id` (no hashing, no key
/// comparison), so two keys of equal hash are never mixed up.
pub(crate) struct Flights<K, Res> {
    map: Mutex<Map<K, Res>>,
    hasher: foldhash::fast::RandomState,
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

impl<K: Key, Res> Flights<K, Res> {
    pub(crate) fn new(max_keys: usize) -> Self {
        let map = Map { entries: HashTable::new(), next_id: 0 };
        Flights { map: Mutex::new(map), hasher: foldhash::fast::RandomState::default(), max_keys }
    }

    fn lock(&self) -> MutexGuard<'_, Map<K, Res>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The number of keys in flight.
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Joins the flight for `key`, or starts one.
    pub(crate) fn join(self: &Arc<Self>, key: K) -> Role<K, Res> {
        let hash = self.hasher.hash_one(&key);
        let mut map = self.lock();
        let Map { entries, next_id } = &mut *map;
        let full = entries.len() >= self.max_keys;
        match entries.entry(hash, |e| e.hash == hash && e.key == key, |e| e.hash) {
            TableEntry::Occupied(mut running) => {
                let tx = running.get_mut().tx.get_or_insert_with(|| Arc::new(watch::Sender::new(Slot::Running)));
                Role::Follow(tx.subscribe(), key)
            }
            TableEntry::Vacant(_) if full => Role::Alone,
            TableEntry::Vacant(free) => {
                let id = *next_id;
                *next_id += 1;
                free.insert(Entry { hash, id, key, tx: None });
                Role::Lead(Guard { flights: self.clone(), hash, id: Some(id) })
            }
        }
    }

    /// Ends flight `id` (whose key hashes to `hash`): the channel to its
    /// waiters, if any came.
    fn end(&self, hash: u64, id: u64) -> Option<Sender<Res>> {
        let mut map = self.lock();
        let ended = map.entries.find_entry(hash, |e| e.id == id).ok().map(|e| e.remove().0);
        drop(map); // the key is dropped unlocked
        ended.and_then(|e| e.tx)
    }
}

/// Held by the caller that runs a flight's call: it ends the flight with
/// the answer ([`finish`](Guard::finish)) or, dropped before, abandons it so
/// a waiter runs the call again.
pub(crate) struct Guard<K: Key, Res> {
    flights: Arc<Flights<K, Res>>,
    hash: u64,
    /// `None` once the flight ended.
    id: Option<u64>,
}

impl<K: Key, Res: Clone> Guard<K, Res> {
    /// Ends the flight with `result`, shared with the waiters (if any); the
    /// caller's own result is the original one, or, when others waited for
    /// an error, the same [`CoalescedError`] they get.
    pub(crate) fn finish(mut self, result: Result<Res, BoxError>) -> Result<Res, BoxError> {
        let id = self.id.take().expect("a guard finishes once");
        let Some(tx) = self.flights.end(self.hash, id).filter(|tx| tx.receiver_count() > 0) else {
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
        if let Some(id) = self.id.take() {
            if let Some(tx) = self.flights.end(self.hash, id) {
                tx.send_replace(Slot::Abandoned);
            }
        }
    }
}
