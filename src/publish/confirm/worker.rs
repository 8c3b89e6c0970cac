//! The connection task: a worker fed by a bounded channel, in the shape of
//! `tower::buffer`'s worker. It owns the transport and every unconfirmed
//! message; callers only queue their messages and wait for the reply.
//!
//! [`Worker::run`] goes round three steps for each connection:
//! [`connect`](Worker::connect) (with backoff, holding the messages handed
//! in while down), [`resend`](Worker::resend) (what the last connection
//! left unconfirmed, in order) and [`steady`](Worker::steady) (send what is
//! handed in, settle what is confirmed, until the connection breaks).

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::time::{Instant, Sleep};

use super::queue::{is_connection_error, ConfirmResult, Confirms, Pending};
use super::{Confirmation, ConnectionState, Job, LostSignal, Receipt, Shared, Transport};
use crate::error::BoxError;
use crate::publish::config::PublisherConfig;
use crate::publish::error::PublishError;

/// The connection task's state: the transport, the channel the publisher's
/// handles feed, and the messages not settled yet.
pub(super) struct Worker<T: Transport> {
    transport: T,
    rx: mpsc::Receiver<Job>,
    /// Every publisher handle is gone: no message will come any more.
    rx_closed: bool,
    shared: Arc<Shared>,
    config: PublisherConfig,
    /// Messages handed to a connection and not settled, in send order.
    pending: Pending,
    /// The sequence number of the next message sent.
    next_seq: u64,
    /// Messages never sent, taken while not connected (to fail them after
    /// [`outage_wait`](PublisherConfig::outage_wait)): sent first, in order,
    /// once connected.
    backlog: VecDeque<Job>,
    metrics: WorkerMetrics,
}

/// One open connection and what the worker waits for on it.
struct Link<T: Transport> {
    /// Dropped before the connection.
    confirms: Confirms<T::Confirm>,
    conn: T::Connection,
    lost: LostSignal,
    /// Due no later than the oldest unconfirmed message's confirm timeout.
    timer: Pin<Box<Sleep>>,
    /// Messages were published and not flushed yet (a batching transport).
    unflushed: bool,
    /// The time, read once for all the messages one poll of the task
    /// handles (cleared when the task waits).
    clock: Option<Instant>,
}

impl<T: Transport> Link<T> {
    /// The time `clock` holds, read now if it holds none.
    fn now(&mut self) -> Instant {
        *self.clock.get_or_insert_with(Instant::now)
    }
}

/// What the steady state does next.
enum Step {
    Job(Job),
    RxClosed,
    /// A confirmation came; the flag says whether the message was written
    /// (for a connection error).
    Confirmed(u64, ConfirmResult, bool),
    Lost,
    Timeout,
    /// Messages were published and no other one is waiting: flush them.
    Flush,
}

/// How a step left the connection.
#[derive(PartialEq, Eq)]
enum Flow {
    /// Up: go on.
    Up,
    /// Broken: reconnect and send the unconfirmed messages again.
    Broken,
    /// Every handle is gone and every message settled: the task ends.
    Done,
}

/// The metric handles the worker records on, made once (a failure's
/// counter, by its kind, is looked up when it happens: failures are rare).
struct WorkerMetrics {
    succeeded: metrics::Counter,
    confirm_seconds: metrics::Histogram,
    resent: metrics::Counter,
    connect_failures: metrics::Counter,
    reconnects: metrics::Counter,
}

impl WorkerMetrics {
    fn new(shared: &Shared) -> Self {
        let labels = [("service", shared.name.to_string()), ("broker", shared.broker.to_string())];
        let success = [labels[0].clone(), labels[1].clone(), ("outcome", "success".to_owned())];
        WorkerMetrics {
            succeeded: metrics::counter!("tower_mesh_publish_total", &success),
            confirm_seconds: metrics::histogram!("tower_mesh_publish_confirm_seconds", &labels),
            resent: metrics::counter!("tower_mesh_publish_resent_total", &labels),
            connect_failures: metrics::counter!("tower_mesh_publish_connect_failures_total", &labels),
            reconnects: metrics::counter!("tower_mesh_publish_reconnects_total", &labels),
        }
    }
}

impl<T: Transport> Worker<T> {
    pub(super) fn new(transport: T, rx: mpsc::Receiver<Job>, shared: Arc<Shared>, config: PublisherConfig) -> Self {
        Worker {
            transport,
            rx,
            rx_closed: false,
            metrics: WorkerMetrics::new(&shared),
            shared,
            config,
            pending: Pending::default(),
            next_seq: 0,
            backlog: VecDeque::new(),
        }
    }

    /// The connection task: connect, re-send, steady state; again after
    /// every broken connection, until every handle is gone and every
    /// message settled.
    pub(super) async fn run(mut self) {
        while let Some(mut link) = self.connect().await {
            if self.resend(&mut link).await == Flow::Up && self.steady(&mut link).await == Flow::Done {
                return;
            }
            self.disconnect(link);
        }
    }

    /// Every handle is gone and no message is left to settle.
    fn finished(&self) -> bool {
        self.rx_closed && self.pending.is_empty() && self.backlog.is_empty()
    }

    /// Connect, with backoff; `None` once [`finished`](Self::finished).
    async fn connect(&mut self) -> Option<Link<T>> {
        let mut failures = 0u32;
        loop {
            if self.finished() {
                return None;
            }
            let lost = LostSignal::default();
            let attempt = tokio::time::timeout(self.config.connect_timeout, self.transport.connect(lost.clone()));
            let err: BoxError = match attempt.await {
                Ok(Ok(conn)) => {
                    self.shared.set_state(ConnectionState::Connected);
                    return Some(Link {
                        conn,
                        lost,
                        confirms: Confirms::new(T::CONFIRMS_IN_ORDER, T::written),
                        // Armed before the re-sends, so that it is due no later than any of them.
                        timer: Box::pin(tokio::time::sleep(self.config.confirm_timeout)),
                        unflushed: false,
                        clock: None,
                    });
                }
                Ok(Err(e)) => e,
                Err(_) => "connection attempt timed out".into(),
            };
            self.down(err);
            let wake_at = Instant::now() + self.config.reconnect.delay(failures);
            failures = failures.saturating_add(1);
            self.wait_down(wake_at).await;
        }
    }

    /// A connection attempt failed: report it, and drop the messages never
    /// written whose callers gave up.
    fn down(&mut self, err: BoxError) {
        tracing::warn!(service = %self.shared.name, broker = self.shared.broker, error = %err, "publisher could not connect");
        self.metrics.connect_failures.increment(1);
        *self.shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::from(err));
        self.shared.set_state(ConnectionState::Down);
        // A message that was never written and whose caller gave up is
        // dropped; one that was written is kept to be sent again (the broker
        // may have it, and its caller was told nothing).
        let before = self.pending.len();
        self.pending.retain(|job| job.sends > 0 || !job.reply.is_closed());
        self.abandoned(before - self.pending.len());
        // The messages handed in meanwhile wait here (never sent), each at
        // most `outage_wait`.
        while !self.rx_closed {
            match self.rx.try_recv() {
                Ok(job) => self.backlog.push_back(job),
                Err(TryRecvError::Disconnected) => self.rx_closed = true,
                Err(TryRecvError::Empty) => break,
            }
        }
        self.expire_backlog();
    }

    /// While down, until `wake_at` (the next connection attempt): take the
    /// messages handed in and fail each that waited its `outage_wait`.
    async fn wait_down(&mut self, wake_at: Instant) {
        let mut sleep = Box::pin(tokio::time::sleep_until(wake_at));
        while Instant::now() < wake_at && !self.finished() {
            let due = self.backlog.iter().filter_map(|job| self.due(job)).min();
            sleep.as_mut().reset(due.map_or(wake_at, |due| due.min(wake_at)));
            let arrived = poll_fn(|cx| {
                if !self.rx_closed {
                    if let Poll::Ready(job) = self.rx.poll_recv(cx) {
                        return Poll::Ready(Some(job));
                    }
                }
                sleep.as_mut().poll(cx).map(|()| None)
            })
            .await;
            match arrived {
                Some(Some(job)) => self.backlog.push_back(job),
                Some(None) => self.rx_closed = true,
                None => {}
            }
            self.expire_backlog();
        }
    }

    /// Send again what the last connection left unconfirmed, in order: a
    /// re-send if it was written, else a first send.
    async fn resend(&mut self, link: &mut Link<T>) -> Flow {
        for seq in self.pending.seqs() {
            let Some(job) = self.pending.get_mut(seq) else { continue };
            if job.sends == 0 && job.reply.is_closed() {
                drop(self.pending.remove(seq));
                self.abandoned(1);
                continue;
            }
            if job.sends > self.config.max_resends {
                let job = self.pending.remove(seq).expect("present");
                let err = PublishError::ConnectionLost { broker: self.shared.broker, attempts: job.sends };
                self.settle(job, Err(err), Instant::now());
                continue;
            }
            let again = job.sends > 0;
            match send(&mut self.transport, &mut link.conn, job, Instant::now()).await {
                Ok(fut) => {
                    if again {
                        self.metrics.resent.increment(1);
                    }
                    link.confirms.push(seq, fut);
                    link.unflushed = T::BATCHES;
                }
                Err(e) if is_connection_error(&e) => return Flow::Broken,
                Err(e) => {
                    let job = self.pending.remove(seq).expect("present");
                    self.settle(job, Err(e), Instant::now());
                }
            }
        }
        Flow::Up
    }

    /// The steady state: send what is handed in, settle what is confirmed,
    /// until the connection breaks or the task is done.
    async fn steady(&mut self, link: &mut Link<T>) -> Flow {
        loop {
            let flow = match poll_fn(|cx| self.poll_step(link, cx)).await {
                Step::Job(job) => self.on_job(link, job).await,
                Step::RxClosed => {
                    self.rx_closed = true;
                    if self.finished() {
                        Flow::Done
                    } else {
                        Flow::Up
                    }
                }
                Step::Confirmed(seq, res, written) => self.on_confirmed(link, seq, res, written),
                Step::Flush => {
                    link.unflushed = false;
                    self.transport.flush(&mut link.conn).await;
                    Flow::Up
                }
                Step::Lost => Flow::Broken,
                Step::Timeout => {
                    tracing::warn!(service = %self.shared.name, broker = self.shared.broker, "no confirmation in time; reconnecting");
                    Flow::Broken
                }
            };
            if flow != Flow::Up {
                return flow;
            }
        }
    }

    /// The next step of the steady state. Each step looks only for work;
    /// the wakers are registered once there is none left, just before the
    /// task waits (a step would register the same waker again).
    fn poll_step(&mut self, link: &mut Link<T>, cx: &mut Context<'_>) -> Poll<Step> {
        if link.lost.is_fired() {
            return Poll::Ready(Step::Lost);
        }
        if let Poll::Ready((seq, res, written)) = link.confirms.poll_next(cx) {
            return Poll::Ready(Step::Confirmed(seq, res, written));
        }
        // Messages that waited for the connection go first, in order.
        if let Some(job) = self.backlog.pop_front() {
            return Poll::Ready(Step::Job(job));
        }
        if !self.rx_closed {
            match self.rx.try_recv() {
                Ok(job) => return Poll::Ready(Step::Job(job)),
                Err(TryRecvError::Disconnected) => return Poll::Ready(Step::RxClosed),
                Err(TryRecvError::Empty) => {}
            }
        }
        if link.unflushed {
            return Poll::Ready(Step::Flush);
        }
        if link.lost.poll(cx).is_ready() {
            return Poll::Ready(Step::Lost);
        }
        if !self.rx_closed {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(job)) => return Poll::Ready(Step::Job(job)),
                Poll::Ready(None) => return Poll::Ready(Step::RxClosed),
                Poll::Pending => {}
            }
        }
        if let Some(oldest) = self.pending.first() {
            // The timer's deadline is never later than the oldest message's
            // (deadlines only grow), so it is re-armed only when it fires,
            // not as every message is confirmed.
            while link.timer.as_mut().poll(cx).is_ready() {
                let deadline = oldest.sent_at.map_or(link.timer.deadline(), |t| t + self.config.confirm_timeout);
                if deadline <= link.timer.deadline() {
                    return Poll::Ready(Step::Timeout);
                }
                link.timer.as_mut().reset(deadline);
            }
        }
        link.clock = None;
        Poll::Pending
    }

    /// Hand a message to the connection.
    async fn on_job(&mut self, link: &mut Link<T>, mut job: Job) -> Flow {
        let seq = self.next_seq;
        self.next_seq += 1;
        let now = link.now();
        let sent = send(&mut self.transport, &mut link.conn, &mut job, now).await;
        // Handing it over may have waited (for room in the client's queue).
        link.clock = None;
        match sent {
            Ok(fut) => {
                link.confirms.push(seq, fut);
                self.pending.insert(seq, job);
                link.unflushed = T::BATCHES;
            }
            Err(e) if is_connection_error(&e) => {
                // Not handed over: sent on the next connection, as a first send.
                self.pending.insert(seq, job);
                return Flow::Broken;
            }
            Err(e) => {
                let now = link.now();
                self.settle(job, Err(e), now);
            }
        }
        Flow::Up
    }

    /// A confirmation came: settle its message, or note a broken connection.
    fn on_confirmed(&mut self, link: &mut Link<T>, seq: u64, res: ConfirmResult, written: bool) -> Flow {
        if matches!(&res, Err(e) if is_connection_error(e)) {
            if !written {
                self.unwritten(seq);
            }
            return Flow::Broken;
        }
        if let Some(job) = self.pending.remove(seq) {
            let now = link.now();
            self.settle(job, res, now);
            if self.finished() {
                return Flow::Done;
            }
        }
        Flow::Up
    }

    /// The connection broke: the messages it never got are not counted as
    /// sent (the next connection gets them as first sends).
    fn disconnect(&mut self, mut link: Link<T>) {
        for seq in link.confirms.unwritten() {
            self.unwritten(seq);
        }
        tracing::warn!(service = %self.shared.name, broker = self.shared.broker, unconfirmed = self.pending.len(), "publisher connection lost; reconnecting");
        self.metrics.reconnects.increment(1);
        drop(link);
        self.shared.set_state(ConnectionState::Connecting);
    }

    /// The message `seq` turned out not to have reached the connection it
    /// was handed to: that send does not count.
    fn unwritten(&mut self, seq: u64) {
        if let Some(job) = self.pending.get_mut(seq) {
            job.sends = job.sends.saturating_sub(1);
        }
    }

    /// Count `n` messages dropped unsent because their callers gave up.
    fn abandoned(&self, n: usize) {
        if n > 0 {
            tracing::debug!(service = %self.shared.name, broker = self.shared.broker, messages = n, "dropped messages never sent whose callers gave up");
            metrics::counter!("tower_mesh_publish_abandoned_total", "service" => self.shared.name.to_string(), "broker" => self.shared.broker)
                .increment(n as u64);
        }
    }

    /// When the waiting message `job` fails, unless the connection is back:
    /// `None` for one accepted while connected (it waits).
    fn due(&self, job: &Job) -> Option<Instant> {
        job.queued_unconnected.map(|queued| queued + self.config.outage_wait)
    }

    /// Fail the waiting messages handed in while not connected that have
    /// waited [`outage_wait`](PublisherConfig::outage_wait), with
    /// [`PublishError::Unavailable`], and drop those whose callers gave up
    /// (none was ever sent).
    fn expire_backlog(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        let now = Instant::now();
        let before = self.backlog.len();
        self.backlog.retain(|job| !job.reply.is_closed());
        self.abandoned(before - self.backlog.len());
        for job in std::mem::take(&mut self.backlog) {
            if self.due(&job).is_some_and(|due| due <= now) {
                self.settle(job, Err(self.shared.unavailable()), now);
            } else {
                self.backlog.push_back(job);
            }
        }
    }

    /// Tell a message's caller its result, and record it.
    fn settle(&self, job: Job, res: Result<Confirmation, PublishError>, now: Instant) {
        let (shared, m) = (&self.shared, &self.metrics);
        match &res {
            Ok(_) => {
                m.succeeded.increment(1);
                if let Some(sent_at) = job.sent_at {
                    m.confirm_seconds.record(now.saturating_duration_since(sent_at).as_secs_f64());
                }
            }
            Err(e) => metrics::counter!("tower_mesh_publish_total", "service" => shared.name.to_string(), "broker" => shared.broker, "outcome" => e.kind())
                .increment(1),
        }
        let Job { out, reply, sends, _permit: permit, .. } = job;
        // The capacity first: the caller, told next, may want it for its next message at once.
        drop(permit);
        let res = res.map(|confirmation| Receipt { event: out.event, broker: shared.broker, confirmation, sends });
        // The caller may have dropped its future: nothing to tell then.
        let _ = reply.send(res);
    }
}

/// Hand `job` to the connection, as sent at `now`.
async fn send<T: Transport>(
    transport: &mut T,
    conn: &mut T::Connection,
    job: &mut Job,
    now: Instant,
) -> Result<T::Confirm, PublishError> {
    job.out.attempt = job.sends;
    job.sent_at = Some(now);
    let handed = transport.publish(conn, &job.out).await;
    // Counted once handed over; not when it failed (it never reached the
    // connection), nor, later, if the transport says it was not written.
    if handed.is_ok() {
        job.sends += 1;
    }
    handed
}
