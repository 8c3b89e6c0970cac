use super::super::ContentMode;
use super::*;

#[test]
fn fields_carry_the_attributes_and_body() {
    let e = Event::builder("/s", "t.x")
        .correlation_id("c-1")
        .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .build()
        .unwrap();
    let msg = Outgoing::new(e.clone(), ContentMode::Structured);
    let fields = Redis::fields(&msg);
    let get = |k: &str| fields.iter().find(|(n, _)| *n == k).map(|(_, v)| std::str::from_utf8(v).unwrap());
    assert_eq!(get("id"), Some(e.id()));
    assert_eq!(get("type"), Some("t.x"));
    assert_eq!(get("correlationid"), Some("c-1"));
    assert!(get("traceparent").is_some());
    assert_eq!(get(CONTENT_TYPE_FIELD), Some("application/cloudevents+json"));
    let back = Redis::event_from_fields(fields.iter().map(|(n, v)| (*n, v))).unwrap();
    assert_eq!(back.id(), e.id());
}

#[test]
fn commands_and_keys() {
    let publisher = Redis::builder("redis://127.0.0.1:6379").stream(|_| String::new());
    let msg = Outgoing::new(Event::builder("/s", "t").build().unwrap(), ContentMode::Structured);
    assert!(matches!(publisher.transport.command(&msg), Err(PublishError::InvalidEvent(_))));

    let publisher = Redis::builder("redis://127.0.0.1:6379").max_len(1000);
    let (cmd, _) = publisher.transport.command(&msg).unwrap();
    let packed = String::from_utf8_lossy(&cmd.get_packed_command()).into_owned();
    assert!(packed.contains("XADD\r\n$1\r\nt\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$4\r\n1000\r\n$1\r\n*\r\n"), "{packed}");

    let publisher = Redis::builder("redis://127.0.0.1:6379").pubsub(|e| format!("ch.{}", e.ty()));
    let (cmd, _) = publisher.transport.command(&msg).unwrap();
    assert!(String::from_utf8_lossy(&cmd.get_packed_command()).contains("PUBLISH\r\n$4\r\nch.t\r\n"));
}

#[test]
fn replies() {
    let stream = Kind::Stream;
    assert!(confirmation(stream, Value::BulkString(b"1-0".to_vec())).is_ok());
    assert!(matches!(confirmation(stream, Value::Nil), Err(PublishError::Rejected { .. })));
    let strict = Kind::PubSub { require_subscriber: true };
    assert!(matches!(confirmation(strict, Value::Int(0)), Err(PublishError::Unroutable { .. })));
    assert_eq!(confirmation(strict, Value::Int(2)).unwrap().sequence, Some(2));
    assert!(confirmation(Kind::PubSub { require_subscriber: false }, Value::Int(0)).is_ok());
}

/// The confirmations of one batch, polled before and after it was
/// flushed: all are woken when the pipeline's reply comes, and each
/// takes its own command's reply; an error of the whole pipeline fails
/// every one of them.
#[test]
fn a_batch_wakes_every_confirmation_with_its_own_reply() {
    use tokio_test::{assert_pending, assert_ready, task};
    let confirm =
        |batch: &Arc<Batch>, index| RedisConfirm { batch: batch.clone(), index, kind: Kind::Stream, waiting: None };

    let batch = Arc::new(Batch::default());
    let mut first = task::spawn(confirm(&batch, 0));
    let mut second = task::spawn(confirm(&batch, 1));
    // Polled before the flush: no reply to poll yet.
    assert_pending!(first.poll());
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<Vec<Value>, RedisError>>();
    batch.start(Box::pin(async move { rx.await.expect("sent") }));
    assert_pending!(first.poll());
    assert_pending!(second.poll());
    assert_pending!(first.poll(), "polled again: its waker is kept once");
    assert_eq!(batch.lock().waiting.len(), 2);
    tx.send(Ok(vec![Value::BulkString(b"1-0".to_vec()), Value::ServerError(wrongtype())])).unwrap();
    assert!(first.is_woken() && second.is_woken());
    let err = assert_ready!(second.poll()).unwrap_err();
    assert!(matches!(&err, PublishError::Rejected { reason, .. } if reason.contains("WRONGTYPE")), "{err}");
    assert_eq!(assert_ready!(first.poll()).unwrap(), Confirmation::default());

    // The pipeline failed as a whole, and came before anyone polled.
    let batch = Arc::new(Batch::default());
    let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
    batch.start(Box::pin(std::future::ready(Err(io))));
    for index in 0..2 {
        let err = assert_ready!(task::spawn(confirm(&batch, index)).poll()).unwrap_err();
        assert!(matches!(err, PublishError::ConnectionLost { .. }), "{err}");
    }

    // A reply future that wakes its waker from inside its own poll (as a
    // future out of cooperative budget does): no deadlock on the
    // batch's lock, and the waiting confirmation is woken.
    let batch = Arc::new(Batch::default());
    let mut waiting = task::spawn(confirm(&batch, 0));
    assert_pending!(waiting.poll());
    let mut polls = 0;
    batch.start(Box::pin(std::future::poll_fn(move |cx| {
        polls += 1;
        if polls == 1 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Ok(vec![Value::BulkString(b"2-0".to_vec())]))
    })));
    assert!(waiting.is_woken());
    assert!(assert_ready!(waiting.poll()).is_ok());

    // Fewer replies than commands: the ones without are a client error.
    let batch = Arc::new(Batch::default());
    batch.start(Box::pin(std::future::ready(Ok(vec![Value::BulkString(b"1-0".to_vec())]))));
    let err = assert_ready!(task::spawn(confirm(&batch, 1)).poll()).unwrap_err();
    assert!(matches!(err, PublishError::Client { .. }), "{err}");
}

fn wrongtype() -> ::redis::ServerError {
    let reply = ::redis::parse_redis_value(b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")
        .expect("a RESP error");
    match reply {
        Value::ServerError(e) => e,
        other => panic!("not an error reply: {other:?}"),
    }
}

#[test]
fn bad_url_is_an_error_not_a_panic() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = rt.enter();
    let err = Redis::builder("not a url").build().unwrap_err();
    assert!(matches!(err, PublishError::Client { .. }), "{err}");
}
