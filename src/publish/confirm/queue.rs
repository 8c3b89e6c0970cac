//! What the connection task keeps per connection: the unconfirmed messages
//! by sequence number ([`Pending`]) and the confirmations it waits for
//! ([`Confirms`]).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::{Confirmation, Job};
use crate::publish::error::PublishError;

/// What a confirmation gives: the message's result and, for a connection
/// error, whether the message had been written ([`Transport::written`]).
pub(super) type ConfirmResult = Result<Confirmation, PublishError>;

/// Whether the message of a confirmation was written to its connection.
pub(super) type WrittenFn<F> = fn(&mut F) -> bool;

/// A confirmation with its message's sequence number.
pub(super) struct Tagged<F> {
    seq: u64,
    fut: F,
    written: WrittenFn<F>,
}

impl<F: Future<Output = ConfirmResult> + Unpin> Future for Tagged<F> {
    type Output = (u64, ConfirmResult, bool);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let out = ready!(Pin::new(&mut this.fut).poll(cx));
        let written = match &out {
            Err(e) if is_connection_error(e) => (this.written)(&mut this.fut),
            _ => true,
        };
        Poll::Ready((this.seq, out, written))
    }
}

/// The confirmations the driver waits for, by sequence number.
pub(super) enum Confirms<F> {
    /// The transport confirms in send order: polled from the oldest, with
    /// the driver's own waker.
    InOrder(VecDeque<(u64, F)>, WrittenFn<F>),
    /// In any order: each polled with a waker of its own when it is woken.
    Unordered(FuturesUnordered<Tagged<F>>, WrittenFn<F>),
}

impl<F: Future<Output = ConfirmResult> + Unpin> Confirms<F> {
    pub(super) fn new(in_order: bool, written: WrittenFn<F>) -> Self {
        if in_order {
            Confirms::InOrder(VecDeque::new(), written)
        } else {
            Confirms::Unordered(FuturesUnordered::new(), written)
        }
    }

    pub(super) fn push(&mut self, seq: u64, fut: F) {
        match self {
            Confirms::InOrder(queue, _) => queue.push_back((seq, fut)),
            Confirms::Unordered(set, written) => set.push(Tagged { seq, fut, written: *written }),
        }
    }

    /// The next confirmation that came, and whether its message was written
    /// (see [`Transport::written`]); `Pending` when none did (or none is
    /// awaited).
    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<(u64, ConfirmResult, bool)> {
        match self {
            Confirms::InOrder(queue, written) => {
                let Some((seq, fut)) = queue.front_mut() else { return Poll::Pending };
                let out = ready!(Pin::new(&mut *fut).poll(cx));
                let was_written = match &out {
                    Err(e) if is_connection_error(e) => written(fut),
                    _ => true,
                };
                let seq = *seq;
                queue.pop_front();
                Poll::Ready((seq, out, was_written))
            }
            Confirms::Unordered(set, _) => match set.poll_next_unpin(cx) {
                Poll::Ready(Some(next)) => Poll::Ready(next),
                Poll::Ready(None) | Poll::Pending => Poll::Pending,
            },
        }
    }

    /// The sequence numbers of the messages still unconfirmed that were not
    /// written to the connection (asked as it breaks).
    pub(super) fn unwritten(&mut self) -> Vec<u64> {
        match self {
            Confirms::InOrder(queue, written) => {
                queue.iter_mut().filter_map(|(seq, fut)| (!written(fut)).then_some(*seq)).collect()
            }
            Confirms::Unordered(set, written) => {
                set.iter_mut().filter_map(|t| (!written(&mut t.fut)).then_some(t.seq)).collect()
            }
        }
    }
}

/// Unconfirmed messages by local sequence number (send order): slots from
/// the oldest unconfirmed message on. Numbers only grow, so a message goes in
/// at the back and its slot is found by subtraction; no allocation per
/// message (a sorted map allocated and freed nodes as messages came and went).
#[derive(Default)]
pub(super) struct Pending {
    /// The sequence number of the first slot.
    base: u64,
    /// The first slot, when there is one, holds a message.
    slots: VecDeque<Option<Job>>,
    len: usize,
}

impl Pending {
    /// Add the message numbered `seq` (higher than any before).
    pub(super) fn insert(&mut self, seq: u64, job: Job) {
        if self.slots.is_empty() {
            self.base = seq;
        }
        debug_assert!(seq >= self.base + self.slots.len() as u64, "sequence numbers only grow");
        while self.base + (self.slots.len() as u64) < seq {
            self.slots.push_back(None);
        }
        self.slots.push_back(Some(job));
        self.len += 1;
    }

    pub(super) fn remove(&mut self, seq: u64) -> Option<Job> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        let job = self.slots.get_mut(i)?.take()?;
        self.len -= 1;
        self.trim();
        Some(job)
    }

    /// Drop the empty slots at the front.
    fn trim(&mut self) {
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
    }

    pub(super) fn get_mut(&mut self, seq: u64) -> Option<&mut Job> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.slots.get_mut(i)?.as_mut()
    }

    /// The oldest unconfirmed message.
    pub(super) fn first(&self) -> Option<&Job> {
        self.slots.front()?.as_ref()
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sequence numbers of the messages, in order.
    pub(super) fn seqs(&self) -> Vec<u64> {
        (self.base..).zip(&self.slots).filter(|(_, job)| job.is_some()).map(|(seq, _)| seq).collect()
    }

    /// Keep only the messages for which `keep` is true.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Job) -> bool) {
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|job| !keep(job)) {
                *slot = None;
                self.len -= 1;
            }
        }
        self.trim();
    }
}

pub(super) fn is_connection_error(e: &PublishError) -> bool {
    matches!(e, PublishError::ConnectionLost { .. } | PublishError::ConfirmTimeout { .. })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::{oneshot, Semaphore};
    use tokio::time::Instant;

    use super::*;
    use crate::publish::confirm::Outgoing;
    use crate::publish::event::{ContentMode, Event};

    fn job(n: u32) -> Job {
        let (reply, _) = oneshot::channel();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let event = Event::builder("/t", "t").id(format!("e{n}")).build().unwrap();
        Job {
            out: Outgoing::new(event, ContentMode::Structured),
            reply,
            sent_at: None,
            sends: 0,
            queued_unconnected: Some(Instant::now()),
            _permit: permit,
        }
    }

    #[test]
    fn pending_messages_in_order_with_gaps_and_removals_anywhere() {
        let mut p = Pending::default();
        assert!(p.is_empty() && p.first().is_none() && p.remove(0).is_none());
        p.insert(3, job(3));
        // 4 was settled without being kept (a refused message): a gap.
        p.insert(5, job(5));
        p.insert(6, job(6));
        assert_eq!((p.len(), p.seqs()), (3, vec![3, 5, 6]));
        assert!(p.remove(4).is_none() && p.remove(2).is_none() && p.remove(9).is_none());
        assert_eq!(p.remove(5).unwrap().out.event.id(), "e5");
        assert_eq!(p.first().unwrap().out.event.id(), "e3");
        assert_eq!(p.remove(3).unwrap().out.event.id(), "e3");
        assert_eq!(p.first().unwrap().out.event.id(), "e6", "the gap and the removed slot are gone");
        assert_eq!(p.slots.len(), 1);
        p.get_mut(6).unwrap().sends = 2;
        p.insert(7, job(7));
        p.retain(|j| j.sends == 0);
        assert_eq!((p.len(), p.seqs(), p.first().unwrap().out.event.id()), (1, vec![7], "e7"));
        assert_eq!(p.remove(7).unwrap().out.event.id(), "e7");
        assert!(p.is_empty() && p.slots.is_empty());
        // Empty again: numbering goes on from anywhere higher.
        p.insert(100, job(100));
        assert_eq!(p.seqs(), [100]);
    }
}
