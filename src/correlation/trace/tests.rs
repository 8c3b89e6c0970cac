//! Tests of the trace context types.

use http::HeaderValue;
use proptest::prelude::*;

use super::*;
use crate::correlation::error::{InvalidTraceParent, InvalidTraceState};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn traceparent_rules() {
    use InvalidTraceParent as E;
    let tp = TraceParent::parse(TP).unwrap();
    assert_eq!(tp.to_string(), TP);
    assert_eq!(format!("{tp:?}"), format!("TraceParent({TP})"));
    assert_eq!(tp.to_header_value(), TP);
    assert_eq!(TraceParent::parse(&TP[..54]), Err(E::Length { len: 54 }));
    assert_eq!(TraceParent::parse(&format!("{TP}-")), Err(E::Length { len: 56 }));
    assert_eq!(TraceParent::parse(&TP.replacen("00", "ff", 1)), Err(E::Version));
    assert_eq!(TraceParent::parse(&TP.replacen("00", "0g", 1)), Err(E::Hex { index: 1 }));
    assert_eq!(TraceParent::parse(&TP.replace("4bf9", "4BF9")), Err(E::Hex { index: 4 }));
    assert_eq!(TraceParent::parse(&TP.replace("-00f0", "_00f0")), Err(E::Delimiter { index: 35 }));
    assert_eq!(TraceParent::parse(&TP.replace("-01", "-0x")), Err(E::Hex { index: 54 }));
    assert_eq!(TraceParent::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), Err(E::ZeroTraceId));
    assert_eq!(TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"), Err(E::ZeroParentId));
    // Unknown flags are dropped; sampled and random are kept.
    let tp = TraceParent::parse(&TP.replace("-01", "-ff")).unwrap();
    assert_eq!(tp.flags(), 0x03);
    assert!(tp.with_sampled(false).to_string().ends_with("-02"));
}

#[test]
fn the_first_bad_hex_digit_is_reported_wherever_it_is() {
    for index in (0..TP.len()).filter(|i| ![2, 35, 52].contains(i)) {
        for bad in [b'g', b'A', b'F', b'/', b':', b'`', 0xff] {
            let mut v = TP.as_bytes().to_vec();
            v[index] = bad;
            v[54] = if index == 54 { bad } else { b'X' }; // a later bad digit is not the one reported
            assert_eq!(TraceParent::parse_bytes(&v), Err(InvalidTraceParent::Hex { index }), "{bad} at {index}");
        }
    }
    let tp = TraceParent::parse(TP).unwrap();
    assert_eq!(tp.trace_id().to_bytes()[..4], [0x4b, 0xf9, 0x2f, 0x35]);
    assert_eq!(tp.parent_id().to_bytes(), [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
}

#[test]
fn future_versions_are_read_by_their_first_fields() {
    let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
    let tp = TraceParent::parse(v).unwrap();
    assert_eq!(tp.to_string(), TP, "written back as version 00");
    let exact = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert!(TraceParent::parse(exact).is_ok());
    let no_dash = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.";
    assert_eq!(TraceParent::parse(no_dash), Err(InvalidTraceParent::Delimiter { index: 55 }));
    assert!(TraceParent::parse(&v.replace("-01-", "-0X-")).is_err());
}

#[test]
fn generated_traces_are_valid_and_distinct() {
    let a = TraceParent::generate(true);
    let b = TraceParent::generate(false);
    assert_ne!(a.trace_id(), b.trace_id());
    assert_eq!(a.flags(), 0x03);
    assert_eq!(b.flags(), 0x02);
    assert_eq!(TraceParent::parse(&a.to_string()), Ok(a));
    assert_eq!(TraceId::from_bytes([0; 16]), None);
    assert_eq!(SpanId::from_bytes([0; 8]), None);
    assert_eq!(SpanId::from_bytes([0, 0, 0, 0, 0, 0, 0, 1]).unwrap().to_string(), "0000000000000001");
}

#[test]
fn tracestate_rules() {
    use InvalidTraceState as E;
    assert_eq!(TraceState::parse("").unwrap().len(), 0);
    assert!(TraceState::parse(" , ,\t").unwrap().is_empty());
    assert_eq!(TraceState::parse("a").unwrap_err(), E::MissingEquals { member: 0 });
    assert_eq!(TraceState::parse("a=1,B=2").unwrap_err(), E::InvalidKey { member: 1 });
    assert_eq!(TraceState::parse("1a=1").unwrap_err(), E::InvalidKey { member: 0 });
    assert_eq!(TraceState::parse("a=").unwrap_err(), E::InvalidValue { member: 0 });
    assert_eq!(TraceState::parse("a=x=y").unwrap_err(), E::InvalidValue { member: 0 });
    assert_eq!(TraceState::parse("a=caf\u{e9}").unwrap_err(), E::InvalidValue { member: 0 });
    assert_eq!(TraceState::parse("a=1,b=2,a=3").unwrap_err(), E::DuplicateKey { member: 2 });
    assert!(TraceState::parse("a=has space inside").is_ok());
    // Multi-tenant keys.
    assert!(TraceState::parse("1tenant@sys=1,t@s=2,a-b_c*d/e=3").is_ok());
    assert_eq!(TraceState::parse("t@Sys=1").unwrap_err(), E::InvalidKey { member: 0 });
    assert_eq!(TraceState::parse("t@1s=1").unwrap_err(), E::InvalidKey { member: 0 });
    assert_eq!(TraceState::parse("t@s@x=1").unwrap_err(), E::InvalidKey { member: 0 });
    assert_eq!(TraceState::parse(&format!("t@{}=1", "s".repeat(15))).unwrap_err(), E::InvalidKey { member: 0 });
    assert!(TraceState::parse(&format!("{}@s=1", "t".repeat(241))).is_ok());
    assert!(TraceState::parse(&format!("{}@s=1", "t".repeat(242))).is_err());
    assert!(TraceState::parse(&format!("{}=1", "k".repeat(256))).is_ok());
    assert!(TraceState::parse(&format!("{}=1", "k".repeat(257))).is_err());
    assert!(TraceState::parse(&format!("k={}", "v".repeat(256))).is_ok());
    assert!(TraceState::parse(&format!("k={}", "v".repeat(257))).is_err());
    // 32 members at most.
    let members = |n: usize| (0..n).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
    assert_eq!(TraceState::parse(&members(32)).unwrap().len(), 32);
    assert_eq!(TraceState::parse(&members(33)).unwrap_err(), E::TooManyMembers);
}

#[test]
fn long_tracestates_are_truncated_as_the_spec_says() {
    // Three long members (> 128) and small ones: the long ones go first,
    // from the end, then small ones from the end.
    let long = |k: &str| format!("{k}={}", "x".repeat(200));
    let v = format!("a=1,{},b=2,{},c=3,{}", long("l1"), long("l2"), long("l3"));
    let ts = TraceState::parse(&v).unwrap();
    assert_eq!(ts.as_str(), format!("a=1,{},b=2,{},c=3", long("l1"), long("l2")));
    assert!(ts.as_str().len() <= TraceState::MAX_LEN);
    // Four long ones: two must go.
    let v = format!("{},a=1,{},{},{}", long("l0"), long("l1"), long("l2"), long("l3"));
    let ts = TraceState::parse(&v).unwrap();
    assert_eq!(ts.as_str(), format!("{},a=1,{}", long("l0"), long("l1")));

    let many: Vec<String> = (0..30).map(|i| format!("k{i:02}={}", "v".repeat(20))).collect();
    let ts = TraceState::parse(&many.join(",")).unwrap();
    assert!(ts.as_str().len() <= TraceState::MAX_LEN);
    assert_eq!(ts.iter().next(), Some(("k00", "vvvvvvvvvvvvvvvvvvvv")), "the first members stay");
    assert_eq!(ts.len(), 20);
}

#[test]
fn several_header_fields_are_one_list() {
    let a = HeaderValue::from_static("a=1");
    let b = HeaderValue::from_static(" b=2 ,");
    let ts = TraceState::from_header_values([&a, &b]).unwrap();
    assert_eq!(ts.as_str(), "a=1,b=2");
    let dup = HeaderValue::from_static("a=2");
    assert!(TraceState::from_header_values([&a, &dup]).is_err());
    // A compact single field is shared, not copied.
    let ts = TraceState::from_header_values([&a]).unwrap();
    assert_eq!(ts.as_header_value(), &a);
}

#[test]
fn insert_puts_the_vendor_first() {
    let ts = TraceState::parse("a=1,b=2").unwrap();
    assert_eq!(ts.insert("b", "3").unwrap().as_str(), "b=3,a=1");
    assert!(ts.insert("B", "3").is_err());
    assert!(ts.insert("b", "x,y").is_err());
    let full = TraceState::parse(&(0..32).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",")).unwrap();
    let ts = full.insert("new", "1").unwrap();
    assert_eq!(ts.len(), 32);
    assert_eq!(ts.get("k31"), None);
    assert_eq!(ts.get("new"), Some("1"));
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z][a-z0-9_*/-]{0,20}", "[a-z0-9][a-z0-9_*/-]{0,10}@[a-z][a-z0-9_*/-]{0,13}",]
}

fn value() -> impl Strategy<Value = String> {
    "[!-+\\--<>-~]([ -+\\--<>-~]{0,30}[!-+\\--<>-~])?"
}

proptest! {
    #[test]
    fn traceparent_round_trips(t in 1u128.., p in 1u64.., flags in 0u8..=3) {
        let tp = TraceParent::new(TraceId(t.to_be_bytes()), SpanId(p.to_be_bytes()), flags);
        let s = tp.to_string();
        prop_assert_eq!(s.len(), TraceParent::LEN);
        prop_assert_eq!(TraceParent::parse(&s), Ok(tp));
        let child = tp.child();
        prop_assert_eq!(child.trace_id(), tp.trace_id());
        prop_assert_ne!(child.parent_id(), tp.parent_id());
        prop_assert_eq!(child.flags(), tp.flags());
        // Uppercase hex is refused wherever it is.
        if s.bytes().any(|b| (b'a'..=b'f').contains(&b)) {
            prop_assert!(TraceParent::parse(&s.to_uppercase()).is_err());
        }
    }

    #[test]
    fn traceparent_never_panics_and_accepts_only_lowercase_hex(s in "\\PC{0,80}") {
        if let Ok(tp) = TraceParent::parse(&s) {
            prop_assert!(s.len() >= TraceParent::LEN);
            prop_assert_eq!(&s[3..55], &tp.to_string()[3..]);
            prop_assert!(!s.starts_with("ff"));
        }
    }

    #[test]
    fn traceparent_mutations_are_caught(t in 1u128.., p in 1u64.., i in 0usize..55, b in any::<u8>()) {
        let s = TraceParent::new(TraceId(t.to_be_bytes()), SpanId(p.to_be_bytes()), 1).to_string();
        let mut bytes = s.into_bytes();
        bytes[i] = b;
        let ok = match i {
            2 | 35 | 52 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        };
        let zeroed = bytes[3..35].iter().all(|&c| c == b'0') || bytes[36..52].iter().all(|&c| c == b'0');
        let ff = &bytes[0..2] == b"ff";
        prop_assert_eq!(TraceParent::parse_bytes(&bytes).is_ok(), ok && !zeroed && !ff);
    }

    #[test]
    fn valid_tracestates_round_trip(members in proptest::collection::vec((key(), value()), 0..40), ows in "[ \t]{0,2}") {
        let mut seen = std::collections::HashSet::new();
        let members: Vec<_> = members.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect();
        let header = members.iter().map(|(k, v)| format!("{ows}{k}={v}{ows}")).collect::<Vec<_>>().join(",");
        match TraceState::parse(&header) {
            Ok(ts) => {
                prop_assert!(members.len() <= TraceState::MAX_MEMBERS);
                prop_assert!(ts.as_str().len() <= TraceState::MAX_LEN);
                // What is kept is a prefix-ordered subset, re-parsed unchanged.
                prop_assert_eq!(TraceState::parse(ts.as_str()).unwrap(), ts.clone());
                let kept: Vec<(String, String)> = ts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                let mut it = members.iter();
                for m in &kept {
                    prop_assert!(it.any(|x| x == m));
                }
                let full: usize = members.iter().map(|(k, v)| k.len() + v.len() + 1).sum::<usize>() + members.len().saturating_sub(1);
                if full <= TraceState::MAX_LEN {
                    prop_assert_eq!(kept, members);
                }
            }
            Err(e) => prop_assert_eq!(e, InvalidTraceState::TooManyMembers),
        }
    }

    #[test]
    fn tracestate_never_panics(s in "\\PC{0,600}") {
        if let Ok(ts) = TraceState::parse(&s) {
            prop_assert!(ts.len() <= TraceState::MAX_MEMBERS);
            prop_assert!(ts.as_str().len() <= TraceState::MAX_LEN);
            prop_assert_eq!(TraceState::parse(ts.as_str()).unwrap(), ts.clone());
        }
    }
}
