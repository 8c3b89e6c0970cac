//! W3C Trace Context: the `traceparent` and `tracestate` headers.

use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderValue;

use super::error::{InvalidTraceParent, InvalidTraceState};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The value of each lowercase hex digit; `0xff` for every other byte.
const HEX_VAL: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        table[HEX[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Decode lowercase hex `src` (starting at `offset` in the whole value, for
/// error positions) into `dst`: table lookups without a branch per digit;
/// the position of a bad digit is looked for only when there is one.
#[inline]
fn decode_hex(src: &[u8], offset: usize, dst: &mut [u8]) -> Result<(), InvalidTraceParent> {
    let mut bad = 0u8;
    for (out, pair) in dst.iter_mut().zip(src.chunks_exact(2)) {
        let (hi, lo) = (HEX_VAL[pair[0] as usize], HEX_VAL[pair[1] as usize]);
        bad |= hi | lo;
        *out = hi << 4 | lo;
    }
    if bad > 0x0f {
        return Err(first_bad_hex(&src[..2 * dst.len()], offset));
    }
    Ok(())
}

#[cold]
fn first_bad_hex(src: &[u8], offset: usize) -> InvalidTraceParent {
    let index = src.iter().position(|&b| HEX_VAL[b as usize] > 0x0f).unwrap_or(0);
    InvalidTraceParent::Hex { index: offset + index }
}

#[inline]
fn encode_hex(src: &[u8], dst: &mut [u8]) {
    for (i, b) in src.iter().enumerate() {
        dst[2 * i] = HEX[(b >> 4) as usize];
        dst[2 * i + 1] = HEX[(b & 0xf) as usize];
    }
}

/// A trace id: 16 bytes, never all zero. Displayed as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId([u8; 16]);

impl TraceId {
    /// The id, unless it is all zeros (invalid).
    pub fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        (bytes != [0; 16]).then_some(TraceId(bytes))
    }

    /// A random id.
    pub fn random() -> Self {
        TraceId(fastrand::u128(1..).to_be_bytes())
    }

    /// The bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }
}

/// A span id (the `parent-id` of a `traceparent`): 8 bytes, never all zero.
/// Displayed as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId([u8; 8]);

impl SpanId {
    /// The id, unless it is all zeros (invalid).
    pub fn from_bytes(bytes: [u8; 8]) -> Option<Self> {
        (bytes != [0; 8]).then_some(SpanId(bytes))
    }

    /// A random id.
    pub fn random() -> Self {
        SpanId(fastrand::u64(1..).to_be_bytes())
    }

    /// The bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }
}

macro_rules! hex_fmt {
    ($t:ident, $n:expr) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut buf = [0u8; $n * 2];
                encode_hex(&self.0, &mut buf);
                // Hex digits are ASCII.
                f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($t), "({})"), self)
            }
        }
    };
}
hex_fmt!(TraceId, 16);
hex_fmt!(SpanId, 8);

/// A W3C `traceparent`: trace id, parent (span) id and trace flags.
///
/// [`parse`](TraceParent::parse) follows the specification's rules: lowercase
/// hex only, all-zero ids rejected, version `ff` rejected, version `00`
/// exactly 55 bytes, and a higher (future) version parsed by its first four
/// fields when the value is at least 55 bytes and anything past them starts
/// with `-`. This crate speaks version `00`, so a value is always written
/// (by [`Display`](fmt::Display)) as version `00`, and only the flags it
/// knows — `sampled` (`01`) and `random` (`02`, Trace Context level 2) — are
/// kept.
///
/// ```
/// use tower_mesh::correlation::TraceParent;
///
/// let tp = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
/// assert_eq!(tp.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert_eq!(tp.parent_id().to_string(), "00f067aa0ba902b7");
/// assert!(tp.sampled());
///
/// // The next hop: same trace, a new parent id.
/// let next = tp.child();
/// assert_eq!(next.trace_id(), tp.trace_id());
/// assert_ne!(next.parent_id(), tp.parent_id());
/// assert_eq!(next.to_string().len(), 55);
///
/// assert!(TraceParent::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_err());
/// assert!(TraceParent::parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: TraceId,
    parent_id: SpanId,
    flags: u8,
}

impl TraceParent {
    /// Length of a version `00` value.
    pub const LEN: usize = 55;
    /// The `sampled` trace flag.
    pub const SAMPLED: u8 = 0x01;
    /// The `random` trace flag (level 2: the trace id's right 7 bytes are random).
    pub const RANDOM: u8 = 0x02;
    const KNOWN_FLAGS: u8 = Self::SAMPLED | Self::RANDOM;

    /// A `traceparent` from its parts (unknown flag bits are cleared).
    pub fn new(trace_id: TraceId, parent_id: SpanId, flags: u8) -> Self {
        TraceParent { trace_id, parent_id, flags: flags & Self::KNOWN_FLAGS }
    }

    /// The start of a new trace: random trace and parent ids, the `random`
    /// flag set, and `sampled` as given.
    pub fn generate(sampled: bool) -> Self {
        let flags = Self::RANDOM | if sampled { Self::SAMPLED } else { 0 };
        TraceParent { trace_id: TraceId::random(), parent_id: SpanId::random(), flags }
    }

    /// Parse and validate a `traceparent` value.
    pub fn parse(value: &str) -> Result<Self, InvalidTraceParent> {
        Self::parse_bytes(value.as_bytes())
    }

    /// Parse and validate a `traceparent` value given as bytes (as in a
    /// header).
    pub fn parse_bytes(v: &[u8]) -> Result<Self, InvalidTraceParent> {
        if v.len() < Self::LEN {
            return Err(InvalidTraceParent::Length { len: v.len() });
        }
        let mut version = [0u8; 1];
        decode_hex(&v[0..2], 0, &mut version)?;
        if version[0] == 0xff {
            return Err(InvalidTraceParent::Version);
        }
        if version[0] == 0 && v.len() != Self::LEN {
            return Err(InvalidTraceParent::Length { len: v.len() });
        }
        for index in [2, 35, 52] {
            if v[index] != b'-' {
                return Err(InvalidTraceParent::Delimiter { index });
            }
        }
        if v.len() > Self::LEN && v[Self::LEN] != b'-' {
            return Err(InvalidTraceParent::Delimiter { index: Self::LEN });
        }
        let mut trace_id = [0u8; 16];
        decode_hex(&v[3..35], 3, &mut trace_id)?;
        let mut parent_id = [0u8; 8];
        decode_hex(&v[36..52], 36, &mut parent_id)?;
        let mut flags = [0u8; 1];
        decode_hex(&v[53..55], 53, &mut flags)?;
        let trace_id = TraceId::from_bytes(trace_id).ok_or(InvalidTraceParent::ZeroTraceId)?;
        let parent_id = SpanId::from_bytes(parent_id).ok_or(InvalidTraceParent::ZeroParentId)?;
        Ok(TraceParent::new(trace_id, parent_id, flags[0]))
    }

    /// The trace id.
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The parent id: the id of the span that sent (or will send) this value.
    pub fn parent_id(&self) -> SpanId {
        self.parent_id
    }

    /// The trace flags (only the known bits, see the type docs).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the caller may have recorded the trace (the `sampled` flag).
    pub fn sampled(&self) -> bool {
        self.flags & Self::SAMPLED != 0
    }

    /// The same, with the `sampled` flag set or cleared.
    pub fn with_sampled(self, sampled: bool) -> Self {
        let flags = (self.flags & !Self::SAMPLED) | if sampled { Self::SAMPLED } else { 0 };
        TraceParent { flags, ..self }
    }

    /// The value for the next hop: same trace id and flags, a new random
    /// parent id.
    pub fn child(&self) -> Self {
        let mut parent_id = SpanId::random();
        while parent_id == self.parent_id {
            parent_id = SpanId::random();
        }
        TraceParent { parent_id, ..*self }
    }

    /// The header form, written into a stack buffer.
    fn encode(&self) -> [u8; Self::LEN] {
        let mut buf = [b'-'; Self::LEN];
        buf[0] = b'0';
        buf[1] = b'0';
        encode_hex(&self.trace_id.0, &mut buf[3..35]);
        encode_hex(&self.parent_id.0, &mut buf[36..52]);
        encode_hex(&[self.flags], &mut buf[53..55]);
        buf
    }

    /// The header value (version `00`).
    pub fn to_header_value(&self) -> HeaderValue {
        super::id::shared_header_value(self.encode(), "")
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let buf = self.encode();
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

impl FromStr for TraceParent {
    type Err = InvalidTraceParent;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TraceParent::parse(s)
    }
}

impl From<TraceParent> for HeaderValue {
    fn from(tp: TraceParent) -> Self {
        tp.to_header_value()
    }
}

/// A validated W3C `tracestate`: at most 32 `key=value` list members with
/// distinct keys, in the specification's key and value grammar, kept in
/// its compact form (`a=1,b=2`: no spaces, no empty members).
///
/// If the compact form is longer than [`MAX_LEN`](TraceState::MAX_LEN) (512)
/// bytes it is truncated the way the specification says: members longer
/// than 128 bytes are dropped first (from the end), then members from the
/// end, until it fits.
///
/// ```
/// use tower_mesh::correlation::TraceState;
///
/// let ts = TraceState::parse("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE,,").unwrap();
/// assert_eq!(ts.as_str(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
/// assert_eq!(ts.get("congo"), Some("t61rcWkgMzE"));
/// assert_eq!(ts.len(), 2);
///
/// // A vendor's own entry goes first.
/// let ts = ts.insert("acme@tenant", "x1").unwrap();
/// assert_eq!(ts.to_string(), "acme@tenant=x1,rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
///
/// assert!(TraceState::parse("Upper=1").is_err());
/// assert!(TraceState::parse("a=1,a=2").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceState(HeaderValue);

/// One list member, as offsets into the compact form being built.
#[derive(Clone, Copy, Default)]
struct Member<'a> {
    key: &'a [u8],
    value: &'a [u8],
}

impl<'a> Member<'a> {
    fn len(&self) -> usize {
        self.key.len() + 1 + self.value.len()
    }
}

impl TraceState {
    /// The most list members a `tracestate` may have.
    pub const MAX_MEMBERS: usize = 32;
    /// The longest compact form propagated, in bytes.
    pub const MAX_LEN: usize = 512;
    /// Members longer than this are the first dropped when truncating.
    const LONG_MEMBER: usize = 128;

    /// Parse and validate a `tracestate` value.
    pub fn parse(value: &str) -> Result<Self, InvalidTraceState> {
        Self::from_values(std::iter::once(value.as_bytes()))
    }

    /// Parse and validate a `tracestate` sent as several header fields
    /// (their members are joined in order, as the HTTP list syntax says).
    ///
    /// When the value is a single field already in compact form and short
    /// enough, its bytes are shared rather than copied.
    pub fn from_header_values<'a, I>(values: I) -> Result<Self, InvalidTraceState>
    where
        I: IntoIterator<Item = &'a HeaderValue>,
    {
        let mut values = values.into_iter();
        let first = values.next();
        let second = values.next();
        if let (Some(v), None) = (first, second) {
            if is_compact(v.as_bytes()) {
                // Validate without copying; keep the original bytes.
                let mut members = [Member::default(); Self::MAX_MEMBERS];
                collect(std::iter::once(v.as_bytes()), &mut members)?;
                return Ok(TraceState(v.clone()));
            }
        }
        Self::from_values(first.into_iter().chain(second).chain(values).map(HeaderValue::as_bytes))
    }

    fn from_values<'a, I: Iterator<Item = &'a [u8]>>(values: I) -> Result<Self, InvalidTraceState> {
        let mut members = [Member::default(); Self::MAX_MEMBERS];
        let n = collect(values, &mut members)?;
        let mut keep = [true; Self::MAX_MEMBERS];
        let members = &members[..n];
        truncate(members, &mut keep[..n]);
        let mut out = BytesMut::with_capacity(Self::MAX_LEN);
        for (m, _) in members.iter().zip(&keep).filter(|(_, k)| **k) {
            if !out.is_empty() {
                out.put_u8(b',');
            }
            out.put_slice(m.key);
            out.put_u8(b'=');
            out.put_slice(m.value);
        }
        Ok(TraceState(Self::header(out.freeze())))
    }

    fn header(bytes: Bytes) -> HeaderValue {
        // Validated printable ASCII, so this cannot fail.
        HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The compact form (`a=1,b=2`).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }

    /// The compact form as a header value.
    pub fn as_header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// Whether there is no list member.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of list members.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// The list members as `(key, value)`, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.as_str().split(',').filter(|m| !m.is_empty()).filter_map(|m| m.split_once('='))
    }

    /// The value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// A copy with `key=value` as the first member (an earlier member with
    /// that key is removed; if that makes 33 members, the last is dropped),
    /// as a vendor does before propagating. Fails if `key` or `value` breaks
    /// the grammar.
    pub fn insert(&self, key: &str, value: &str) -> Result<TraceState, InvalidTraceState> {
        if !valid_key(key.as_bytes()) {
            return Err(InvalidTraceState::InvalidKey { member: 0 });
        }
        if !valid_value(value.as_bytes()) {
            return Err(InvalidTraceState::InvalidValue { member: 0 });
        }
        let first = format!("{key}={value}");
        let rest = self.as_str().split(',').filter(|m| !m.is_empty() && m.split_once('=').map(|(k, _)| k) != Some(key));
        let joined: Vec<&str> = std::iter::once(first.as_str()).chain(rest).take(Self::MAX_MEMBERS).collect();
        Self::from_values(std::iter::once(joined.join(",").as_bytes()))
    }
}

/// Whether `v` is already in compact form: no spaces or tabs, no empty
/// member, and short enough to need no truncation.
fn is_compact(v: &[u8]) -> bool {
    v.len() <= TraceState::MAX_LEN
        && !v.is_empty()
        && v[0] != b','
        && v[v.len() - 1] != b','
        && !v.windows(2).any(|w| w == b",,")
        && !v.iter().any(|&b| b == b' ' || b == b'\t')
}

/// Validate every list member of `values` into `members`; the number found.
fn collect<'a, I: Iterator<Item = &'a [u8]>>(
    values: I,
    members: &mut [Member<'a>; TraceState::MAX_MEMBERS],
) -> Result<usize, InvalidTraceState> {
    let mut n = 0;
    for value in values {
        for raw in value.split(|&b| b == b',') {
            let m = trim_ows(raw);
            if m.is_empty() {
                continue;
            }
            if n == TraceState::MAX_MEMBERS {
                return Err(InvalidTraceState::TooManyMembers);
            }
            let eq = m.iter().position(|&b| b == b'=').ok_or(InvalidTraceState::MissingEquals { member: n })?;
            let (key, value) = (&m[..eq], &m[eq + 1..]);
            if !valid_key(key) {
                return Err(InvalidTraceState::InvalidKey { member: n });
            }
            if !valid_value(value) {
                return Err(InvalidTraceState::InvalidValue { member: n });
            }
            if members[..n].iter().any(|p| p.key == key) {
                return Err(InvalidTraceState::DuplicateKey { member: n });
            }
            members[n] = Member { key, value };
            n += 1;
        }
    }
    Ok(n)
}

/// Mark the members to drop so the compact form fits in `MAX_LEN`.
fn truncate(members: &[Member<'_>], keep: &mut [bool]) {
    let size = |keep: &[bool]| -> usize {
        let (len, count) =
            members.iter().zip(keep).filter(|(_, k)| **k).fold((0usize, 0usize), |(l, c), (m, _)| (l + m.len(), c + 1));
        len + count.saturating_sub(1)
    };
    for i in (0..members.len()).rev() {
        if size(keep) <= TraceState::MAX_LEN {
            return;
        }
        if members[i].len() > TraceState::LONG_MEMBER {
            keep[i] = false;
        }
    }
    for i in (0..members.len()).rev() {
        if size(keep) <= TraceState::MAX_LEN {
            return;
        }
        keep[i] = false;
    }
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[inline]
fn key_char(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/')
}

/// `simple-key` (a lowercase letter then up to 255 key characters) or
/// `tenant-id@system-id` (a letter or digit then up to 240; a letter then up
/// to 13).
fn valid_key(key: &[u8]) -> bool {
    match key.iter().position(|&b| b == b'@') {
        None => (1..=256).contains(&key.len()) && key[0].is_ascii_lowercase() && key[1..].iter().all(|&b| key_char(b)),
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && (tenant[0].is_ascii_lowercase() || tenant[0].is_ascii_digit())
                && tenant[1..].iter().all(|&b| key_char(b))
                && (1..=14).contains(&system.len())
                && system[0].is_ascii_lowercase()
                && system[1..].iter().all(|&b| key_char(b))
        }
    }
}

/// Up to 256 printable ASCII characters other than `,` and `=`, not ending
/// with a space.
fn valid_value(value: &[u8]) -> bool {
    (1..=256).contains(&value.len())
        && value.iter().all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && value[value.len() - 1] != b' '
}

impl fmt::Display for TraceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TraceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TraceState").field(&self.as_str()).finish()
    }
}

impl FromStr for TraceState {
    type Err = InvalidTraceState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TraceState::parse(s)
    }
}

impl From<TraceState> for HeaderValue {
    fn from(ts: TraceState) -> Self {
        ts.0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

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
}
