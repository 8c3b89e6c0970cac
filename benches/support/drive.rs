//! Driving one call by hand, for the benches that measure a layer's
//! per-call cost on a no-op service. Included with
//! `#[path = "support/drive.rs"] mod drive;`.

use std::fmt::Debug;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use tower::Service;

/// Spins allowed on a `Pending` before we decide the subject would never become ready.
pub const MAX_SPINS: u64 = 100_000_000;

/// One call: `poll_ready` until ready, `call`, poll the future until ready. The subjects are
/// ready immediately for a no-op inner service (and under two-thread contention become ready as
/// soon as the other thread releases what it holds), so `Pending` is simply polled again.
#[inline(always)]
pub fn call_once<S, Req>(svc: &mut S, cx: &mut Context<'_>, req: Req) -> S::Response
where
    S: Service<Req>,
    S::Error: Debug,
{
    let mut spins = 0u64;
    loop {
        match svc.poll_ready(cx) {
            Poll::Ready(Ok(())) => break,
            Poll::Ready(Err(e)) => panic!("poll_ready failed: {e:?}"),
            Poll::Pending => {
                spins += 1;
                assert!(spins < MAX_SPINS, "service never became ready");
                std::hint::spin_loop();
            }
        }
    }
    let mut fut = pin!(svc.call(req));
    loop {
        match fut.as_mut().poll(cx) {
            Poll::Ready(Ok(res)) => return res,
            Poll::Ready(Err(e)) => panic!("call failed: {e:?}"),
            Poll::Pending => {
                spins += 1;
                assert!(spins < MAX_SPINS, "response future never completed");
                std::hint::spin_loop();
            }
        }
    }
}
