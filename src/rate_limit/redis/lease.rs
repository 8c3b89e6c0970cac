//! Leased mode: tokens taken from the shared limit in batches and spent
//! locally.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::store::Inner;
use crate::rate_limit::error::RateLimited;
use crate::rate_limit::limiter::{Acquire, Decide};

/// A lease of tokens for one key.
pub(super) struct Lease {
    tokens: u32,
    size: u32,
    granted_at: Instant,
    /// The last lease request was denied: do not ask again before this.
    denied_until: Option<Instant>,
    /// A lease request is on its way: calls meanwhile ask for one token.
    asking: bool,
}

/// The most keys with a lease an instance keeps (all are forgotten past it).
const MAX_LEASES: usize = 10_000;

/// What a call does in leased mode.
enum Spend {
    /// Admitted from the lease.
    Spent,
    /// Ask Redis for a lease of this size.
    Lease(u32),
    /// A lease is being asked for: ask Redis for this call's token alone.
    One,
    /// The last lease request was denied; no token for this long.
    Denied(Duration),
}

impl Inner {
    /// Spend a token of `key`'s lease, or say what to ask Redis for.
    fn spend(&self, key: &str) -> Spend {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let Some(lease) = leases.get_mut(key) else {
            if leases.len() >= MAX_LEASES {
                leases.clear();
            }
            let lease = Lease { tokens: 0, size: 1, granted_at: now, denied_until: None, asking: true };
            leases.insert(key.to_owned(), lease);
            return Spend::Lease(1);
        };
        let age = now.duration_since(lease.granted_at);
        if lease.tokens > 0 {
            if age <= self.lease_ttl {
                lease.tokens -= 1;
                return Spend::Spent;
            }
            // Expired: its tokens are lost (never over-admit), and a lease
            // this slow to spend is too large.
            lease.tokens = 0;
            lease.size = (lease.size / 2).max(1);
        }
        match lease.denied_until {
            Some(until) if now < until => Spend::Denied(until - now),
            _ if lease.asking => Spend::One,
            _ => {
                if age <= self.lease_ttl / 2 {
                    // The last lease was spent quickly: ask for more.
                    lease.size = lease.size.saturating_mul(2).min(self.max_lease);
                }
                lease.asking = true;
                Spend::Lease(lease.size)
            }
        }
    }

    /// Leased mode: a token of `key`'s lease, or a decision of Redis.
    pub(super) fn acquire_leased(self: &Arc<Self>, key: &str) -> Acquire<Decide> {
        match self.spend(key) {
            Spend::Spent => {
                self.leased.increment(1);
                Acquire::Admitted
            }
            Spend::Lease(size) => Acquire::Pending(Box::pin(self.clone().lease(key.to_owned(), size))),
            Spend::One => Acquire::Pending(Box::pin(self.clone().decide(self.redis_key(key)))),
            Spend::Denied(wait) => Acquire::Denied(RateLimited::new(self.name.clone(), self.policy, wait)),
        }
    }

    /// Take a lease of up to `size` tokens for `key` and spend one of them.
    /// A denied lease is remembered until the tokens it asked for conform,
    /// so calls in between are denied without asking Redis. An instance
    /// holds at most `max_lease` tokens of a key: what a lease brings
    /// beyond that is dropped (under-admission, never over).
    async fn lease(self: Arc<Self>, key: String, size: u32) -> Result<(), RateLimited> {
        let mut asking = Asking { inner: &self, key: &key, armed: true };
        let decision = self.ask(&self.redis_key(&key), size, true).await;
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let lease = leases.entry(key.clone()).or_insert(Lease {
            tokens: 0,
            size,
            granted_at: now,
            denied_until: None,
            asking: true,
        });
        lease.asking = false;
        asking.armed = false;
        match decision {
            Ok(d) if d.granted == 0 => {
                lease.denied_until = Some(now + d.retry_after);
                Err(RateLimited::new(self.name.clone(), self.policy, d.retry_after))
            }
            Ok(d) => {
                lease.tokens = (lease.tokens + d.granted - 1).min(self.max_lease);
                lease.granted_at = now;
                // A partial lease: the other instances take the rest; do not
                // come back before a full lease could have accrued.
                lease.denied_until =
                    (d.granted < size).then(|| now + self.policy.rate.interval().saturating_mul(size - d.granted));
                Ok(())
            }
            Err(e) => {
                drop(leases);
                self.fail(e)
            }
        }
    }
}

/// A lease request on its way; dropped before its answer (the call was
/// cancelled), the next call may ask again.
struct Asking<'a> {
    inner: &'a Inner,
    key: &'a str,
    armed: bool,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut leases = self.inner.leases.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(lease) = leases.get_mut(self.key) {
                lease.asking = false;
            }
        }
    }
}
