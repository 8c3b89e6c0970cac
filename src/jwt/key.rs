//! Verification keys, each with its one algorithm.

use std::fmt;

use std::sync::Arc;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::de::DeserializeOwned;

use super::error::{JwtConfigError, JwtError};
use super::jws::{ClaimRules, Jws};

/// A key that verifies tokens, with the **one** algorithm it accepts.
///
/// The algorithm is the key's, never the token's: a token whose header names
/// another algorithm (`none`, or `HS256` to trick the server into using an
/// RSA public key as an HMAC secret) is refused with
/// [`JwtError::AlgorithmMismatch`] before any signature check.
///
/// ```
/// use tower_mesh::jwt::{Algorithm, JwtKey};
///
/// let key = JwtKey::hmac(b"a secret of at least 32 bytes....", Algorithm::HS256).unwrap().with_kid("k1");
/// assert_eq!(key.kid(), Some("k1"));
/// // An algorithm of another kind of key is a configuration error.
/// assert!(JwtKey::hmac(b"secret", Algorithm::RS256).is_err());
/// ```
#[derive(Clone)]
pub struct JwtKey {
    pub(crate) kid: Option<String>,
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

impl JwtKey {
    /// An HMAC secret for `HS256`, `HS384` or `HS512`.
    pub fn hmac(secret: impl AsRef<[u8]>, alg: Algorithm) -> Result<Self, JwtConfigError> {
        Self::from_decoding_key(DecodingKey::from_secret(secret.as_ref()), alg)
    }

    /// An RSA public key in PEM (PKCS#1 or SPKI) for `RS256`…`RS512` or
    /// `PS256`…`PS512`.
    pub fn rsa_pem(pem: impl AsRef<[u8]>, alg: Algorithm) -> Result<Self, JwtConfigError> {
        Self::from_decoding_key(DecodingKey::from_rsa_pem(pem.as_ref()).map_err(JwtConfigError::Key)?, alg)
    }

    /// An EC public key in PEM (SPKI) for `ES256` (P-256) or `ES384` (P-384).
    pub fn ec_pem(pem: impl AsRef<[u8]>, alg: Algorithm) -> Result<Self, JwtConfigError> {
        Self::from_decoding_key(DecodingKey::from_ec_pem(pem.as_ref()).map_err(JwtConfigError::Key)?, alg)
    }

    /// An Ed25519 public key in PEM (SPKI) for `EdDSA`.
    pub fn ed_pem(pem: impl AsRef<[u8]>) -> Result<Self, JwtConfigError> {
        Self::from_decoding_key(DecodingKey::from_ed_pem(pem.as_ref()).map_err(JwtConfigError::Key)?, Algorithm::EdDSA)
    }

    /// Any `jsonwebtoken` key, with the algorithm it is for.
    pub fn from_decoding_key(key: DecodingKey, alg: Algorithm) -> Result<Self, JwtConfigError> {
        if key.family() != alg.family() {
            return Err(JwtConfigError::AlgorithmFamily { alg, key: family_name(key.family()) });
        }
        Ok(JwtKey { kid: None, alg, key })
    }

    /// Give the key an id: a token naming this `kid` in its header is checked
    /// with this key.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The key's id.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithm the key accepts.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

pub(crate) fn family_name(family: AlgorithmFamily) -> &'static str {
    match family {
        AlgorithmFamily::Hmac => "an HMAC",
        AlgorithmFamily::Rsa => "an RSA",
        AlgorithmFamily::Ec => "an EC",
        AlgorithmFamily::Ed => "an EdDSA",
    }
}

/// A key ready to verify: its algorithm, and the `jsonwebtoken` key and
/// validation (the layer's claim rules, for this algorithm) made once.
pub(crate) struct VerifyKey {
    pub(crate) kid: Option<String>,
    pub(crate) alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

impl VerifyKey {
    pub(crate) fn new(key: JwtKey, rules: &Arc<ClaimRules>) -> Self {
        VerifyKey { kid: key.kid, alg: key.alg, key: key.key, validation: rules.for_alg(key.alg) }
    }

    /// Verify `jws` and check its claims.
    #[inline]
    pub(crate) fn verify<C: DeserializeOwned>(&self, jws: &Jws<'_>) -> Result<C, JwtError> {
        super::jws::verify(jws, &self.key, self.alg, &self.validation)
    }
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}
