//! Reading what a failed response says: `Retry-After`, gRPC pushback,
//! `grpc-status` / `grpc-message`, and a loggable excerpt of the body.

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, HeaderValue};

/// The default number of body bytes kept in an excerpt.
pub const EXCERPT_LIMIT: usize = 512;

/// The longest wait a `Retry-After` or pushback is believed up to: larger
/// values are clamped, so adding one to an `Instant` cannot overflow.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// What the server said about trying again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushback {
    /// Nothing.
    Unsaid,
    /// Wait this long first.
    After(Duration),
    /// Do not retry: a negative or unreadable `grpc-retry-pushback-ms`, which
    /// gRFC A6 reads so.
    Refused,
}

/// `Retry-After` as delay-seconds or an HTTP-date, relative to `now`. A date
/// in the past is zero; anything else unreadable is `None`.
pub(crate) fn retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let s = value.to_str().ok()?.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: delay-seconds. Too many digits for a u64 is "a very long time".
        let secs = s.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(s).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER))
}

/// `grpc-retry-pushback-ms` in `headers`.
pub(crate) fn pushback(headers: &HeaderMap) -> Pushback {
    let Some(v) = headers.get("grpc-retry-pushback-ms") else {
        return Pushback::Unsaid;
    };
    // ASCII only: an integer with other (e.g. non-breaking) spaces around it is malformed.
    match v.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok()) {
        Some(ms) if ms >= 0 => Pushback::After(Duration::from_millis(ms as u64).min(MAX_RETRY_AFTER)),
        _ => Pushback::Refused,
    }
}

/// The server's word on retrying: the gRPC pushback if there is one, else
/// `Retry-After`.
pub(crate) fn retry_hint(headers: &HeaderMap, now: SystemTime) -> Pushback {
    match pushback(headers) {
        Pushback::Unsaid => match headers.get(header::RETRY_AFTER).and_then(|v| retry_after(v, now)) {
            Some(d) => Pushback::After(d),
            None => Pushback::Unsaid,
        },
        said => said,
    }
}

pub(crate) use crate::classify::grpc_status;

/// The `grpc-message` in `headers`, percent-decoded and made safe to log.
pub(crate) fn grpc_message(headers: &HeaderMap) -> Option<String> {
    headers.get("grpc-message").map(|v| sanitize(&percent_decode(v.as_bytes())))
}

/// Decode `%XX` escapes (as gRPC encodes `grpc-message`), then UTF-8 lossily.
/// A `%` not followed by two hex digits is kept as it is, as the gRPC spec
/// asks of a receiver.
pub(crate) fn percent_decode(input: &[u8]) -> String {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == b'%' && i + 2 < input.len() {
            if let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encode `message` for `grpc-message`: every byte outside printable ASCII
/// (`0x20..=0x7E`), and `%`, as `%XX`.
pub(crate) fn percent_encode(message: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7E).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        }
    }
    out
}

/// The first `limit` bytes of `body` as text fit for a log line: UTF-8
/// decoded lossily (a character cut in half by the limit is dropped, not
/// replaced) and with control characters other than `\n` and `\t`, and the
/// Unicode bidirectional overrides, replaced by U+FFFD. `None` when the body
/// is empty or `limit` is zero.
pub(crate) fn body_excerpt(body: &[u8], limit: usize) -> Option<String> {
    let mut cut = &body[..body.len().min(limit)];
    if cut.is_empty() {
        return None;
    }
    if cut.len() < body.len() {
        cut = drop_split_char(cut);
    }
    Some(sanitize(&String::from_utf8_lossy(cut)))
}

/// `bytes` without a UTF-8 sequence cut short at its end.
fn drop_split_char(bytes: &[u8]) -> &[u8] {
    // Look back at most 3 bytes for the lead byte of the last sequence.
    for back in 1..=bytes.len().min(4) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte
        }
        let width = match b {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return bytes, // not a lead byte: invalid anyway, leave to lossy decoding
        };
        return if width > back { &bytes[..bytes.len() - back] } else { bytes };
    }
    bytes
}

/// Replace characters that could forge or garble a log line.
pub(crate) fn sanitize(s: &str) -> String {
    if !s.chars().any(is_unsafe) {
        return s.to_owned();
    }
    s.chars().map(|c| if is_unsafe(c) { char::REPLACEMENT_CHARACTER } else { c }).collect()
}

fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}
