//! WS-Security UsernameToken and WS-Addressing header blocks.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use sha1::{Digest, Sha1};

use super::version::SoapVersion;
use super::write::{escape_into, push_str};

/// Namespace of the WS-Security `wsse` elements.
pub const WSSE_NS: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
/// Namespace of the WS-Security utility (`wsu`) elements.
pub const WSU_NS: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
/// Namespace of WS-Addressing 1.0.
pub const WSA_NS: &str = "http://www.w3.org/2005/08/addressing";
/// Namespace of the `CorrelationId` header block that carries the
/// correlation id in scope beside the WS-Addressing headers (see
/// [`WsAddressing`]).
pub const CORRELATION_NS: &str = "urn:tower-mesh:correlation";

const PASSWORD_TEXT: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText";
const PASSWORD_DIGEST: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest";
const BASE64_BINARY: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary";

/// How a [`UsernameToken`] sends the password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordType {
    /// In clear text (only over TLS).
    Text,
    /// `Base64(SHA-1(nonce + created + password))`.
    Digest,
}

/// A WS-Security UsernameToken (UsernameToken Profile 1.0), written as a
/// `wsse:Security` header block with a fresh random nonce and creation time
/// for every request, and a `wsu:Timestamp` (5 minutes by default).
///
/// Its `Debug` output never shows the password.
///
/// ```
/// use tower_mesh::soap::{PasswordType, UsernameToken};
///
/// let token = UsernameToken::digest("alice", "s3cret");
/// assert_eq!(token.password_type(), PasswordType::Digest);
/// assert!(!format!("{token:?}").contains("s3cret"));
/// // Base64(SHA-1(nonce + created + password)), as computed by Python's hashlib:
/// assert_eq!(
///     UsernameToken::password_digest(b"0123456789abcdef", "2024-01-01T00:00:00.000Z", "s3cret"),
///     "OV9P0br1OAsNn9E57LcrmYfobc0=",
/// );
/// ```
#[derive(Clone)]
pub struct UsernameToken {
    username: String,
    password: String,
    kind: PasswordType,
    timestamp_ttl: Option<Duration>,
}

impl fmt::Debug for UsernameToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsernameToken")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("kind", &self.kind)
            .field("timestamp_ttl", &self.timestamp_ttl)
            .finish()
    }
}

impl UsernameToken {
    /// A token sending the password as text.
    pub fn text(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self::new(username, password, PasswordType::Text)
    }

    /// A token sending the password digest.
    pub fn digest(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self::new(username, password, PasswordType::Digest)
    }

    /// A token of the given type.
    pub fn new(username: impl Into<String>, password: impl Into<String>, kind: PasswordType) -> Self {
        UsernameToken {
            username: username.into(),
            password: password.into(),
            kind,
            timestamp_ttl: Some(Duration::from_secs(300)),
        }
    }

    /// The lifetime written in `wsu:Timestamp/wsu:Expires`; `None` sends no
    /// `wsu:Timestamp` (the token still has its `wsu:Created`).
    pub fn timestamp(mut self, ttl: Option<Duration>) -> Self {
        self.timestamp_ttl = ttl;
        self
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password type.
    pub fn password_type(&self) -> PasswordType {
        self.kind
    }

    /// `Base64(SHA-1(nonce + created + password))`, the PasswordDigest of the
    /// UsernameToken profile (`nonce` is the raw nonce, not its base64 form).
    pub fn password_digest(nonce: &[u8], created: &str, password: &str) -> String {
        let mut h = Sha1::new();
        h.update(nonce);
        h.update(created.as_bytes());
        h.update(password.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(h.finalize())
    }

    /// Write the `wsse:Security` block with a fresh nonce and the current time.
    pub(crate) fn write(&self, version: SoapVersion, out: &mut Vec<u8>) -> Result<(), getrandom::Error> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce)?;
        self.write_with(version, SystemTime::now(), &nonce, out);
        Ok(())
    }

    /// Write the `wsse:Security` block for `now` and `nonce`.
    pub fn write_with(&self, version: SoapVersion, now: SystemTime, nonce: &[u8], out: &mut Vec<u8>) {
        let created = Timestamp(now);
        let mut created_buf = [0u8; 24];
        let created_str = created.write(&mut created_buf);
        push_str(out, "<wsse:Security xmlns:wsse=\"");
        push_str(out, WSSE_NS);
        push_str(out, "\" xmlns:wsu=\"");
        push_str(out, WSU_NS);
        push_str(out, "\" soap:mustUnderstand=\"");
        push_str(out, version.true_value());
        push_str(out, "\">");
        if let Some(ttl) = self.timestamp_ttl {
            let mut expires_buf = [0u8; 24];
            let expires = Timestamp(now + ttl).write(&mut expires_buf);
            push_str(out, "<wsu:Timestamp><wsu:Created>");
            push_str(out, created_str);
            push_str(out, "</wsu:Created><wsu:Expires>");
            push_str(out, expires);
            push_str(out, "</wsu:Expires></wsu:Timestamp>");
        }
        push_str(out, "<wsse:UsernameToken><wsse:Username>");
        escape_into(&self.username, out);
        push_str(out, "</wsse:Username><wsse:Password Type=\"");
        match self.kind {
            PasswordType::Text => {
                push_str(out, PASSWORD_TEXT);
                push_str(out, "\">");
                escape_into(&self.password, out);
            }
            PasswordType::Digest => {
                push_str(out, PASSWORD_DIGEST);
                push_str(out, "\">");
                push_str(out, &Self::password_digest(nonce, created_str, &self.password));
            }
        }
        push_str(out, "</wsse:Password><wsse:Nonce EncodingType=\"");
        push_str(out, BASE64_BINARY);
        push_str(out, "\">");
        push_str(out, &base64::engine::general_purpose::STANDARD.encode(nonce));
        push_str(out, "</wsse:Nonce><wsu:Created>");
        push_str(out, created_str);
        push_str(out, "</wsu:Created></wsse:UsernameToken></wsse:Security>");
    }
}

/// A UTC time written as `xsd:dateTime` with milliseconds: `2024-01-31T23:59:59.123Z`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timestamp(pub(crate) SystemTime);

impl Timestamp {
    pub(crate) fn write(self, buf: &mut [u8; 24]) -> &str {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let millis = since.subsec_millis();
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        let (hh, mm, ss) = (rem / 3600, (rem % 3600) / 60, rem % 60);
        let mut put = |at: usize, value: u64, width: usize| {
            let mut v = value;
            for i in (0..width).rev() {
                buf[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, y.clamp(0, 9999) as u64, 4);
        put(5, m as u64, 2);
        put(8, d as u64, 2);
        put(11, hh, 2);
        put(14, mm, 2);
        put(17, ss, 2);
        put(20, millis as u64, 3);
        buf[4] = b'-';
        buf[7] = b'-';
        buf[10] = b'T';
        buf[13] = b':';
        buf[16] = b':';
        buf[19] = b'.';
        buf[23] = b'Z';
        std::str::from_utf8(buf).unwrap_or("1970-01-01T00:00:00.000Z")
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day)
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// WS-Addressing headers sent with every request: `wsa:Action` (the
/// request's action), `wsa:MessageID`, `wsa:To` (the endpoint) and
/// optionally `wsa:ReplyTo`.
///
/// Every message gets its own `MessageID`, a fresh `urn:uuid:` (UUID v4), so
/// two calls made while handling one request never share one (WS-Addressing
/// requires it unique; receivers drop duplicates). With the `correlation-id`
/// feature, the correlation id in scope (a current
/// `correlation::RequestContext`) travels in its own header block,
/// `<cid:CorrelationId xmlns:cid="urn:tower-mesh:correlation">…</cid:CorrelationId>`
/// (see [`CORRELATION_NS`]), which receivers may ignore.
#[derive(Clone, Debug, Default)]
pub struct WsAddressing {
    reply_to: Option<String>,
}

impl WsAddressing {
    /// Addressing headers with no `ReplyTo` (anonymous).
    pub fn new() -> Self {
        Self::default()
    }

    /// Send `wsa:ReplyTo/wsa:Address`.
    pub fn reply_to(mut self, address: impl Into<String>) -> Self {
        self.reply_to = Some(address.into());
        self
    }

    pub(crate) fn write(&self, version: SoapVersion, action: Option<&str>, to: &str, out: &mut Vec<u8>) {
        let attrs = |out: &mut Vec<u8>| {
            push_str(out, " xmlns:wsa=\"");
            push_str(out, WSA_NS);
            push_str(out, "\"");
        };
        if let Some(action) = action {
            push_str(out, "<wsa:Action");
            attrs(out);
            push_str(out, " soap:mustUnderstand=\"");
            push_str(out, version.true_value());
            push_str(out, "\">");
            escape_into(action, out);
            push_str(out, "</wsa:Action>");
        }
        push_str(out, "<wsa:MessageID");
        attrs(out);
        push_str(out, ">");
        write_message_id(out);
        push_str(out, "</wsa:MessageID><wsa:To");
        attrs(out);
        push_str(out, ">");
        escape_into(to, out);
        push_str(out, "</wsa:To>");
        #[cfg(feature = "correlation-id")]
        if let Some(ctx) = crate::correlation::RequestContext::current() {
            push_str(out, "<cid:CorrelationId xmlns:cid=\"");
            push_str(out, CORRELATION_NS);
            push_str(out, "\">");
            escape_into(ctx.correlation_id.as_str(), out);
            push_str(out, "</cid:CorrelationId>");
        }
        if let Some(reply_to) = &self.reply_to {
            push_str(out, "<wsa:ReplyTo");
            attrs(out);
            push_str(out, "><wsa:Address>");
            escape_into(reply_to, out);
            push_str(out, "</wsa:Address></wsa:ReplyTo>");
        }
    }
}

/// A fresh `MessageID`: see [`WsAddressing`].
fn write_message_id(out: &mut Vec<u8>) {
    push_str(out, "urn:uuid:");
    let mut buf = correlation_uuid::Uuid::encode_buffer();
    push_str(out, correlation_uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let mut buf = [0u8; 24];
        assert_eq!(Timestamp(UNIX_EPOCH).write(&mut buf), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123); // 2024-02-29T23:59:59.123Z
        assert_eq!(Timestamp(t).write(&mut buf), "2024-02-29T23:59:59.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(Timestamp(t).write(&mut buf), "2000-02-29T00:00:00.000Z");
    }
}
