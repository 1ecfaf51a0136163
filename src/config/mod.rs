//! Configuration: the TOML file (`file`), its values (`value`), the compiler
//! that validates it into an immutable [`Snapshot`] (`compile`, `routes`), and
//! errors that carry file, line, column and key (`error`).
//!
//! Static settings (`[runtime]`, `[admin]`, listener addresses) and hot ones
//! (routes, clusters) live in the same snapshot; the control plane decides
//! which may change on reload.

mod admin;
mod clusters;
pub mod compile;
mod ctx;
mod discovery;
pub mod error;
mod fault;
pub mod file;
mod file_cluster;
pub mod http2;
mod mirror;
mod observe;
pub mod overlay;
mod parse;
mod resilience;
mod routes;
mod tls;
pub mod value;
pub mod xds;

use std::path::{Path, PathBuf};

pub use compile::compile;
pub use error::{ConfigError, ConfigErrors};
pub use file::IoMode;
pub use value::Workers;

pub use crate::snapshot::{
    AccessLogSettings, AccessLogTarget, AdminSettings, HttpSettings, Listener, ListenerProtocol,
    MetricsSettings, RuntimeSettings, Snapshot,
};

/// The demo config, compiled into the binary (`outrigger demo`).
pub const DEMO_CONFIG: &str = include_str!("../../configs/demo.toml");

/// FNV-1a over the contents of `files` (a missing file counts as empty).
pub fn material_hash(files: &[PathBuf]) -> u64 {
    let mut all = Vec::new();
    for f in files {
        all.extend_from_slice(f.as_os_str().as_encoded_bytes());
        all.push(0);
        all.extend(std::fs::read(f).unwrap_or_default());
        all.push(0);
    }
    compile::fnv1a(&all)
}

/// Read and compile a config file.
pub fn load(path: &Path) -> Result<Snapshot, ConfigErrors> {
    load_with(path, "")
}

/// Read and compile a config file with the xDS overlay.
pub fn load_with(path: &Path, overlay: &str) -> Result<Snapshot, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::single(path.to_path_buf(), "", format!("cannot read the file: {e}"))
    })?;
    compile_with(path, &text, overlay)
}

/// Compile a config file's text with the xDS overlay (clusters, listeners
/// and route tables in the file's own shape, from the xDS client). The
/// snapshot keeps the file's text and hash; an error in the overlay is
/// reported in `<xds>` at its line there.
pub fn compile_with(file: &Path, text: &str, overlay: &str) -> Result<Snapshot, ConfigErrors> {
    if overlay.is_empty() {
        return compile(file, text);
    }
    let stripped = overlay::strip_clashes(text, overlay);
    let overlay = stripped.as_deref().unwrap_or(overlay);
    let mut combined = String::with_capacity(text.len() + overlay.len() + 1);
    combined.push_str(text);
    if !text.is_empty() && !text.ends_with('\n') {
        combined.push('\n');
    }
    let file_lines = combined.lines().count();
    combined.push_str(overlay);
    match compile(file, &combined) {
        Ok(mut s) => {
            s.text = text.to_string();
            s.content_hash = compile::fnv1a(text.as_bytes());
            Ok(s)
        }
        Err(mut e) => {
            for err in &mut e.0 {
                if let Some((line, col)) = err.position.filter(|(l, _)| *l > file_lines) {
                    err.file = PathBuf::from("<xds>");
                    err.position = Some((line - file_lines, col));
                }
            }
            Err(e)
        }
    }
}
