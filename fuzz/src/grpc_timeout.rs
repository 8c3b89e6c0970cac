//! `grpc-timeout` values: what `encode_grpc_timeout` writes (the header the
//! timeout layer sends with `grpc_timeout(true)`), checked against the gRPC
//! spec's grammar with a decoder written here (the crate only writes the
//! header).
//!
//! Input: one flag byte. Flag bit 0 clear: the rest is a `grpc-timeout`
//! value; set: the rest (zero-padded to 12 bytes) is a duration, 8 bytes of
//! seconds and 4 of nanoseconds (modulo 10⁹).
//!
//! Properties:
//! - nothing panics;
//! - every value written is 1 to 8 ASCII digits and a unit of `HMSmun`, so
//!   any gRPC server can read it;
//! - it is never less than the duration (the server never gets more time
//!   than the client) and less than one of its unit more; a duration beyond
//!   the largest value is the largest value, `99999999H`;
//! - a value read from the wire, written again, reads back as exactly the
//!   same duration, and writing is canonical (the same duration always gives
//!   the same value).

use std::time::Duration;

use tower_mesh::deadline::encode_grpc_timeout;

/// The largest value: 8 digits.
const MAX_VALUE: u64 = 99_999_999;

/// Nanoseconds in one of `unit`, by the gRPC spec (`TimeoutUnit`).
fn unit_nanos(unit: u8) -> Option<u128> {
    Some(match unit {
        b'H' => 3_600_000_000_000,
        b'M' => 60_000_000_000,
        b'S' => 1_000_000_000,
        b'm' => 1_000_000,
        b'u' => 1_000,
        b'n' => 1,
        _ => return None,
    })
}

/// `TimeoutValue TimeoutUnit`: at most 8 digits, then a unit. Returns the
/// duration and the nanoseconds of its unit.
fn decode(v: &[u8]) -> Option<(Duration, u128)> {
    let (&unit, digits) = v.split_last()?;
    let unit = unit_nanos(unit)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value: u128 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let nanos = value * unit;
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some((Duration::new(secs, (nanos % 1_000_000_000) as u32), unit))
}

/// Encode `d` and check the value against the grammar and `d`; returns it.
fn check_encoded(d: Duration) -> Vec<u8> {
    let value = encode_grpc_timeout(d);
    let bytes = value.as_bytes().to_vec();
    let (back, unit) = decode(&bytes).unwrap_or_else(|| panic!("{d:?} written as {value:?}, not a grpc-timeout"));
    let largest = Duration::from_secs(MAX_VALUE * 3600);
    if d > largest {
        assert_eq!(bytes, b"99999999H", "{d:?}");
        return bytes;
    }
    assert!(back >= d, "{d:?} written as {value:?}: less time for the server");
    assert!(back.as_nanos() - d.as_nanos() < unit, "{d:?} written as {value:?}: rounded by more than a unit");
    bytes
}

/// One input: the properties above, checked with assertions (a failure panics).
pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    if flags & 1 == 0 {
        let Some((d, _)) = decode(rest) else { return };
        let written = check_encoded(d);
        let (again, _) = decode(&written).expect("checked");
        assert_eq!(again, d, "{:?} read as {d:?}, written as {:?}", String::from_utf8_lossy(rest), written);
        assert_eq!(check_encoded(again), written, "canonical");
    } else {
        let mut raw = [0u8; 12];
        let n = rest.len().min(12);
        raw[..n].copy_from_slice(&rest[..n]);
        let secs = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes"));
        let nanos = u32::from_le_bytes(raw[8..].try_into().expect("4 bytes")) % 1_000_000_000;
        let d = Duration::new(secs, nanos);
        let written = check_encoded(d);
        let (back, _) = decode(&written).expect("checked");
        assert_eq!(check_encoded(back), written, "canonical: what was written is written again the same");
    }
}
