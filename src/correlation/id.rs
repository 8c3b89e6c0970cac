//! The correlation id and how fresh ones are made.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use correlation_uuid as uuid;
use http::HeaderValue;

use super::error::InvalidCorrelationId;

/// A validated correlation id: 1 to [`MAX_LEN`](CorrelationId::MAX_LEN)
/// bytes of visible ASCII (`!` to `~`; so no space, CR, LF or other control
/// character, and nothing outside ASCII).
///
/// It is kept as the [`HeaderValue`] it travels in, so taking it from an
/// incoming request and putting it on the response or an outgoing request
/// copies no bytes.
///
/// ```
/// use tower_mesh::correlation::{CorrelationId, InvalidCorrelationId};
///
/// let id = CorrelationId::parse("order-7f3a").unwrap();
/// assert_eq!(id.as_str(), "order-7f3a");
/// assert_eq!(id.to_string(), "order-7f3a");
///
/// assert_eq!(CorrelationId::parse("a\r\nSet-Cookie: x"), Err(InvalidCorrelationId::InvalidByte { index: 1 }));
/// assert!(CorrelationId::parse(&"x".repeat(129)).is_err());
///
/// // A fresh UUID v7 (time-ordered), in its hyphenated lowercase form.
/// let fresh = CorrelationId::generate();
/// assert_eq!(fresh.as_str().len(), 36);
/// assert_eq!(&fresh.as_str()[14..15], "7");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CorrelationId(HeaderValue);

impl CorrelationId {
    /// The longest id accepted, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validate `id`.
    pub fn parse(id: &str) -> Result<Self, InvalidCorrelationId> {
        validate(id.as_bytes(), ByteSet::EMPTY)?;
        Self::from_validated(Bytes::copy_from_slice(id.as_bytes()))
    }

    /// Validate the value of a header (no copy of its bytes is made).
    pub fn from_header_value(value: &HeaderValue) -> Result<Self, InvalidCorrelationId> {
        validate(value.as_bytes(), ByteSet::EMPTY)?;
        Ok(CorrelationId(value.clone()))
    }

    /// Validate the value of a header, also refusing the bytes in `forbidden`.
    pub(crate) fn from_header_value_with(
        value: &HeaderValue,
        forbidden: ByteSet,
    ) -> Result<Self, InvalidCorrelationId> {
        validate(value.as_bytes(), forbidden)?;
        Ok(CorrelationId(value.clone()))
    }

    fn from_validated(bytes: Bytes) -> Result<Self, InvalidCorrelationId> {
        // Cannot fail: visible ASCII is a valid header value.
        HeaderValue::from_maybe_shared(bytes)
            .map(CorrelationId)
            .map_err(|_| InvalidCorrelationId::InvalidByte { index: 0 })
    }

    /// A fresh id from the default generator, [`UuidV7`].
    pub fn generate() -> Self {
        UuidV7.make_correlation_id()
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        // Validated as visible ASCII, so `to_str` cannot fail.
        self.0.to_str().unwrap_or_default()
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The id as a header value.
    pub fn as_header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// The id as a header value, consuming it.
    pub fn into_header_value(self) -> HeaderValue {
        self.0
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CorrelationId").field(&self.as_str()).finish()
    }
}

impl FromStr for CorrelationId {
    type Err = InvalidCorrelationId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CorrelationId::parse(s)
    }
}

impl TryFrom<&str> for CorrelationId {
    type Error = InvalidCorrelationId;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        CorrelationId::parse(s)
    }
}

impl TryFrom<String> for CorrelationId {
    type Error = InvalidCorrelationId;

    /// Validate `s`, reusing its buffer.
    fn try_from(s: String) -> Result<Self, Self::Error> {
        validate(s.as_bytes(), ByteSet::EMPTY)?;
        Self::from_validated(Bytes::from(s))
    }
}

impl TryFrom<&HeaderValue> for CorrelationId {
    type Error = InvalidCorrelationId;

    fn try_from(v: &HeaderValue) -> Result<Self, Self::Error> {
        CorrelationId::from_header_value(v)
    }
}

impl AsRef<str> for CorrelationId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<CorrelationId> for HeaderValue {
    fn from(id: CorrelationId) -> Self {
        id.0
    }
}

/// A set of ASCII bytes (the separators a layer forbids in ids).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ByteSet(u128);

impl ByteSet {
    pub(crate) const EMPTY: ByteSet = ByteSet(0);

    /// The set of the ASCII bytes in `bytes` (others are never valid in an
    /// id anyway and are ignored).
    pub(crate) fn of(bytes: &[u8]) -> Self {
        ByteSet(bytes.iter().filter(|b| b.is_ascii()).fold(0, |m, &b| m | 1u128 << b))
    }

    pub(crate) fn union(self, other: ByteSet) -> Self {
        ByteSet(self.0 | other.0)
    }

    #[inline]
    pub(crate) fn contains(self, b: u8) -> bool {
        b < 128 && self.0 & (1u128 << b) != 0
    }
}

/// Check the rules of [`CorrelationId`], plus the `forbidden` bytes.
///
/// Every incoming request's id goes through here, so the common case is a
/// branch-free pass over the bytes (vectorized); the position of a bad byte
/// is looked for only when there is one.
#[inline]
pub(crate) fn validate(id: &[u8], forbidden: ByteSet) -> Result<(), InvalidCorrelationId> {
    if id.is_empty() {
        return Err(InvalidCorrelationId::Empty);
    }
    if id.len() > CorrelationId::MAX_LEN {
        return Err(InvalidCorrelationId::TooLong { len: id.len() });
    }
    // `!`..=`~`: one unsigned comparison per byte, folded without an early exit.
    let visible = id.iter().fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) <= 0x7e - 0x21));
    let allowed = forbidden == ByteSet::EMPTY || !id.iter().any(|&b| forbidden.contains(b));
    if visible && allowed {
        return Ok(());
    }
    first_bad_byte(id, forbidden)
}

/// The error for the first byte of `id` that breaks the rules.
#[cold]
fn first_bad_byte(id: &[u8], forbidden: ByteSet) -> Result<(), InvalidCorrelationId> {
    for (index, &b) in id.iter().enumerate() {
        if !(0x21..=0x7e).contains(&b) {
            return Err(InvalidCorrelationId::InvalidByte { index });
        }
        if forbidden.contains(b) {
            return Err(InvalidCorrelationId::ForbiddenByte { index });
        }
    }
    Ok(())
}

/// Makes correlation ids for requests that come without a valid one.
///
/// Implemented by [`UuidV7`] (the default) and by any
/// `Fn() -> CorrelationId + Send + Sync + 'static`:
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use tower_mesh::correlation::{CorrelationId, CorrelationIdLayer};
///
/// static NEXT: AtomicU64 = AtomicU64::new(1);
/// let layer = CorrelationIdLayer::new().generator(|| {
///     let n = NEXT.fetch_add(1, Ordering::Relaxed);
///     CorrelationId::try_from(format!("gw-{n}")).expect("a valid id")
/// });
/// # let _ = layer;
/// ```
pub trait MakeCorrelationId: Send + Sync + 'static {
    /// A fresh id.
    fn make_correlation_id(&self) -> CorrelationId;
}

impl<F> MakeCorrelationId for F
where
    F: Fn() -> CorrelationId + Send + Sync + 'static,
{
    fn make_correlation_id(&self) -> CorrelationId {
        self()
    }
}

/// The default generator: a UUID version 7 (RFC 9562: 48 bits of Unix time in
/// milliseconds, then random bits), so ids sort by creation time, written in
/// the hyphenated lowercase form (36 bytes).
///
/// The random bits come from a fast thread-local generator (`fastrand`),
/// not from the operating system: correlation ids identify requests, they
/// are not secrets.
#[derive(Clone, Copy, Debug, Default)]
pub struct UuidV7;

impl MakeCorrelationId for UuidV7 {
    fn make_correlation_id(&self) -> CorrelationId {
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let random = fastrand::u128(..).to_le_bytes();
        let mut counter_random = [0u8; 10];
        counter_random.copy_from_slice(&random[..10]);
        let uuid = uuid::Builder::from_unix_timestamp_millis(millis, &counter_random).into_uuid();
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid.hyphenated().encode_lower(&mut buf);
        // The id is cloned into the request's headers, its extensions and the response.
        CorrelationId(shared_header_value(buf, "invalid-uuid"))
    }
}

/// A header value made by this crate (`fallback` if `bytes` were not a
/// valid one), owned by a shared buffer from the start: each clone (into a
/// request, its extensions, a retry's copy, the response) is a reference
/// count, where bytes copied into a `Vec` would allocate again on their
/// first clone.
pub(crate) fn shared_header_value<const N: usize>(bytes: [u8; N], fallback: &'static str) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from_owner(bytes)).unwrap_or_else(|_| HeaderValue::from_static(fallback))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert_eq!(CorrelationId::parse(""), Err(InvalidCorrelationId::Empty));
        assert!(CorrelationId::parse(&"a".repeat(128)).is_ok());
        assert_eq!(CorrelationId::parse(&"a".repeat(129)), Err(InvalidCorrelationId::TooLong { len: 129 }));
        assert_eq!(CorrelationId::parse("ab c"), Err(InvalidCorrelationId::InvalidByte { index: 2 }));
        assert_eq!(CorrelationId::parse("ab\tc"), Err(InvalidCorrelationId::InvalidByte { index: 2 }));
        assert_eq!(CorrelationId::parse("x\r\ny"), Err(InvalidCorrelationId::InvalidByte { index: 1 }));
        assert_eq!(CorrelationId::parse("caf\u{e9}"), Err(InvalidCorrelationId::InvalidByte { index: 3 }));
        assert_eq!(CorrelationId::parse("a\u{7f}"), Err(InvalidCorrelationId::InvalidByte { index: 1 }));
        assert!(CorrelationId::parse("!~\"{}a=b,c;d").is_ok());
        let forbidden = ByteSet::of(b",;");
        assert_eq!(validate(b"a,b", forbidden), Err(InvalidCorrelationId::ForbiddenByte { index: 1 }));
        assert_eq!(validate(b"a;b", forbidden), Err(InvalidCorrelationId::ForbiddenByte { index: 1 }));
        assert_eq!(validate(b"a:b", forbidden), Ok(()));
        assert!(!ByteSet::of("é".as_bytes()).contains(0xc3));
    }

    #[test]
    fn the_first_bad_byte_is_reported_wherever_it_is() {
        // The fast path checks all bytes at once; the error still names the first bad one.
        let forbidden = ByteSet::of(b",");
        for len in [1, 15, 16, 17, 36, 128] {
            for index in 0..len {
                for (bad, expected) in [
                    (b' ', InvalidCorrelationId::InvalidByte { index }),
                    (0x7f, InvalidCorrelationId::InvalidByte { index }),
                    (0xc3, InvalidCorrelationId::InvalidByte { index }),
                    (b',', InvalidCorrelationId::ForbiddenByte { index }),
                ] {
                    let mut id = vec![b'a'; len];
                    id[index] = bad;
                    if index + 1 < len {
                        id[len - 1] = b'\n'; // a later bad byte is not the one reported
                    }
                    assert_eq!(validate(&id, forbidden), Err(expected), "len {len}, index {index}");
                }
            }
            assert_eq!(validate(&vec![b'~'; len], forbidden), Ok(()));
        }
    }

    #[test]
    fn conversions_keep_the_id() {
        let id = CorrelationId::try_from(String::from("req-1")).unwrap();
        assert_eq!(id, "req-1".parse().unwrap());
        assert_eq!(format!("{id:?}"), "CorrelationId(\"req-1\")");
        let hv: HeaderValue = id.clone().into();
        assert_eq!(CorrelationId::from_header_value(&hv).unwrap(), id);
        assert!(CorrelationId::from_header_value(&HeaderValue::from_bytes(b"a\xffb").unwrap()).is_err());
    }

    #[test]
    fn uuid_v7_ids_are_valid_distinct_and_time_ordered() {
        let a = CorrelationId::generate();
        let b = UuidV7.make_correlation_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            let u = uuid::Uuid::parse_str(id.as_str()).unwrap();
            assert_eq!(u.get_version_num(), 7);
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
            assert!(validate(id.as_bytes(), ByteSet::EMPTY).is_ok());
        }
        // The first 48 bits are the time in milliseconds: never decreasing.
        assert!(a.as_str()[..13] <= b.as_str()[..13]);
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn visible_ascii_up_to_128_bytes_is_accepted(s in "[!-~]{1,128}") {
            let id = CorrelationId::parse(&s).unwrap();
            prop_assert_eq!(id.as_str(), s.as_str());
            prop_assert_eq!(CorrelationId::from_header_value(id.as_header_value()), Ok(id.clone()));
        }

        #[test]
        fn anything_else_is_refused(s in "\\PC{0,140}|[\\x00-\\x7f]{0,140}") {
            let valid = !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| (0x21..=0x7e).contains(&b));
            prop_assert_eq!(CorrelationId::parse(&s).is_ok(), valid);
        }

        #[test]
        fn forbidden_separators_are_refused(s in "[!-~]{1,64}", forbidden in "[!-~]{0,4}") {
            let set = ByteSet::of(forbidden.as_bytes());
            let hit = s.bytes().position(|b| forbidden.as_bytes().contains(&b));
            match hit {
                Some(index) => prop_assert_eq!(validate(s.as_bytes(), set), Err(InvalidCorrelationId::ForbiddenByte { index })),
                None => prop_assert_eq!(validate(s.as_bytes(), set), Ok(())),
            }
        }
    }
}
