//! `[access_log]` and `[tracing]`: their file types and their compiling.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::ctx::Ctx;
use super::value::{positive, positive_duration, ratio, ConfigDuration};
use super::{AccessLogSettings, AccessLogTarget};

/// Default `access_log.buffer_bytes`.
pub const DEFAULT_ACCESS_LOG_BUFFER: u64 = 64 * 1024;
/// Default `access_log.flush_interval`.
pub const DEFAULT_ACCESS_LOG_FLUSH: Duration = Duration::from_secs(1);

pub(super) fn compile_access_log(
    cx: &mut Ctx<'_>,
    a: &Spanned<FileAccessLog>,
) -> Option<AccessLogSettings> {
    let a = a.get_ref();
    let path = a.path.get_ref();
    let target = if path == "stdout" {
        AccessLogTarget::Stdout
    } else if path.is_empty() {
        cx.error(
            a.path.span(),
            "access_log.path",
            "expected a file path or \"stdout\"",
        );
        return None;
    } else {
        // Relative to the config file's directory, like every other path
        // in the config (certificates, endpoints_file).
        let file = cx.path(path);
        // What opening the file would refuse, found here so that `check`
        // says it (with the key's position) instead of `run` failing later.
        if let Err(why) = writable_location(&file) {
            cx.error(a.path.span(), "access_log.path", why);
            return None;
        }
        AccessLogTarget::File(file)
    };
    Some(AccessLogSettings {
        target,
        format: a.format,
        buffer_bytes: a
            .buffer_bytes
            .unwrap_or(DEFAULT_ACCESS_LOG_BUFFER)
            .clamp(512, 16 << 20) as usize,
        flush_interval: a.flush_interval.map_or(DEFAULT_ACCESS_LOG_FLUSH, |d| d.0),
    })
}

/// Whether a log file could be opened for appending at `file`: its
/// directory exists, and the file is not a directory. (Permissions are left
/// to the open at start, which names the path when it fails.)
fn writable_location(file: &std::path::Path) -> Result<(), String> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "cannot write \"{}\": the directory \"{}\" does not exist",
            file.display(),
            dir.display()
        ));
    }
    if file.is_dir() {
        return Err(format!("\"{}\" is a directory, not a file", file.display()));
    }
    Ok(())
}

pub(super) fn compile_tracing(
    cx: &mut Ctx<'_>,
    t: &Spanned<FileTracing>,
) -> Option<crate::trace::TracingSettings> {
    let f = t.get_ref();
    let (mut w3c, mut b3) = (true, false);
    if let Some(list) = &f.propagation {
        w3c = false;
        for p in list {
            match p.get_ref().as_str() {
                "w3c" => w3c = true,
                "b3" => b3 = true,
                other => {
                    cx.error(
                        p.span(),
                        "tracing.propagation",
                        format!("unknown format \"{other}\"; expected \"w3c\" or \"b3\""),
                    );
                    return None;
                }
            }
        }
    }
    let mut force_from_identities = Vec::new();
    for p in &f.force_from_identities {
        match crate::tls::spiffe::IdPattern::parse(p.get_ref()) {
            Ok(pattern) => force_from_identities.push(pattern),
            Err(msg) => {
                cx.error(p.span(), "tracing.force_from_identities", msg);
                return None;
            }
        }
    }
    let (host, port, path) = match &f.otlp_endpoint {
        Some(e) => match crate::trace::parse_endpoint(e.get_ref()) {
            Ok(v) => v,
            Err(msg) => {
                cx.error(e.span(), "tracing.otlp_endpoint", msg);
                return None;
            }
        },
        None => (String::new(), 0, String::new()),
    };
    let mut resource = vec![(
        "service.name".to_string(),
        f.service_name.clone().unwrap_or_else(|| "outrigger".into()),
    )];
    resource.extend(f.resource.iter().map(|(k, v)| (k.clone(), v.clone())));
    Some(crate::trace::TracingSettings {
        w3c,
        b3,
        sampling: f.sampling.unwrap_or(0.01),
        host,
        port,
        path,
        headers: f
            .otlp_headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        resource,
        max_queue_spans: f.max_queue_spans.unwrap_or(8192).min(1 << 20) as usize,
        batch_size: f.batch_size.unwrap_or(512).min(1 << 16) as usize,
        flush_interval: f.flush_interval.map_or(Duration::from_secs(1), |d| d.0),
        force_from_listeners: f.force_from_listeners.clone(),
        force_from_identities,
    })
}

/// `[tracing]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTracing {
    /// Any of `"w3c"`, `"b3"`. Default `["w3c"]`.
    pub propagation: Option<Vec<Spanned<String>>>,
    /// Ratio of the traces the proxy starts that are sampled. Default 0.01.
    #[serde(default, deserialize_with = "ratio")]
    pub sampling: Option<f64>,
    /// `http://host:port/v1/traces`; without it spans are not exported.
    pub otlp_endpoint: Option<Spanned<String>>,
    #[serde(default)]
    pub otlp_headers: BTreeMap<String, String>,
    /// `service.name`. Default `"outrigger"`.
    pub service_name: Option<String>,
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "positive")]
    pub max_queue_spans: Option<u64>,
    #[serde(default, deserialize_with = "positive")]
    pub batch_size: Option<u64>,
    #[serde(default, deserialize_with = "positive_duration")]
    pub flush_interval: Option<ConfigDuration>,
    /// Listeners whose clients may force sampling with
    /// `x-outrigger-trace: force`. Default none: the header is ignored.
    #[serde(default)]
    pub force_from_listeners: Vec<String>,
    /// Verified peer identities (SPIFFE ID patterns) that may force
    /// sampling, on any listener. Default none.
    #[serde(default)]
    pub force_from_identities: Vec<Spanned<String>>,
}

/// `tracing.*` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRouteTracing {
    #[serde(default, deserialize_with = "ratio")]
    pub sampling: Option<f64>,
}

/// `[access_log]`: one line per HTTP request (and per TCP connection).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLog {
    /// A file path (appended to, created if missing) or `"stdout"`.
    pub path: Spanned<String>,
    /// `"json"` (default) or `"text"`.
    #[serde(default)]
    pub format: AccessLogFormat,
    /// Bytes a worker buffers before handing lines to the writer. Default 65536.
    #[serde(default, deserialize_with = "positive")]
    pub buffer_bytes: Option<u64>,
    /// Longest time a line waits in a worker's buffer. Default "1s".
    pub flush_interval: Option<ConfigDuration>,
}

pub use crate::snapshot::AccessLogFormat;
