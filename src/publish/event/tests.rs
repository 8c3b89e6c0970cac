use super::*;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn ev() -> Event {
    Event::builder("/test", "t.created")
        .subject("s")
        .version("2")
        .correlation_id("corr-1")
        .traceparent(TP)
        .tracestate("a=b")
        .partition_key("k1")
        .extension("tenant", "acme")
        .json(&serde_json::json!({"n": 1, "s": "é\"x"}))
        .unwrap()
        .build()
        .unwrap()
}

#[test]
fn defaults_id_and_time() {
    let e = Event::builder("/s", "t").build().unwrap();
    assert_eq!(e.id().len(), 36);
    assert!(e.time().is_some());
    assert_ne!(e.id(), Event::builder("/s", "t").build().unwrap().id());
}

#[test]
fn structured_round_trip() {
    let e = ev();
    let body = e.to_structured_json();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["specversion"], "1.0");
    assert_eq!(v["data"]["s"], "é\"x");
    assert_eq!(v["correlationid"], "corr-1");
    assert_eq!(v["tenant"], "acme");
    let back = Event::from_structured_json(&body).unwrap();
    assert_eq!(back.id(), e.id());
    assert_eq!(back.traceparent(), Some(TP));
    assert_eq!(back.partition_key(), Some("k1"));
    assert_eq!(back.extension("tenant"), Some("acme"));
    assert_eq!(back.time_rfc3339(), e.time_rfc3339());
    let data: serde_json::Value = serde_json::from_slice(back.data().unwrap()).unwrap();
    assert_eq!(data["n"], 1);
}

#[test]
fn binary_data_is_base64() {
    let e = Event::builder("/s", "t").data("application/octet-stream", vec![0u8, 255, 1, 2]).build().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&e.to_structured_json()).unwrap();
    assert_eq!(v["data_base64"], "AP8BAg==");
    let back = Event::from_structured_json(&e.to_structured_json()).unwrap();
    assert_eq!(&back.data().unwrap()[..], &[0u8, 255, 1, 2]);
    // JSON content type with bytes that are not JSON: still base64, never invalid JSON.
    let e = Event::builder("/s", "t").data("application/json", "{oops").build().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&e.to_structured_json()).unwrap();
    assert!(v.get("data_base64").is_some());
}

#[test]
fn header_pairs_and_binary_body() {
    let e = ev();
    let pairs: Vec<(String, String)> = e.header_pairs().map(|(k, v)| (k.to_owned(), v.into_owned())).collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("id"), Some(e.id()));
    assert_eq!(get("type"), Some("t.created"));
    assert_eq!(get("correlationid"), Some("corr-1"));
    assert_eq!(get("traceparent"), Some(TP));
    assert_eq!(get("tenant"), Some("acme"));
    assert_eq!(get("datacontenttype"), None);
    let (body, ct) = e.body(ContentMode::Binary);
    assert_eq!(ct.as_deref(), Some("application/json"));
    assert_eq!(&body, e.data().unwrap());
    let (_, ct) = e.body(ContentMode::Structured);
    assert_eq!(ct.as_deref(), Some(STRUCTURED_CONTENT_TYPE));
}

#[test]
fn invalid_input_is_a_typed_error() {
    assert_eq!(Event::builder("", "t").build().unwrap_err(), InvalidEvent::Missing("source"));
    assert!(matches!(
        Event::builder("/s", "t").correlation_id("a\r\nb").build(),
        Err(InvalidEvent::Invalid { attribute: "correlationid", .. })
    ));
    assert!(Event::builder("/s", "t").traceparent("00-zz").build().is_err());
    assert!(Event::builder("/s", "t").extension("Bad-Name", "x").build().is_err());
    assert!(Event::builder("/s", "t").extension("id", "x").build().is_err());
    assert!(Event::builder("/s", "t").partition_key("x".repeat(2000)).build().is_err());
    assert!(Event::from_structured_json(b"[1]").is_err());
    assert!(Event::from_structured_json(br#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#).is_err());
}

#[test]
fn traceparent_grammar() {
    assert!(is_traceparent(TP));
    assert!(!is_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
    assert!(!is_traceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    assert!(!is_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"));
    assert!(is_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"));
}

#[test]
fn request_context_is_copied_in() {
    use crate::correlation::{CorrelationId, RequestContext, TraceParent};
    let tp = TraceParent::parse(TP).unwrap();
    let ctx = RequestContext::new(CorrelationId::parse("order-42").unwrap()).with_traceparent(tp);
    let e = ctx.clone().sync_scope(|| Event::builder("/s", "t").build().unwrap());
    assert_eq!(e.correlation_id(), Some("order-42"));
    let got = e.traceparent().unwrap();
    // Same trace, a new parent id for the publish.
    assert_eq!(&got[..35], &TP[..35]);
    assert_ne!(got, TP);
    // Explicit values win; `without_context` copies nothing.
    let e = ctx.clone().sync_scope(|| Event::builder("/s", "t").correlation_id("mine").build().unwrap());
    assert_eq!(e.correlation_id(), Some("mine"));
    let e = ctx.sync_scope(|| Event::builder("/s", "t").without_context().build().unwrap());
    assert_eq!(e.correlation_id(), None);
    assert_eq!(Event::builder("/s", "t").build().unwrap().traceparent(), None);
}

proptest::proptest! {
    #[test]
    fn base64_round_trips(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
        let mut out = Vec::new();
        base64_encode(&data, &mut out);
        proptest::prop_assert_eq!(base64_decode(std::str::from_utf8(&out).unwrap()).unwrap(), data);
    }

    #[test]
    fn parser_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
        let _ = Event::from_structured_json(&body);
    }
}
