//! Why discovery could not refresh a cluster's endpoints.

use std::path::Path;

use super::dns;

/// Why discovery could not refresh a cluster's endpoints (shown in
/// `/clusters` as its `last_error`; the last good set stays).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A DNS lookup failed.
    #[error("{name}: {error}")]
    Lookup { name: String, error: dns::DnsError },
    /// A name came back without an address.
    #[error("{name}: {what}")]
    NoAddress { name: String, what: &'static str },
    /// An endpoint file cannot be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    /// An endpoint file's content is refused (syntax, a weight, a
    /// priority, an address that does not resolve).
    #[error("{}: {message}", path.display())]
    File {
        path: std::path::PathBuf,
        message: String,
    },
}

impl DiscoveryError {
    pub(super) fn file(path: &Path, message: impl std::fmt::Display) -> Self {
        DiscoveryError::File {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}
