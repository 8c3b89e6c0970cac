//! Errors of the JWT layers: why a request was refused, why keys could not be
//! loaded, and what is wrong with a configuration.

use std::fmt;
use std::sync::Arc;

use http::StatusCode;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Algorithm;

use crate::classify::GrpcCode;
use crate::config::ConfigError;
use crate::error::{BoxError, MeshError};

/// Why a bearer token was refused (or, on the client side, why none could be
/// attached).
///
/// None of the messages contains the token, a claim value or a `kid` taken
/// from the request, so they are safe to log.
///
/// Servers answer `401 Unauthorized` / gRPC `UNAUTHENTICATED`, except
/// [`KeysUnavailable`](JwtError::KeysUnavailable) (`503` / `UNAVAILABLE`: the
/// token may be fine, the server cannot check it). [`JwtPropagationLayer`]
/// answers by itself; through [`ServerErrorLayer`](crate::error::ServerErrorLayer)
/// (e.g. an [`Exchange`](JwtError::Exchange) failure returned by a handler)
/// the same mapping applies via [`MeshError`].
///
/// [`JwtPropagationLayer`]: super::JwtPropagationLayer
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum JwtError {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <b64token>`, more than one `Authorization` header, or not
    /// a well-formed JWT (three base64url parts of JSON).
    Malformed,
    /// The `Authorization` value is longer than allowed.
    TooLarge {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    NotYetValid,
    /// `aud` names none of the accepted audiences.
    WrongAudience,
    /// `iss` is not an accepted issuer.
    WrongIssuer,
    /// `sub` is not the accepted subject.
    WrongSubject,
    /// The signature does not verify with the key.
    BadSignature,
    /// The token's `alg` is not the algorithm of the key (this includes
    /// `none` and an HMAC token meant to be checked with an RSA public key).
    AlgorithmMismatch,
    /// A claim the layer requires is absent.
    MissingClaim(Arc<str>),
    /// A registered claim has the wrong type (e.g. `exp` as a string), or
    /// the claims do not fit the claims type.
    InvalidClaims,
    /// No key known for the token's `kid` (after a JWKS refresh, or when
    /// refreshing again so soon is not allowed).
    UnknownKey,
    /// The keys could not be loaded from the JWKS URL.
    KeysUnavailable(Arc<JwksError>),
    /// The token-exchange hook failed to give a token for a downstream service.
    Exchange(Arc<dyn std::error::Error + Send + Sync>),
}

impl JwtError {
    /// A short name of the reason, used as the `reason` label of
    /// `tower_mesh_jwt_rejected_total`: `missing`, `malformed`, `too_large`,
    /// `expired`, `not_yet_valid`, `audience`, `issuer`, `subject`,
    /// `signature`, `algorithm`, `missing_claim`, `invalid_claims`,
    /// `unknown_key`, `keys_unavailable`, `exchange`.
    pub fn reason(&self) -> &'static str {
        REASONS[self.index()]
    }

    pub(crate) fn index(&self) -> usize {
        match self {
            JwtError::Missing => 0,
            JwtError::Malformed => 1,
            JwtError::TooLarge { .. } => 2,
            JwtError::Expired => 3,
            JwtError::NotYetValid => 4,
            JwtError::WrongAudience => 5,
            JwtError::WrongIssuer => 6,
            JwtError::WrongSubject => 7,
            JwtError::BadSignature => 8,
            JwtError::AlgorithmMismatch => 9,
            JwtError::MissingClaim(_) => 10,
            JwtError::InvalidClaims => 11,
            JwtError::UnknownKey => 12,
            JwtError::KeysUnavailable(_) => 13,
            JwtError::Exchange(_) => 14,
        }
    }

    /// Whether the server should say `error="invalid_token"` (RFC 6750): every
    /// failure except a missing token and a server-side key problem.
    pub(crate) fn is_invalid_token(&self) -> bool {
        !matches!(self, JwtError::Missing | JwtError::KeysUnavailable(_))
    }

    /// Map an error of `jsonwebtoken::decode`. Its base64 and JSON errors
    /// are dropped: their messages can quote parts of the token.
    pub(crate) fn from_decode(e: &jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidAudience => JwtError::WrongAudience,
            ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
            ErrorKind::InvalidSubject => JwtError::WrongSubject,
            ErrorKind::InvalidSignature => JwtError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
                JwtError::AlgorithmMismatch
            }
            ErrorKind::MissingRequiredClaim(c) => JwtError::MissingClaim(c.as_str().into()),
            ErrorKind::InvalidClaimFormat(_) => JwtError::InvalidClaims,
            // A key that does not parse (e.g. an RSA key whose DER is not a
            // key) cannot verify anything: the signature does not verify.
            ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidEddsaKey => {
                JwtError::BadSignature
            }
            _ => JwtError::Malformed,
        }
    }
}

pub(crate) const REASONS: [&str; 15] = [
    "missing",
    "malformed",
    "too_large",
    "expired",
    "not_yet_valid",
    "audience",
    "issuer",
    "subject",
    "signature",
    "algorithm",
    "missing_claim",
    "invalid_claims",
    "unknown_key",
    "keys_unavailable",
    "exchange",
];

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Missing => f.write_str("no bearer token"),
            JwtError::Malformed => f.write_str("malformed bearer token"),
            JwtError::TooLarge { len, max } => write!(f, "bearer token too large ({len} bytes, at most {max})"),
            JwtError::Expired => f.write_str("token expired"),
            JwtError::NotYetValid => f.write_str("token not valid yet"),
            JwtError::WrongAudience => f.write_str("token not meant for this audience"),
            JwtError::WrongIssuer => f.write_str("token from an untrusted issuer"),
            JwtError::WrongSubject => f.write_str("token for another subject"),
            JwtError::BadSignature => f.write_str("token signature does not verify"),
            JwtError::AlgorithmMismatch => f.write_str("token algorithm is not the key's"),
            JwtError::MissingClaim(c) => write!(f, "token lacks the required claim `{c}`"),
            JwtError::InvalidClaims => f.write_str("token claims are not valid"),
            JwtError::UnknownKey => f.write_str("no key known for the token"),
            JwtError::KeysUnavailable(_) => f.write_str("token keys unavailable"),
            JwtError::Exchange(_) => f.write_str("token exchange failed"),
        }
    }
}

impl std::error::Error for JwtError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JwtError::KeysUnavailable(e) => Some(&**e),
            JwtError::Exchange(e) => Some(&**e),
            _ => None,
        }
    }
}

impl MeshError for JwtError {
    fn http_status(&self) -> StatusCode {
        match self {
            JwtError::KeysUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    fn grpc_code(&self) -> GrpcCode {
        match self {
            JwtError::KeysUnavailable(_) => GrpcCode::Unavailable,
            _ => GrpcCode::Unauthenticated,
        }
    }
}

/// Why keys could not be loaded from a JWKS URL.
#[derive(Debug)]
#[non_exhaustive]
pub enum JwksError {
    /// The request failed (connection refused, reset, …).
    Http(BoxError),
    /// The server answered with a status other than `200`.
    Status(StatusCode),
    /// The document is larger than allowed.
    TooLarge {
        /// The limit in bytes.
        max: usize,
    },
    /// The fetch took longer than allowed.
    Timeout,
    /// The document is not a JWK Set.
    Json(serde_json::Error),
    /// The set has no key usable for signatures with the allowed algorithms.
    NoUsableKeys,
    /// No tokio runtime to run the fetch on.
    NoRuntime,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::Http(_) => f.write_str("JWKS request failed"),
            JwksError::Status(s) => write!(f, "JWKS request answered {s}"),
            JwksError::TooLarge { max } => write!(f, "JWKS document larger than {max} bytes"),
            JwksError::Timeout => f.write_str("JWKS request timed out"),
            JwksError::Json(_) => f.write_str("JWKS document is not a JWK Set"),
            JwksError::NoUsableKeys => f.write_str("JWKS document has no usable signature key"),
            JwksError::NoRuntime => f.write_str("no tokio runtime to fetch the JWKS on"),
        }
    }
}

impl std::error::Error for JwksError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JwksError::Http(e) => Some(&**e),
            JwksError::Json(e) => Some(e),
            _ => None,
        }
    }
}

/// A JWT layer configuration that cannot work.
#[derive(Debug)]
#[non_exhaustive]
pub enum JwtConfigError {
    /// A key that does not parse.
    Key(jsonwebtoken::errors::Error),
    /// An algorithm that does not fit the key's kind (e.g. `HS256` for an
    /// RSA key).
    AlgorithmFamily {
        /// The algorithm given.
        alg: Algorithm,
        /// The kind of key.
        key: &'static str,
    },
    /// Neither a static key nor a JWKS URL.
    NoKeys,
    /// Two static keys with the same `kid`.
    DuplicateKid(String),
    /// A JWKS URL that is not an absolute `http`/`https` URL without user
    /// info (the URL, its user info redacted).
    JwksUrl(String),
    /// An allowlist entry that is not `host`, `host:port`, `*.suffix` or
    /// `*.suffix:port`, optionally after `http://` or `https://`.
    AllowlistEntry {
        /// The entry.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A size or duration out of range.
    Value(ConfigError),
}

impl fmt::Display for JwtConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtConfigError::Key(e) => write!(f, "invalid JWT key: {e}"),
            JwtConfigError::AlgorithmFamily { alg, key } => {
                write!(f, "algorithm {alg:?} cannot be used with {key} key")
            }
            JwtConfigError::NoKeys => f.write_str("no JWT key and no JWKS URL configured"),
            JwtConfigError::DuplicateKid(kid) => write!(f, "two JWT keys with kid `{kid}`"),
            JwtConfigError::JwksUrl(url) => write!(f, "JWKS URL `{url}` is not an absolute http(s) URL"),
            JwtConfigError::AllowlistEntry { entry, reason } => {
                write!(f, "invalid allowlist entry `{entry}`: {reason}")
            }
            JwtConfigError::Value(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for JwtConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JwtConfigError::Key(e) => Some(e),
            JwtConfigError::Value(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConfigError> for JwtConfigError {
    fn from(e: ConfigError) -> Self {
        JwtConfigError::Value(e)
    }
}
