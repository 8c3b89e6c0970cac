use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower_service::Service;

use super::*;
use crate::publish::config::{PublisherConfig, ReconnectBackoff};

type Reply = oneshot::Sender<Result<Confirmation, PublishError>>;

#[derive(Default)]
struct State {
    up: bool,
    connects: u32,
    hold: bool,
    sent: Vec<(String, u32)>,
    held: Vec<Reply>,
    lost: Option<LostSignal>,
    /// `publish` refuses these ids once each (the connection broke
    /// before the message was handed over).
    refuse: Vec<String>,
    /// The confirmations of these ids say their message was not written.
    unwritten: Vec<String>,
    /// Connection attempts never finish (a blackholed broker).
    hang: bool,
}

/// A confirmation of the fake broker, and whether its message was written.
struct FakeConfirm {
    fut: Pin<Box<dyn Future<Output = Result<Confirmation, PublishError>> + Send>>,
    written: bool,
}

impl Future for FakeConfirm {
    type Output = Result<Confirmation, PublishError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.fut.as_mut().poll(cx)
    }
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

impl Fake {
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }
    fn release(&self, res: impl Fn() -> Result<Confirmation, PublishError>) {
        for r in self.st().held.drain(..) {
            let _ = r.send(res());
        }
    }
}

impl Transport for Fake {
    const BROKER: &'static str = "fake";
    type Connection = ();
    type Confirm = FakeConfirm;

    fn connect(&mut self, lost: LostSignal) -> impl Future<Output = Result<(), BoxError>> + Send {
        let mut st = self.st();
        st.connects += 1;
        let hang = st.hang;
        let res = if st.up {
            st.lost = Some(lost);
            Ok(())
        } else {
            Err("connection refused".into())
        };
        async move {
            if hang {
                std::future::pending::<()>().await;
            }
            res
        }
    }

    fn written(confirm: &mut FakeConfirm) -> bool {
        confirm.written
    }

    fn publish<'a>(
        &'a mut self,
        _conn: &'a mut (),
        msg: &'a Outgoing,
    ) -> impl Future<Output = Result<Self::Confirm, PublishError>> + Send + 'a {
        let mut st = self.st();
        if let Some(i) = st.refuse.iter().position(|id| id == msg.event.id()) {
            st.refuse.remove(i);
            return std::future::ready(Err(PublishError::ConnectionLost { broker: "fake", attempts: 0 }));
        }
        st.sent.push((msg.event.id().to_owned(), msg.attempt));
        let fut: Pin<Box<dyn Future<Output = _> + Send>> = if st.hold {
            let (tx, rx) = oneshot::channel();
            st.held.push(tx);
            Box::pin(
                async move { rx.await.unwrap_or(Err(PublishError::ConnectionLost { broker: "fake", attempts: 0 })) },
            )
        } else {
            let seq = st.sent.len() as u64;
            Box::pin(std::future::ready(Ok(Confirmation { sequence: Some(seq), ..Default::default() })))
        };
        std::future::ready(Ok(FakeConfirm { fut, written: !st.unwritten.iter().any(|id| id == msg.event.id()) }))
    }
}

fn config(max_in_flight: usize) -> PublisherConfig {
    PublisherConfig {
        max_in_flight,
        max_resends: 2,
        reconnect: ReconnectBackoff {
            initial: Duration::from_millis(10),
            multiplier: 2.0,
            max: Duration::from_millis(40),
        },
        ..Default::default()
    }
}

fn ev(n: u32) -> Event {
    Event::builder("/t", "t").id(format!("e{n}")).build().unwrap()
}

/// A publisher of at most `max_in_flight` unconfirmed messages, connected
/// to a fake broker that holds its confirmations back if `hold`.
async fn connected(max_in_flight: usize, hold: bool) -> (Fake, Publisher<Fake>) {
    let fake = Fake::default();
    fake.st().up = true;
    fake.st().hold = hold;
    let p = Publisher::new(fake.clone(), config(max_in_flight)).unwrap();
    p.wait_connected().await.unwrap();
    (fake, p)
}

async fn ready<T: Transport>(p: &mut Publisher<T>) {
    std::future::poll_fn(|cx| p.poll_ready(cx)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn confirms_and_bounds_in_flight() {
    let (fake, mut p) = connected(2, true).await;
    ready(&mut p).await;
    let f1 = p.call(ev(1));
    ready(&mut p).await;
    let f2 = p.call(ev(2));
    // Two unconfirmed: not ready.
    let mut r = task::spawn(std::future::poll_fn(|cx| p.poll_ready(cx)));
    assert_pending!(r.poll());
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(fake.st().held.len(), 2);
    fake.release(|| Ok(Confirmation::default()));
    let (a, b) = (f1.await.unwrap(), f2.await.unwrap());
    assert_eq!((a.event.id(), b.event.id(), a.sends), ("e1", "e2", 1));
    assert!(r.is_woken());
    assert_ready_ok!(r.poll());
    drop(r);
    assert_eq!(p.in_flight(), 1, "the permit taken by poll_ready");
}

#[tokio::test(start_paused = true)]
async fn down_at_start_fails_fast_then_recovers() {
    let fake = Fake::default();
    let mut p = Publisher::new(fake.clone(), config(8)).unwrap();
    assert!(matches!(p.wait_connected().await, Err(PublishError::Unavailable { broker: "fake", .. })));
    assert_eq!(p.state(), ConnectionState::Down);
    ready(&mut p).await;
    let err = p.call(ev(1)).await.unwrap_err();
    assert!(err.is_transient());
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert!(fake.st().sent.is_empty());
    fake.st().up = true;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(p.state(), ConnectionState::Connected);
    ready(&mut p).await;
    assert_eq!(p.call(ev(2)).await.unwrap().event.id(), "e2");
}

#[tokio::test(start_paused = true)]
async fn lost_connection_resends_unconfirmed_in_order() {
    let fake = Fake::default();
    fake.st().up = true;
    fake.st().hold = true;
    let mut p = Publisher::new(fake.clone(), config(8)).unwrap();
    let mut futs = Vec::new();
    for n in 0..3 {
        ready(&mut p).await;
        futs.push(p.call(ev(n)));
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    // The connection breaks: every held confirmation fails.
    fake.st().hold = false;
    fake.release(|| Err(PublishError::ConnectionLost { broker: "fake", attempts: 0 }));
    for (n, f) in futs.into_iter().enumerate() {
        let r = f.await.unwrap();
        assert_eq!(r.event.id(), format!("e{n}"));
        assert_eq!(r.sends, 2);
    }
    let st = fake.st();
    assert_eq!(st.connects, 2);
    let resent: Vec<_> = st.sent[3..].iter().map(|(id, a)| (id.as_str(), *a)).collect();
    assert_eq!(resent, [("e0", 1), ("e1", 1), ("e2", 1)]);
}

#[tokio::test(start_paused = true)]
async fn idle_loss_and_confirm_timeout_reconnect() {
    let (fake, mut p) = connected(8, false).await;
    let lost = fake.st().lost.clone().unwrap();
    lost.fire();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(fake.st().connects, 2);
    // A confirmation that never comes: reconnect and re-send after confirm_timeout.
    fake.st().hold = true;
    ready(&mut p).await;
    let f = p.call(ev(9));
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(fake.st().connects, 3);
    assert_eq!(fake.st().sent.last().map(|(id, a)| (id.clone(), *a)), Some(("e9".into(), 1)));
    fake.release(|| Ok(Confirmation::default()));
    assert_eq!(f.await.unwrap().sends, 2);
}

/// `call` only queues the message: the connection task sends it (callers
/// never poll the connection), every message queued by the time it runs,
/// in order.
#[tokio::test(start_paused = true)]
async fn call_queues_and_the_connection_task_sends() {
    let (fake, mut p) = connected(8, true).await;
    let mut futs = Vec::new();
    for n in 0..3 {
        ready(&mut p).await;
        futs.push(p.call(ev(n)));
    }
    assert!(fake.st().sent.is_empty(), "the caller does not send");
    tokio::task::yield_now().await;
    let sent: Vec<_> = fake.st().sent.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(sent, ["e0", "e1", "e2"]);
    fake.release(|| Ok(Confirmation::default()));
    for f in futs {
        assert_eq!(f.await.unwrap().sends, 1);
    }
}

/// Callers on several threads share the connection task: every message
/// is sent once and confirmed, and the task ends once the publishers are
/// gone (it holds the last reference to what they shared).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_on_several_threads_share_the_connection_task() {
    let (fake, p) = connected(16, false).await;
    let weak = Arc::downgrade(&p.handles.shared);
    let tasks: Vec<_> = (0..4u32)
        .map(|t| {
            let mut p = p.clone();
            tokio::spawn(async move {
                let mut pending = FuturesUnordered::new();
                for n in 0..500 {
                    ready(&mut p).await;
                    pending.push(p.call(ev(t * 1000 + n)));
                    if pending.len() >= 8 {
                        pending.next().await.unwrap().unwrap();
                    }
                }
                while let Some(r) = pending.next().await {
                    r.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut ids: Vec<_> = fake.st().sent.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), 2000);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2000, "each message sent once");
    drop(p);
    for _ in 0..100 {
        if weak.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the connection task did not end");
}

/// A publisher whose runtime has shut down refuses messages: its
/// connection task is gone.
#[test]
fn after_its_runtime_shuts_down_calls_fail_as_closed() {
    let first = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let fake = Fake::default();
    fake.st().up = true;
    let mut p = first.block_on(async {
        let mut p = Publisher::new(fake.clone(), config(4)).unwrap();
        p.wait_connected().await.unwrap();
        ready(&mut p).await;
        assert_eq!(p.call(ev(1)).await.unwrap().sends, 1);
        p
    });
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    second.block_on(async {
        let err = p.call(ev(2)).await.unwrap_err();
        assert!(matches!(err, PublishError::Closed), "{err}");
    });
    assert_eq!(fake.st().sent.len(), 1);
}

/// The confirm timeout runs from the oldest unconfirmed message's send:
/// a message confirmed in time moves it on to the next one, which is
/// given its own full timeout (the timer is re-armed only when it fires).
#[tokio::test(start_paused = true)]
async fn confirm_timeout_follows_the_oldest_unconfirmed_message() {
    let (fake, mut p) = connected(8, true).await;
    ready(&mut p).await;
    let first = p.call(ev(1));
    tokio::time::sleep(Duration::from_secs(8)).await;
    ready(&mut p).await;
    let second = p.call(ev(2));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The first is confirmed at 9 s, within its 10 s.
    let reply = fake.st().held.remove(0);
    let _ = reply.send(Ok(Confirmation::default()));
    assert_eq!(first.await.unwrap().sends, 1);
    // At 11 s the first's deadline has passed, the second's (18 s) has not.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fake.st().connects, 1, "no reconnect before the oldest unconfirmed message is due");
    // Past 18 s: the second timed out; reconnect and send it again.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(fake.st().connects, 2);
    assert_eq!(fake.st().sent.last().map(|(id, a)| (id.clone(), *a)), Some(("e2".into(), 1)));
    fake.release(|| Ok(Confirmation::default()));
    assert_eq!(second.await.unwrap().sends, 2);
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_resends_and_fails_per_message_errors() {
    let fake = Fake::default();
    fake.st().up = true;
    fake.st().hold = true;
    let mut p = Publisher::new(fake.clone(), config(8)).unwrap();
    ready(&mut p).await;
    let f = p.call(ev(1));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        fake.release(|| Err(PublishError::ConnectionLost { broker: "fake", attempts: 0 }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(matches!(f.await, Err(PublishError::ConnectionLost { attempts: 3, .. })));
    // A refused message fails alone, without a reconnect.
    let connects = fake.st().connects;
    ready(&mut p).await;
    let f = p.call(ev(2));
    tokio::time::sleep(Duration::from_millis(1)).await;
    fake.release(|| Err(PublishError::Nacked { broker: "fake", reason: None }));
    assert!(matches!(f.await, Err(PublishError::Nacked { .. })));
    assert_eq!(fake.st().connects, connects);
}

#[tokio::test(start_paused = true)]
async fn dropped_future_releases_capacity_on_confirm() {
    let fake = Fake::default();
    fake.st().up = true;
    fake.st().hold = true;
    let mut p = Publisher::new(fake.clone(), config(1)).unwrap();
    ready(&mut p).await;
    drop(p.call(ev(1)));
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(fake.st().sent.len(), 1, "still sent: at least once");
    let mut r = task::spawn(std::future::poll_fn(|cx| p.poll_ready(cx)));
    assert_pending!(r.poll());
    fake.release(|| Ok(Confirmation::default()));
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_ready_ok!(r.poll());
}

/// A connected publisher over `transport` (its fake broker holding the
/// confirmations back if `hold`), and the futures of messages e0, e1...
/// handed in at once.
async fn handed_in<const B: bool, const O: bool>(
    transport: &Declaring<B, O>,
    hold: bool,
    n: u32,
) -> (Publisher<Declaring<B, O>>, Vec<ResponseFuture>) {
    transport.fake.st().up = true;
    transport.fake.st().hold = hold;
    let mut p = Publisher::new(transport.clone(), config(8)).unwrap();
    p.wait_connected().await.unwrap();
    let mut futs = Vec::new();
    for i in 0..n {
        ready(&mut p).await;
        futs.push(p.call(ev(i)));
    }
    (p, futs)
}

/// The fake broker behind a transport that declares it batches (`B`:
/// `publish` only collects the message ids that the next `flush` sends
/// together) or confirms in send order (`O`).
#[derive(Clone, Default)]
struct Declaring<const B: bool, const O: bool> {
    fake: Fake,
    collected: Arc<Mutex<Vec<String>>>,
    flushes: Arc<Mutex<Vec<Vec<String>>>>,
}

type Batching = Declaring<true, false>;
type Ordered = Declaring<false, true>;

impl<const B: bool, const O: bool> Declaring<B, O> {
    fn flushes(&self) -> Vec<Vec<String>> {
        self.flushes.lock().unwrap().clone()
    }
}

impl<const B: bool, const O: bool> Transport for Declaring<B, O> {
    const BROKER: &'static str = "fake";
    const BATCHES: bool = B;
    const CONFIRMS_IN_ORDER: bool = O;
    type Connection = ();
    type Confirm = <Fake as Transport>::Confirm;

    fn connect(&mut self, lost: LostSignal) -> impl Future<Output = Result<(), BoxError>> + Send {
        self.collected.lock().unwrap().clear();
        self.fake.connect(lost)
    }

    fn publish<'a>(
        &'a mut self,
        conn: &'a mut (),
        msg: &'a Outgoing,
    ) -> impl Future<Output = Result<Self::Confirm, PublishError>> + Send + 'a {
        if B {
            self.collected.lock().unwrap().push(msg.event.id().to_owned());
        }
        self.fake.publish(conn, msg)
    }

    fn written(confirm: &mut Self::Confirm) -> bool {
        Fake::written(confirm)
    }

    fn flush<'a>(&'a mut self, _conn: &'a mut ()) -> impl Future<Output = ()> + Send + 'a {
        assert!(B, "flushed a transport that does not batch");
        let batch = std::mem::take(&mut *self.collected.lock().unwrap());
        assert!(!batch.is_empty(), "flushed with nothing published");
        self.flushes.lock().unwrap().push(batch);
        std::future::ready(())
    }
}

fn ids(batches: &[&[u32]]) -> Vec<Vec<String>> {
    batches.iter().map(|b| b.iter().map(|n| format!("e{n}")).collect()).collect()
}

/// With a batching transport the connection task sends the messages:
/// those a caller hands in before it yields go out in one flush, and a
/// message handed in later in the next.
#[tokio::test(start_paused = true)]
async fn a_batching_transport_gets_the_waiting_messages_in_one_flush() {
    let b = Batching::default();
    let (mut p, futs) = handed_in(&b, false, 3).await;
    assert!(b.fake.st().sent.is_empty(), "the caller does not send");
    for f in futs {
        assert_eq!(f.await.unwrap().sends, 1);
    }
    ready(&mut p).await;
    assert_eq!(p.call(ev(3)).await.unwrap().event.id(), "e3");
    assert_eq!(b.flushes(), ids(&[&[0, 1, 2], &[3]]));
}

/// A caller whose response future waits does not send the batch: the
/// connection task sends every message handed in by the time it runs, once.
#[tokio::test(start_paused = true)]
async fn a_waiting_caller_leaves_the_batch_to_the_connection_task() {
    let b = Batching::default();
    let (_p, futs) = handed_in(&b, true, 3).await;
    let mut futs: Vec<_> = futs.into_iter().map(task::spawn).collect();
    for f in &mut futs {
        assert!(f.poll().is_pending());
    }
    assert!(b.flushes().is_empty(), "handing in and waiting send nothing");
    tokio::task::yield_now().await;
    assert_eq!(b.flushes(), ids(&[&[0, 1, 2]]), "sent once, together");
    b.fake.release(|| Ok(Confirmation::default()));
    tokio::time::sleep(Duration::from_millis(1)).await;
    for mut f in futs {
        assert!(f.is_woken());
        assert_ready_ok!(f.poll());
    }
}

/// After a reconnect the unconfirmed messages are sent again, flushed in
/// order before the messages handed in meanwhile.
#[tokio::test(start_paused = true)]
async fn a_batching_transport_gets_the_resent_messages_flushed_in_order() {
    let b = Batching::default();
    let (mut p, mut futs) = handed_in(&b, true, 3).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(b.flushes(), ids(&[&[0, 1, 2]]));
    b.fake.st().hold = false;
    b.fake.release(|| Err(PublishError::ConnectionLost { broker: "fake", attempts: 0 }));
    ready(&mut p).await;
    futs.push(p.call(ev(3)));
    for (n, f) in futs.into_iter().enumerate() {
        let r = f.await.unwrap();
        assert_eq!((r.event.id(), r.sends), (format!("e{n}").as_str(), if n < 3 { 2 } else { 1 }));
    }
    let flushes = b.flushes();
    assert_eq!(flushes[..1], ids(&[&[0, 1, 2]]));
    // e3, handed in during the reconnect, may join the re-sent batch.
    assert_eq!(flushes[1..].concat(), ["e0", "e1", "e2", "e3"]);
}

/// Confirmations in send order are polled from the oldest: one that
/// comes early is seen once the older ones came, and each message
/// gets its own result.
#[tokio::test(start_paused = true)]
async fn in_order_confirmations_settle_from_the_oldest() {
    let o = Ordered::default();
    let (p, futs) = handed_in(&o, true, 3).await;
    let mut futs: Vec<_> = futs.into_iter().map(task::spawn).collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let held: Vec<_> = o.fake.st().held.drain(..).collect();
    let mut held = held.into_iter();
    let (first, second, third) = (held.next().unwrap(), held.next().unwrap(), held.next().unwrap());
    // The newest is confirmed first: it waits for the others.
    third.send(Ok(Confirmation { sequence: Some(3), ..Default::default() })).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(futs.iter_mut().all(|f| f.poll().is_pending()));
    second.send(Err(PublishError::Nacked { broker: "fake", reason: None })).unwrap();
    first.send(Ok(Confirmation { sequence: Some(1), ..Default::default() })).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let mut results = futs.into_iter().map(|mut f| match f.poll() {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("settled once the oldest came"),
    });
    assert_eq!(results.next().unwrap().unwrap().confirmation.sequence, Some(1));
    assert!(matches!(results.next().unwrap(), Err(PublishError::Nacked { .. })));
    assert_eq!(results.next().unwrap().unwrap().confirmation.sequence, Some(3));
    assert_eq!(p.in_flight(), 0);
}

/// A connection lost with in-order confirmations outstanding: every
/// unconfirmed message is sent again, in order, and confirmed once.
#[tokio::test(start_paused = true)]
async fn in_order_confirmations_survive_a_lost_connection() {
    let o = Ordered::default();
    let (_p, futs) = handed_in(&o, true, 4).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    // The first is confirmed, then the connection breaks.
    let first = o.fake.st().held.remove(0);
    first.send(Ok(Confirmation::default())).unwrap();
    o.fake.st().hold = false;
    o.fake.release(|| Err(PublishError::ConnectionLost { broker: "fake", attempts: 0 }));
    let sends: Vec<_> = futures_util::future::join_all(futs).await.into_iter().map(|r| r.unwrap().sends).collect();
    assert_eq!(sends, [1, 2, 2, 2]);
    let st = o.fake.st();
    let resent: Vec<_> = st.sent[4..].iter().map(|(id, a)| (id.as_str(), *a)).collect();
    assert_eq!(resent, [("e1", 1), ("e2", 1), ("e3", 1)]);
}

/// Break the fake's connection: every held confirmation fails with a
/// connection error.
fn cut(fake: &Fake) {
    fake.release(|| Err(PublishError::ConnectionLost { broker: "fake", attempts: 0 }));
}

/// A message written to a connection that broke is sent again although
/// its caller gave up, even when the reconnect fails first (the broker
/// may hold it; the rule: re-send what was written, drop only what was
/// never sent).
#[tokio::test(start_paused = true)]
async fn a_written_message_whose_caller_gave_up_is_sent_again_after_an_outage() {
    let (fake, mut p) = connected(8, true).await;
    ready(&mut p).await;
    drop(p.call(ev(1)));
    tokio::task::yield_now().await;
    assert_eq!(fake.st().sent, [("e1".to_owned(), 0)]);
    // The broker goes away with the connection: the reconnect fails.
    fake.st().up = false;
    cut(&fake);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(p.state(), ConnectionState::Down);
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.st().up = true;
    fake.st().hold = false;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(p.state(), ConnectionState::Connected);
    assert_eq!(fake.st().sent, [("e1".to_owned(), 0), ("e1".to_owned(), 1)], "re-sent, as a re-send");
    assert_eq!(p.in_flight(), 0, "confirmed, its capacity released");
}

/// A message the connection never got (it broke as the message was
/// handed over) is dropped if its caller gave up meanwhile; one whose
/// caller still waits goes on the next connection as a first send.
#[tokio::test(start_paused = true)]
async fn a_message_never_written_is_sent_once_or_dropped_if_abandoned() {
    let (fake, mut p) = connected(8, false).await;
    fake.st().refuse = vec!["e1".into(), "e2".into()];
    fake.st().up = false;
    ready(&mut p).await;
    let kept = p.call(ev(1));
    ready(&mut p).await;
    drop(p.call(ev(2)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.st().up = true;
    let r = kept.await.unwrap();
    assert_eq!((r.sends, r.resent()), (1, false), "written once: not a re-send");
    assert_eq!(fake.st().sent, [("e1".to_owned(), 0)], "e2 never sent: its caller gave up");
    assert_eq!(p.in_flight(), 0);
}

/// Confirmations whose messages the transport says were never written
/// to the broken connection (still queued in the client) are not counted:
/// those messages are sent once more as first sends, and do not use up
/// `max_resends`; a written one counts as a re-send.
#[tokio::test(start_paused = true)]
async fn messages_a_broken_connection_never_wrote_are_not_counted_as_resent() {
    async fn check<const O: bool>() {
        let d = Declaring::<false, O>::default();
        d.fake.st().unwritten = vec!["e1".into(), "e2".into(), "e3".into()];
        let (mut p, mut futs) = handed_in(&d, true, 1).await;
        for n in 1..4 {
            ready(&mut p).await;
            futs.push(p.call(ev(n)));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        // More cuts than max_resends (2): the unwritten ones never fail for it.
        for _ in 0..3 {
            cut(&d.fake);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        d.fake.st().hold = false;
        d.fake.st().unwritten.clear();
        cut(&d.fake);
        let mut sends = Vec::new();
        for f in futs {
            match f.await {
                Ok(r) => sends.push(Some(r.sends)),
                Err(PublishError::ConnectionLost { attempts, .. }) => sends.push(Some(100 + attempts)),
                Err(e) => panic!("{e}"),
            }
        }
        // e0 was written each time: it hit max_resends (3 sends). e1..e3
        // were never written until the last connection: sent once.
        assert_eq!(sends, [Some(103), Some(1), Some(1), Some(1)], "in order: {O}");
        let st = d.fake.st();
        assert!(st.sent.iter().filter(|(id, _)| id != "e0").all(|(_, attempt)| *attempt == 0), "{:?}", st.sent);
    }
    check::<true>().await;
    check::<false>().await;
}

/// While the first connection is being made (a broker that accepts and
/// never answers), readiness does not wait for it: the message waits in
/// its response future, which a 1 s timeout above bounds — the call
/// fails with the timeout's typed error at 1 s, not after the 5 s
/// connect timeout.
#[cfg(feature = "timeout")]
#[tokio::test(start_paused = true)]
async fn a_timeout_above_bounds_a_call_made_while_connecting() {
    use tower::ServiceExt;
    use tower_layer::Layer;
    let fake = Fake::default();
    fake.st().up = true;
    fake.st().hang = true;
    let p = Publisher::new(fake.clone(), PublisherConfig::default()).unwrap();
    let mut svc = crate::timeout::TimeoutLayer::new(Duration::from_secs(1)).layer(p.clone());
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(ev(1)).await.unwrap_err();
    let elapsed = err.downcast_ref::<crate::timeout::Elapsed>().expect("the timeout's error");
    assert_eq!(elapsed.kind(), crate::timeout::TimeoutKind::Total);
    // Paused time: the instant the timeout fired, not the wall clock.
    assert_eq!(Instant::now() - start, Duration::from_secs(1));
    assert!(fake.st().sent.is_empty());
    assert_eq!(p.state(), ConnectionState::Connecting);
}

/// Without `outage_wait`, a message handed in while connecting fails
/// with `Unavailable` as soon as that attempt fails.
#[tokio::test(start_paused = true)]
async fn a_message_handed_in_while_connecting_fails_when_the_attempt_fails() {
    let fake = Fake::default();
    let mut p = Publisher::new(fake.clone(), config(8)).unwrap();
    assert_eq!(p.state(), ConnectionState::Connecting);
    ready(&mut p).await;
    let err = p.call(ev(1)).await.unwrap_err();
    assert!(matches!(err, PublishError::Unavailable { .. }), "{err}");
    assert_eq!(p.in_flight(), 0);
}

fn waiting(max_in_flight: usize, wait: Duration) -> PublisherConfig {
    PublisherConfig { outage_wait: wait, ..config(max_in_flight) }
}

/// With `outage_wait`, messages handed in while the broker is down wait
/// for it (holding in-flight capacity, so `poll_ready` stops a producer
/// at `max_in_flight`) and go out once, in order, when it is back.
#[tokio::test(start_paused = true)]
async fn outage_wait_holds_messages_until_the_broker_is_back() {
    let fake = Fake::default();
    let mut p = Publisher::new(fake.clone(), waiting(3, Duration::from_secs(60))).unwrap();
    assert!(p.wait_connected().await.is_err());
    let mut futs = Vec::new();
    for n in 0..3 {
        ready(&mut p).await;
        futs.push(task::spawn(p.call(ev(n))));
    }
    let mut r = task::spawn(std::future::poll_fn(|cx| p.poll_ready(cx)));
    assert_pending!(r.poll(), "no room: the producer waits");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(futs.iter_mut().all(|f| f.poll().is_pending()), "still waiting after 30 s");
    assert!(fake.st().sent.is_empty());
    fake.st().up = true;
    for (n, f) in futs.into_iter().enumerate() {
        let r = f.await.unwrap();
        assert_eq!((r.event.id(), r.sends), (format!("e{n}").as_str(), 1));
    }
    assert!(r.is_woken());
    assert_ready_ok!(r.poll());
    let sent: Vec<_> = fake.st().sent.iter().map(|(id, a)| (id.clone(), *a)).collect();
    assert_eq!(sent, [("e0".into(), 0), ("e1".into(), 0), ("e2".into(), 0)]);
}

/// A message still unsent after `outage_wait` fails with `Unavailable`
/// (at that time, between connection attempts), and one whose caller
/// gave up meanwhile is never sent.
#[tokio::test(start_paused = true)]
async fn outage_wait_fails_a_message_after_its_wait() {
    let fake = Fake::default();
    let cfg = PublisherConfig {
        reconnect: ReconnectBackoff { initial: Duration::from_secs(10), multiplier: 2.0, max: Duration::from_secs(10) },
        ..waiting(4, Duration::from_secs(2))
    };
    let mut p = Publisher::new(fake.clone(), cfg).unwrap();
    assert!(p.wait_connected().await.is_err());
    ready(&mut p).await;
    drop(p.call(ev(0)));
    ready(&mut p).await;
    let start = Instant::now();
    let err = p.call(ev(1)).await.unwrap_err();
    assert!(matches!(err, PublishError::Unavailable { .. }), "{err}");
    assert_eq!(Instant::now() - start, Duration::from_secs(2), "failed when its wait ended");
    fake.st().up = true;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(p.state(), ConnectionState::Connected);
    assert!(fake.st().sent.is_empty(), "neither was sent");
    assert_eq!(p.in_flight(), 0);
}

#[test]
fn outside_a_runtime_is_an_error() {
    assert!(matches!(Publisher::new(Fake::default(), config(1)), Err(PublishError::NoRuntime)));
    let bad = PublisherConfig { max_in_flight: 0, ..Default::default() };
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let _g = rt.enter();
    assert!(matches!(Publisher::new(Fake::default(), bad), Err(PublishError::Config(_))));
}
