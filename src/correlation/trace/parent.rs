//! The W3C `traceparent` header: [`TraceParent`], [`TraceId`], [`SpanId`].

use std::fmt;
use std::str::FromStr;

use http::HeaderValue;

use crate::correlation::error::InvalidTraceParent;

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
pub struct TraceId(pub(super) [u8; 16]);

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
pub struct SpanId(pub(super) [u8; 8]);

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
        crate::correlation::id::shared_header_value(self.encode(), "")
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
