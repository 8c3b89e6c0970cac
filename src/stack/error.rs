//! Errors of loading a stack configuration.

use std::fmt;

use crate::config::ConfigError;

/// A stack configuration that cannot be loaded or built.
#[derive(Debug)]
#[non_exhaustive]
pub enum StackError {
    /// The file could not be read.
    Io {
        /// The file's path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The document is not valid TOML.
    Parse(Box<dyn std::error::Error + Send + Sync>),
    /// A section has an unknown field or a value of the wrong type.
    Section {
        /// The service (or `server`) of the section.
        service: String,
        /// What is wrong, with the field's name.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A key at the top level that is neither `preset`, `client` nor `server`.
    UnknownKey(String),
    /// `preset` is not `development`, `testing` or `production`.
    UnknownPreset(String),
    /// A key that must hold a table holds something else.
    NotATable(String),
    /// A layer that keeps or shares responses (`fallback`, `coalesce`) is
    /// configured for a stack built without a buffered body: build it with
    /// [`ClientConfig::buffered_http_stack`](super::ClientConfig::buffered_http_stack).
    NeedsBufferedBody {
        /// The service.
        service: String,
        /// The layer's section.
        layer: &'static str,
    },
    /// The values do not work together (see [`ClientConfig::validate`](super::ClientConfig::validate)).
    Invalid {
        /// The service (or `server`).
        service: String,
        /// The offending values.
        source: ConfigError,
    },
}

impl fmt::Display for StackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StackError::Io { path, .. } => write!(f, "cannot read the stack configuration {path}"),
            StackError::Parse(_) => f.write_str("the stack configuration is not valid TOML"),
            StackError::Section { service, .. } => write!(f, "invalid section for `{service}`"),
            StackError::UnknownKey(k) => {
                write!(f, "unknown key `{k}` in the stack configuration (expected `preset`, `client` or `server`)")
            }
            StackError::UnknownPreset(p) => {
                write!(f, "unknown preset {p:?} (expected `development`, `testing` or `production`)")
            }
            StackError::NotATable(k) => write!(f, "`{k}` must be a table"),
            StackError::NeedsBufferedBody { service, layer } => write!(
                f,
                "`{layer}` of `{service}` keeps or shares responses: build the stack with `buffered_http_stack` \
                 around a client with a buffered response body"
            ),
            StackError::Invalid { service, .. } => write!(f, "invalid configuration for `{service}`"),
        }
    }
}

impl std::error::Error for StackError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StackError::Io { source, .. } => Some(source),
            StackError::Parse(e) | StackError::Section { source: e, .. } => Some(&**e),
            StackError::Invalid { source, .. } => Some(source),
            _ => None,
        }
    }
}
