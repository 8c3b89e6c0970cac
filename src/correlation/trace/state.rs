//! The W3C `tracestate` header: [`TraceState`].

use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderValue;

use crate::correlation::error::InvalidTraceState;

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
