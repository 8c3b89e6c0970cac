//! The caller's bearer token and its task-local scope.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use pin_project_lite::pin_project;

use super::error::JwtError;

/// The raw bearer token of the request being handled.
///
/// [`JwtPropagationLayer`](super::JwtPropagationLayer) makes the validated
/// token [current](BearerToken::current) while the inner service handles the
/// request, and [`JwtClientLayer`](super::JwtClientLayer) attaches it to
/// outgoing requests to allowed hosts.
///
/// It never shows itself by accident: `Debug` prints `BearerToken([redacted])`,
/// there is no `Display`, and the header value it makes is marked
/// [sensitive](HeaderValue::set_sensitive) (HTTP/2 never indexes it, and
/// `Debug` of the header map hides it). Read the token itself only through
/// [`expose`](BearerToken::expose).
///
/// Cloning is cheap: it shares the bytes of the `Authorization` header it came
/// from.
///
/// ```
/// use tower_mesh::jwt::BearerToken;
///
/// let token = BearerToken::new("eyJhbGciOiJIUzI1NiJ9.e30.c2ln").unwrap();
/// assert_eq!(format!("{token:?}"), "BearerToken([redacted])");
/// assert_eq!(token.expose(), "eyJhbGciOiJIUzI1NiJ9.e30.c2ln");
/// assert!(token.header_value().is_sensitive());
///
/// assert!(BearerToken::current().is_none());
/// token.sync_scope(|| assert!(BearerToken::current().is_some()));
///
/// // Anything that is not a token68 string is refused.
/// assert!(BearerToken::new("a b").is_err());
/// assert!(BearerToken::new("a\r\nb").is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken {
    /// A complete `Authorization` value: `Bearer <token>` (any case, one or
    /// more spaces), sensitive.
    header: HeaderValue,
    /// Where the token starts in `header`.
    start: u16,
}

impl BearerToken {
    /// A token from its text (e.g. one returned by a token-exchange service).
    ///
    /// It must be a non-empty RFC 6750 `b64token` (letters, digits and
    /// `-._~+/`, then optional `=` padding) of at most 16 KiB.
    pub fn new(token: &str) -> Result<Self, JwtError> {
        check_token68(token.as_bytes())?;
        if token.len() > MAX_LEN {
            return Err(JwtError::TooLarge { len: token.len(), max: MAX_LEN });
        }
        let mut v = Vec::with_capacity(7 + token.len());
        v.extend_from_slice(b"Bearer ");
        v.extend_from_slice(token.as_bytes());
        // Checked above: visible ASCII only.
        let mut header = HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).map_err(|_| JwtError::Malformed)?;
        header.set_sensitive(true);
        Ok(BearerToken { header, start: 7 })
    }

    /// The token of an `Authorization` header value: the `Bearer` scheme (any
    /// case), one or more spaces, and a `b64token`. Shares the value's bytes.
    pub fn from_authorization(value: &HeaderValue) -> Result<Self, JwtError> {
        let token = Self::from_authorization_unchecked(value)?;
        check_token68(token.as_bytes())?;
        Ok(token)
    }

    /// [`from_authorization`](Self::from_authorization) without the pass over
    /// the token's characters, for a token about to be verified: `jsonwebtoken`
    /// decodes its three parts as unpadded base64url, so a token that verifies
    /// has `b64token` characters only, and one that does not is dropped.
    #[inline]
    pub(crate) fn from_authorization_unchecked(value: &HeaderValue) -> Result<Self, JwtError> {
        let b = value.as_bytes();
        if b.len() > MAX_LEN {
            return Err(JwtError::TooLarge { len: b.len(), max: MAX_LEN });
        }
        if b.len() < 7 || !b[..6].eq_ignore_ascii_case(b"bearer") || b[6] != b' ' {
            return Err(JwtError::Malformed);
        }
        let start = 7 + b[7..].iter().take_while(|&&c| c == b' ').count();
        let mut header = value.clone();
        header.set_sensitive(true);
        Ok(BearerToken { header, start: start as u16 })
    }

    /// The token's bytes (no UTF-8 check, unlike [`expose`](Self::expose)).
    #[inline]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.header.as_bytes()[self.start as usize..]
    }

    /// The token itself. Handle with care: never log it.
    pub fn expose(&self) -> &str {
        // `check_token68` (or the signature check) accepted only ASCII.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The token's length in bytes.
    pub fn len(&self) -> usize {
        self.header.len() - self.start as usize
    }

    /// Never true: a token is not empty (present for clippy's sake).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An `Authorization: Bearer …` value, marked sensitive. No allocation:
    /// the value shares the token's bytes.
    pub fn header_value(&self) -> HeaderValue {
        self.header.clone()
    }

    /// The token of the request being handled on this task, if a
    /// [`JwtPropagationLayer`](super::JwtPropagationLayer) validated one.
    ///
    /// A task spawned by the handler does not inherit it; wrap its future
    /// in [`BearerToken::scope`].
    #[inline]
    pub fn current() -> Option<BearerToken> {
        CURRENT.with(|c| {
            let t = c.take();
            let r = t.clone();
            c.set(t);
            r
        })
    }

    /// Poll `fut` with this token [current](BearerToken::current).
    pub fn scope<F: Future>(self, fut: F) -> TokenScope<F> {
        TokenScope { inner: fut, token: Some(self) }
    }

    /// Run `f` with this token [current](BearerToken::current).
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        let mut slot = Some(self);
        let _restore = enter(&mut slot);
        f()
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken([redacted])")
    }
}

/// Largest token (or `Authorization` value) a [`BearerToken`] holds at all;
/// the server layer's own cap ([`max_token_len`](super::JwtPropagationBuilder::max_token_len))
/// is usually lower.
pub(crate) const MAX_LEN: usize = 16 * 1024;

/// RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
///
/// One branch-free pass over the characters, which the compiler vectorizes.
/// The server layer skips it: verification checks a token's characters
/// anyway (see [`BearerToken::from_authorization_unchecked`]).
pub(crate) fn check_token68(b: &[u8]) -> Result<(), JwtError> {
    let padding = b.iter().rev().take_while(|&&c| c == b'=').count();
    let body = &b[..b.len() - padding];
    let ok = !body.is_empty() && body.iter().fold(true, |ok, &c| ok & b64token_char(c));
    if ok {
        Ok(())
    } else {
        Err(JwtError::Malformed)
    }
}

/// A `b64token` character other than the `=` padding.
#[inline(always)]
fn b64token_char(c: u8) -> bool {
    // `c | 0x20` folds ASCII upper case onto lower case (and sends no other
    // byte into `a..=z`); `-`, `.`, `/` and the digits are one range
    // (0x2d..=0x39).
    ((c | 0x20).wrapping_sub(b'a') < 26)
        | (c.wrapping_sub(b'-') <= b'9' - b'-')
        | (c == b'_')
        | (c == b'~')
        | (c == b'+')
}

// The token current on this thread. `TokenScope` moves its token in around
// every poll of the future it wraps (and back out after), so it follows the
// task exactly as a tokio task-local would.
thread_local! {
    static CURRENT: Cell<Option<BearerToken>> = const { Cell::new(None) };
}

/// Puts the previous token back when dropped (also on unwind), handing the
/// scoped one back to its owner.
struct Restore<'a> {
    prev: Option<BearerToken>,
    owner: &'a mut Option<BearerToken>,
}

impl Drop for Restore<'_> {
    #[inline]
    fn drop(&mut self) {
        let prev = self.prev.take();
        *self.owner = CURRENT.with(|c| c.replace(prev));
    }
}

#[inline]
fn enter(slot: &mut Option<BearerToken>) -> Restore<'_> {
    let prev = CURRENT.with(|c| c.replace(slot.take()));
    Restore { prev, owner: slot }
}

pin_project! {
    /// A future polled with a [`BearerToken`] current: see
    /// [`BearerToken::scope`].
    pub struct TokenScope<F> {
        #[pin]
        inner: F,
        token: Option<BearerToken>,
    }
}

impl<F> TokenScope<F> {
    /// Call `f` with `token` current and scope the future it returns with it.
    #[inline]
    pub(crate) fn call(token: BearerToken, f: impl FnOnce() -> F) -> Self {
        let mut token = Some(token);
        let inner = {
            let _restore = enter(&mut token);
            f()
        };
        TokenScope { inner, token }
    }
}

impl<F> fmt::Debug for TokenScope<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenScope").field("token", &self.token).finish_non_exhaustive()
    }
}

impl<F: Future> Future for TokenScope<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _restore = enter(this.token);
        this.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grammar as RFC 6750 writes it, one byte at a time.
    fn rfc_char(c: u8) -> bool {
        c.is_ascii_alphanumeric() || b"-._~+/".contains(&c)
    }

    #[test]
    fn every_byte_is_classified_as_the_rfc_says() {
        for c in 0..=255u8 {
            assert_eq!(b64token_char(c), rfc_char(c), "byte {c:#04x}");
            // Alone, in the middle of a long token (the vectorized part), and before padding.
            let mut long = vec![b'a'; 100];
            long[57] = c;
            assert_eq!(check_token68(&[c]).is_ok(), rfc_char(c), "byte {c:#04x}");
            assert_eq!(check_token68(&long).is_ok(), rfc_char(c), "byte {c:#04x}");
            assert_eq!(check_token68(&[b'x', c, b'=', b'=']).is_ok(), rfc_char(c) || c == b'=', "byte {c:#04x}");
        }
    }

    #[test]
    fn padding_only_at_the_end_and_never_alone() {
        assert!(check_token68(b"abc").is_ok());
        assert!(check_token68(b"abc==").is_ok());
        assert!(check_token68(b"a.b.c=").is_ok());
        assert!(check_token68(b"").is_err());
        assert!(check_token68(b"==").is_err());
        assert!(check_token68(b"ab=c").is_err());
        assert!(check_token68(b"=abc").is_err());
        assert!(check_token68(b"abc= ").is_err());
    }
}
