//! The limits every message is read within.

#[cfg(doc)]
use super::{HeaderBlock, SoapError};

/// Default maximum size of a SOAP message: 4 MiB.
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;
/// Default maximum element nesting depth.
pub const DEFAULT_MAX_DEPTH: usize = 64;
/// Default maximum number of namespace declarations in scope at once (as
/// quick-xml's own namespace reader).
pub const DEFAULT_MAX_NAMESPACES: usize = 128;
/// Default maximum number of attributes (namespace declarations included) of
/// one start tag.
pub const DEFAULT_MAX_ATTRIBUTES: usize = 256;
/// Default maximum number of header blocks.
pub const DEFAULT_MAX_HEADER_BLOCKS: usize = 256;

/// Limits applied to every message read (requests on the server side,
/// responses on the client side, WSDL documents).
///
/// Together they bound the work a message costs: within them, a message of
/// any shape parses in time linear in its size (namespace prefixes are
/// resolved through a hashed scope, not by scanning every declaration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoapLimits {
    pub(super) max_body: usize,
    pub(super) max_depth: usize,
    pub(super) max_namespaces: usize,
    pub(super) max_attributes: usize,
    pub(super) max_header_blocks: usize,
}

impl Default for SoapLimits {
    fn default() -> Self {
        SoapLimits {
            max_body: DEFAULT_MAX_BODY,
            max_depth: DEFAULT_MAX_DEPTH,
            max_namespaces: DEFAULT_MAX_NAMESPACES,
            max_attributes: DEFAULT_MAX_ATTRIBUTES,
            max_header_blocks: DEFAULT_MAX_HEADER_BLOCKS,
        }
    }
}

impl SoapLimits {
    /// The defaults: 4 MiB, depth 64, 128 namespace declarations in scope,
    /// 256 attributes per start tag, 256 header blocks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maximum message size in bytes, as received (a UTF-16 message is
    /// checked before it is transcoded); larger messages fail with
    /// [`SoapError::TooLarge`] before they are read to the end. The
    /// namespace declarations added to make header blocks and a fault detail
    /// standalone (see [`HeaderBlock::raw`]) may add at most as much again.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Maximum element nesting depth (the `Envelope` is depth 1); deeper
    /// messages fail with [`SoapError::TooDeep`].
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth;
        self
    }

    /// Maximum number of namespace declarations in scope at once on the
    /// elements the parser reads (the `Envelope`, `Header`, `Body`, each
    /// header block's start tag, the first Body element and the Fault);
    /// more fail with [`SoapError::TooManyNamespaces`]. Content passed on as
    /// a slice is not counted: whoever parses it does.
    pub fn max_namespaces(mut self, n: usize) -> Self {
        self.max_namespaces = n;
        self
    }

    /// Maximum number of attributes, namespace declarations included, of a
    /// start tag the parser reads (as for [`max_namespaces`](Self::max_namespaces));
    /// more fail with [`SoapError::TooManyAttributes`].
    pub fn max_attributes(mut self, n: usize) -> Self {
        self.max_attributes = n;
        self
    }

    /// Maximum number of header blocks; more fail with
    /// [`SoapError::TooManyHeaderBlocks`].
    pub fn max_header_blocks(mut self, n: usize) -> Self {
        self.max_header_blocks = n;
        self
    }

    /// The size limit.
    pub fn body_limit(&self) -> usize {
        self.max_body
    }

    /// The depth limit.
    pub fn depth_limit(&self) -> usize {
        self.max_depth
    }

    /// The limit on namespace declarations in scope.
    pub fn namespace_limit(&self) -> usize {
        self.max_namespaces
    }

    /// The limit on attributes per start tag.
    pub fn attribute_limit(&self) -> usize {
        self.max_attributes
    }

    /// The limit on header blocks.
    pub fn header_block_limit(&self) -> usize {
        self.max_header_blocks
    }
}
