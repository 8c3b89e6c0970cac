use proptest::prelude::*;

use super::*;
use crate::soap::security::Timestamp;

const T0: u64 = 1_704_067_200; // 2024-01-01T00:00:00Z

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn datetimes() {
    assert_eq!(parse_datetime("2024-01-01T00:00:00Z"), Some(at(T0)));
    assert_eq!(parse_datetime("2024-01-01T00:00:00"), Some(at(T0)));
    assert_eq!(parse_datetime("2024-01-01T02:30:00+02:30"), Some(at(T0)));
    assert_eq!(parse_datetime("2023-12-31T23:00:00-01:00"), Some(at(T0)));
    assert_eq!(parse_datetime("2024-01-01T00:00:00.5Z"), Some(at(T0) + Duration::from_millis(500)));
    assert_eq!(parse_datetime("2024-01-01T00:00:00.1234567891Z"), Some(at(T0) + Duration::from_nanos(123_456_789)));
    for bad in [
        "",
        "2024-01-01",
        "2024-13-01T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T00:00:00.Z",
        "2024-01-01T00:00:00+2:00",
        "2024-01-01T00:00:00Zjunk",
        "１９７０-01-01T00:00:00Z",
        "1960-01-01T00:00:00Z",
    ] {
        assert_eq!(parse_datetime(bad), None, "{bad}");
    }
}

proptest! {
    /// What the client writes (`Timestamp`), the validator reads back.
    #[test]
    fn written_timestamps_read_back(millis in 0u64..253_402_300_799_000) {
        let t = UNIX_EPOCH + Duration::from_millis(millis);
        let mut buf = [0u8; 24];
        prop_assert_eq!(parse_datetime(Timestamp(t).write(&mut buf)), Some(t));
    }

    /// Arbitrary text never panics.
    #[test]
    fn any_text_is_safe(s in ".{0,40}") {
        let _ = parse_datetime(&s);
    }

    /// A token block with bytes changed reads as a token or is refused, never a panic.
    #[test]
    fn mutated_security_blocks_are_safe(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<char>()), 0..6)) {
        let mut out = Vec::new();
        crate::soap::UsernameToken::digest("alice", "s3cret").write_with(
            crate::soap::SoapVersion::V12, at(T0), b"0123456789abcdef", &mut out);
        let mut chars: Vec<char> = String::from_utf8(out).unwrap().chars().collect();
        for (i, c) in edits {
            let i = i.index(chars.len());
            chars[i] = c;
        }
        let block: String = chars.into_iter().collect();
        let _ = parse_token(&block);
    }
}

#[tokio::test(start_paused = true)]
async fn the_memory_store_is_bounded_and_expires() {
    let store = MemoryNonceStore::new(2);
    let key = |n: u8| [n; 20];
    let secs = Duration::from_secs;
    assert!(store.insert_now(key(1), secs(60)).unwrap());
    assert!(!store.insert_now(key(1), secs(60)).unwrap(), "a replay");
    assert!(store.insert_now(key(2), secs(120)).unwrap());
    // Full of unexpired nonces: refused, not forgotten.
    assert!(store.insert_now(key(3), secs(120)).is_err());
    assert!(!store.insert_now(key(1), secs(60)).unwrap(), "still a replay when full");
    assert_eq!(store.len(), 2);
    // Once the first has expired it makes room.
    tokio::time::advance(secs(61)).await;
    assert!(store.insert_now(key(3), secs(120)).unwrap());
    assert_eq!(store.len(), 2);
    assert!(store.insert_now(key(1), secs(60)).is_err(), "full again: nothing expired");
}
