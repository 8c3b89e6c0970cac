//! The synchronisation types of the bulkhead's [pool](super::pool): std's
//! and tokio's, or under `cfg(loom)` loom's, so that the loom tests check
//! every interleaving of the pool's atomics (`scripts/loom.sh`).
//!
//! loom has no `tokio::sync::Notify`; under `cfg(loom)` a small one built
//! on loom's `Mutex` stands in for it, with the semantics the pool relies
//! on: `notify_one` wakes the first waiter in line or, with none, is kept
//! for the next one; a waiter is in line once enabled; a waiter dropped
//! after being woken passes the wake-up on.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) use tokio::sync::Notify;

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::Arc;
#[cfg(loom)]
pub(crate) use notify::Notify;

#[cfg(loom)]
mod notify {
    use std::collections::VecDeque;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use loom::sync::{Mutex, MutexGuard};

    /// `tokio::sync::Notify`, as far as the pool uses it.
    #[derive(Default)]
    pub(crate) struct Notify {
        state: Mutex<State>,
    }

    #[derive(Default)]
    struct State {
        /// A wake-up kept for the next waiter (there was none in line).
        kept: bool,
        next_id: u64,
        /// Waiters in line, first first.
        line: VecDeque<(u64, Option<Waker>)>,
        /// Waiters woken that have not seen it yet.
        woken: Vec<u64>,
    }

    impl State {
        /// Wake the first waiter in line, or keep the wake-up; its waker,
        /// to wake once the lock is released.
        fn notify_one(&mut self) -> Option<Waker> {
            match self.line.pop_front() {
                Some((id, waker)) => {
                    self.woken.push(id);
                    waker
                }
                None => {
                    self.kept = true;
                    None
                }
            }
        }
    }

    impl Notify {
        pub(crate) fn new() -> Self {
            Self::default()
        }

        fn lock(&self) -> MutexGuard<'_, State> {
            self.state.lock().unwrap()
        }

        pub(crate) fn notify_one(&self) {
            let waker = self.lock().notify_one();
            if let Some(w) = waker {
                w.wake();
            }
        }

        pub(crate) fn notified(&self) -> Notified<'_> {
            Notified { notify: self, step: Step::Init }
        }
    }

    #[derive(Clone, Copy)]
    enum Step {
        Init,
        Waiting(u64),
        Done,
    }

    /// A wait for [`Notify::notify_one`].
    pub(crate) struct Notified<'a> {
        notify: &'a Notify,
        step: Step,
    }

    impl Notified<'_> {
        /// Get in line (or take a kept wake-up).
        pub(crate) fn enable(self: Pin<&mut Self>) -> bool {
            let this = self.get_mut();
            if let Step::Init = this.step {
                let mut s = this.notify.lock();
                if std::mem::take(&mut s.kept) {
                    this.step = Step::Done;
                } else {
                    let id = s.next_id;
                    s.next_id += 1;
                    s.line.push_back((id, None));
                    this.step = Step::Waiting(id);
                }
            }
            matches!(this.step, Step::Done)
        }
    }

    impl Future for Notified<'_> {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.as_mut().enable();
            let this = self.get_mut();
            let Step::Waiting(id) = this.step else { return Poll::Ready(()) };
            let mut s = this.notify.lock();
            if let Some(i) = s.woken.iter().position(|w| *w == id) {
                s.woken.swap_remove(i);
                this.step = Step::Done;
                return Poll::Ready(());
            }
            if let Some(slot) = s.line.iter_mut().find(|(w, _)| *w == id) {
                slot.1 = Some(cx.waker().clone());
            }
            Poll::Pending
        }
    }

    impl Drop for Notified<'_> {
        fn drop(&mut self) {
            let Step::Waiting(id) = self.step else { return };
            let mut s = self.notify.lock();
            if let Some(i) = s.line.iter().position(|(w, _)| *w == id) {
                s.line.remove(i);
            } else if let Some(i) = s.woken.iter().position(|w| *w == id) {
                // Woken but gone: the wake-up goes to the next in line.
                s.woken.swap_remove(i);
                let waker = s.notify_one();
                drop(s);
                if let Some(w) = waker {
                    w.wake();
                }
            }
        }
    }
}
