//! The compiler's context: where errors are collected with their
//! positions, and what sections compiled earlier leave for later ones
//! (identity, xds server, node locality, certificate files read). Every
//! section compiler takes it; it calls none of them.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::error::{ConfigError, SourceMap};

/// Default `connect_timeout` of a cluster.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Collects errors with positions while compiling one file.
pub(super) struct Ctx<'a> {
    file: PathBuf,
    /// Worker count, to size per-worker metric cells.
    pub(super) workers: usize,
    map: SourceMap<'a>,
    errors: Vec<(usize, ConfigError)>,
    /// `[identity]`, compiled first (mesh listeners and clusters use it);
    /// `None` also when the table is there but failed (already reported).
    pub(super) identity: Option<Arc<crate::tls::spiffe::Identity>>,
    pub(super) identity_written: bool,
    /// Certificate, key and CA files read (watched for rotation).
    pub(super) material: Vec<PathBuf>,
    /// `[xds] address`, for `discovery = "xds"` clusters.
    pub(super) xds_server: Option<String>,
    /// `[node]`: this proxy's locality, which clusters sort endpoints by.
    pub(super) node: crate::upstream::Locality,
}

impl<'a> Ctx<'a> {
    /// A context for compiling `file`, whose text `map` indexes.
    pub(super) fn new(file: &Path, map: SourceMap<'a>, workers: usize) -> Self {
        Ctx {
            file: file.to_path_buf(),
            map,
            workers,
            errors: Vec::new(),
            identity: None,
            identity_written: false,
            material: Vec::new(),
            xds_server: None,
            node: crate::upstream::Locality::default(),
        }
    }

    /// Whether any error was recorded.
    pub(super) fn failed(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The errors recorded, in the order of their place in the file.
    pub(super) fn take_errors(&mut self) -> Vec<ConfigError> {
        let mut errors = std::mem::take(&mut self.errors);
        errors.sort_by_key(|(off, _)| *off);
        errors.into_iter().map(|(_, e)| e).collect()
    }

    /// A certificate, key or CA file: its path, recorded for watching.
    pub(super) fn material(&mut self, written: &str) -> PathBuf {
        let p = self.path(written);
        if !self.material.contains(&p) {
            self.material.push(p.clone());
        }
        p
    }

    /// A path from the config, relative to the config file's directory.
    pub(super) fn path(&self, written: &str) -> PathBuf {
        let p = Path::new(written);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        self.file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| p.to_path_buf(), |d| d.join(p))
    }

    /// Record an error at a span, under a key path.
    pub(super) fn error(
        &mut self,
        span: Range<usize>,
        key: impl Into<String>,
        msg: impl Into<String>,
    ) {
        let position = self.map.position(span.start);
        self.errors.push((
            span.start,
            ConfigError {
                file: self.file.clone(),
                position: Some(position),
                key: key.into(),
                message: msg.into(),
            },
        ));
    }
}

/// Listener addresses are literal `ip:port` (IPv6 as `[::1]:port`).
pub(super) fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!(
            "invalid address \"{s}\": expected ip:port, like \"127.0.0.1:8080\" or \"[::1]:8080\""
        )
    })
}
