use proptest::prelude::{Just, Strategy};

use super::*;

#[test]
fn subjects() {
    assert!(valid_subject("orders.created"));
    assert!(!valid_subject("orders.*"));
    assert!(!valid_subject("orders.>"));
    assert!(!valid_subject("orders..created"));
    assert!(!valid_subject("orders created"));
    assert!(!valid_subject(""));
    assert!(!valid_subject("orders."));
    assert!(!valid_subject(".orders"));
    assert!(!valid_subject(&"a".repeat(1025)));
}

proptest::proptest! {
    /// The one-pass check gives the answers of its definition.
    #[test]
    fn subject_check_follows_its_definition(s in "[a-z.*> \\t\\x00é]{0,12}") {
        let defined = !s.is_empty()
            && s.len() <= 1024
            && s.split('.').all(|t| !t.is_empty() && t != "*" && t != ">")
            && s.bytes().all(|b| b.is_ascii_graphic());
        proptest::prop_assert_eq!(valid_subject(&s), defined);
    }
}

/// An inbox whose acks the test hands in.
#[derive(Default)]
struct Inbox {
    queue: VecDeque<async_nats::Message>,
    closed: bool,
}

impl Stream for Inbox {
    type Item = async_nats::Message;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.queue.pop_front() {
            Some(m) => Poll::Ready(Some(m)),
            None if self.closed => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

fn reply(n: u64, payload: &str) -> async_nats::Message {
    async_nats::Message {
        subject: format!("_INBOX.abc.{n}").into(),
        reply: None,
        payload: payload.to_owned().into(),
        headers: None,
        status: None,
        description: None,
        length: payload.len(),
    }
}

fn ack(n: u64, seq: u64) -> async_nats::Message {
    reply(n, &format!(r#"{{"stream":"S","seq":{seq}}}"#))
}

/// `n` messages sent: a slot each, numbered from 0.
fn sent(n: u64) -> Acks<Inbox> {
    let mut acks = Acks::new(Inbox::default());
    for i in 0..n {
        assert_eq!(acks.add(), i);
    }
    acks
}

fn poll(acks: &mut Acks<Inbox>, n: u64) -> Poll<Result<Confirmation, PublishError>> {
    acks.poll_ack(n, &mut Context::from_waker(std::task::Waker::noop()))
}

fn sequence(p: Poll<Result<Confirmation, PublishError>>) -> Option<u64> {
    match p {
        Poll::Ready(Ok(c)) => c.sequence,
        other => panic!("not confirmed: {other:?}"),
    }
}

#[test]
fn acks_that_come_early_are_kept_for_their_message() {
    let mut acks = sent(3);
    acks.inbox.queue.extend([ack(2, 12), ack(1, 11)]);
    // The oldest waits; reading the inbox kept the younger ones' acks.
    assert!(poll(&mut acks, 0).is_pending());
    assert!(acks.inbox.queue.is_empty());
    acks.inbox.queue.push_back(ack(0, 10));
    assert_eq!(sequence(poll(&mut acks, 0)), Some(10));
    assert_eq!(sequence(poll(&mut acks, 1)), Some(11));
    assert_eq!(sequence(poll(&mut acks, 2)), Some(12));
    assert!(acks.slots.is_empty(), "taken slots are freed");
    assert_eq!(acks.base, 3);
}

#[test]
fn a_dropped_confirmation_frees_its_slot_and_stray_acks_are_ignored() {
    let mut acks = sent(3);
    acks.forget(1);
    assert_eq!(acks.slots.len(), 3, "a slot behind a waiting one stays");
    // An ack for a forgotten message, for one never sent, and one that
    // is not ours: none of them is kept.
    acks.inbox.queue.extend([
        ack(1, 11),
        ack(7, 17),
        async_nats::Message { subject: "_INBOX.abc.x".into(), ..reply(0, "") },
    ]);
    assert!(poll(&mut acks, 0).is_pending());
    assert!(matches!(acks.slots[1], Slot::Gone));
    acks.forget(0);
    assert_eq!((acks.base, acks.slots.len()), (2, 1), "the front is trimmed past every freed slot");
    acks.inbox.queue.push_back(ack(2, 12));
    assert_eq!(sequence(poll(&mut acks, 2)), Some(12));
    assert!(acks.slots.is_empty());
}

#[test]
fn a_closed_inbox_loses_the_connection_but_keeps_acks_already_read() {
    let mut acks = sent(2);
    acks.inbox.queue.push_back(ack(1, 11));
    acks.inbox.closed = true;
    assert!(matches!(poll(&mut acks, 0), Poll::Ready(Err(PublishError::ConnectionLost { .. }))));
    assert_eq!(sequence(poll(&mut acks, 1)), Some(11));
}

#[test]
fn replies_map_to_typed_results() {
    let no_responders = async_nats::Message { status: Some(async_nats::StatusCode::NO_RESPONDERS), ..reply(0, "") };
    assert!(matches!(read_ack(&no_responders), Err(PublishError::Unroutable { .. })));
    let dup = read_ack(&reply(0, r#"{"stream":"S","seq":4,"duplicate":true}"#)).unwrap();
    assert_eq!(dup, Confirmation { sequence: Some(4), partition: None, duplicate: true });
    let full = r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#;
    assert!(
        matches!(read_ack(&reply(0, full)), Err(PublishError::Nacked { reason: Some(r), .. }) if r.contains("maximum messages"))
    );
    let wrong = r#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 3"}}"#;
    assert!(
        matches!(read_ack(&reply(0, wrong)), Err(PublishError::Rejected { reason, .. }) if reason.contains("wrong last sequence"))
    );
    for bad in ["", "{", r#"{"stream":"S"}"#] {
        assert!(matches!(read_ack(&reply(0, bad)), Err(PublishError::Client { .. })), "{bad:?}");
    }
}

proptest::proptest! {
    /// Whatever order the acks come in and whichever confirmations are
    /// dropped, each kept message gets its own ack, and every slot is
    /// freed once all are settled.
    #[test]
    fn every_message_gets_its_own_ack(
        order in Just((0u64..24).collect::<Vec<_>>()).prop_shuffle(),
        dropped in proptest::collection::vec(proptest::bool::weighted(0.2), 24),
    ) {
        let mut acks = sent(24);
        for (n, _) in dropped.iter().enumerate().filter(|(_, d)| **d) {
            acks.forget(n as u64);
        }
        acks.inbox.queue.extend(order.iter().map(|&n| ack(n, 100 + n)));
        for n in (0..24u64).filter(|&n| !dropped[n as usize]) {
            proptest::prop_assert_eq!(sequence(poll(&mut acks, n)), Some(100 + n));
        }
        proptest::prop_assert!(acks.slots.is_empty());
        proptest::prop_assert_eq!(acks.base, 24);
    }
}

#[test]
fn headers_carry_the_attributes() {
    let e = Event::builder("/s", "t.x")
        .correlation_id("c-1")
        .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .build()
        .unwrap();
    let h = Nats::headers(&Outgoing::new(e.clone(), super::super::ContentMode::Structured));
    assert_eq!(h.get("Nats-Msg-Id").map(|v| v.as_str()), Some(e.id()));
    assert_eq!(h.get("ce-type").map(|v| v.as_str()), Some("t.x"));
    assert_eq!(h.get("ce-correlationid").map(|v| v.as_str()), Some("c-1"));
    assert!(h.get("traceparent").is_some());
    assert_eq!(h.get("content-type").map(|v| v.as_str()), Some("application/cloudevents+json"));
}
