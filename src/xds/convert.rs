//! Small conversions shared by the resource translations.

// Control planes still send the deprecated fields (v2-era `append`,
// `exact_match`, `dns_refresh_rate`, ...): they are read as Envoy reads them.
#![allow(deprecated)]

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource, HeaderValueOption};
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use toml::{Table, Value};

/// Why a resource was refused (NACKed): its text goes back to the server
/// as the request's `error_detail`, and into `/xds` and the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejected {
    pub reason: Reason,
    message: String,
}

/// What kind of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A feature, field or value Outrigger does not implement.
    Unsupported,
    /// A field the resource must set is not set.
    Missing,
    /// A value out of range, or that does not parse.
    Invalid,
    /// It clashes with what the config file defines.
    Conflict,
}

impl Rejected {
    pub fn unsupported(message: impl Into<String>) -> Self {
        Rejected {
            reason: Reason::Unsupported,
            message: message.into(),
        }
    }

    pub fn missing(message: impl Into<String>) -> Self {
        Rejected {
            reason: Reason::Missing,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Rejected {
            reason: Reason::Invalid,
            message: message.into(),
        }
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Rejected {
            reason: Reason::Conflict,
            message: message.into(),
        }
    }

    /// A typed config that does not decode as `what`.
    pub fn undecodable(what: &str, e: &prost::DecodeError) -> Self {
        Rejected::invalid(format!("{what}: {e}"))
    }

    /// The same refusal, said of the part it was found in (`"{at}: ..."`).
    pub fn within(self, at: impl std::fmt::Display) -> Self {
        Rejected {
            reason: self.reason,
            message: format!("{at}: {}", self.message),
        }
    }
}

/// A protobuf duration as a config duration (`"1500ms"`); `None` when
/// unset or zero.
pub fn duration(d: Option<&Duration>) -> Option<String> {
    let d = d?;
    let ms = d.seconds.max(0).saturating_mul(1000) + i64::from(d.nanos.max(0)) / 1_000_000;
    (ms > 0).then(|| format!("{ms}ms"))
}

pub fn u32_value(v: Option<&UInt32Value>) -> Option<u32> {
    v.map(|v| v.value)
}

/// A data source that names a file (inline material is not supported:
/// Outrigger watches the files it reads).
pub fn file_name(d: Option<&DataSource>, what: &str) -> Result<String, Rejected> {
    match d.and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::Filename(f)) => Ok(f.clone()),
        Some(_) => Err(Rejected::unsupported(format!(
            "{what}: only file names are supported"
        ))),
        None => Err(Rejected::missing(format!("{what} is missing"))),
    }
}

/// `request_headers_to_add` / `_remove` (or the response's) as a
/// `request_headers` / `response_headers` table (`set`, `add`, `remove`).
pub fn header_edits(
    add: &[HeaderValueOption],
    remove: &[String],
    into: &mut Table,
) -> Result<(), Rejected> {
    for o in add {
        let Some(h) = &o.header else { continue };
        let name = h.key.to_ascii_lowercase();
        let value = if h.raw_value.is_empty() {
            h.value.clone()
        } else {
            String::from_utf8(h.raw_value.clone())
                .map_err(|_| Rejected::invalid(format!("header {name}: value is not UTF-8")))?
        };
        if value.contains('%') {
            return Err(Rejected::unsupported(format!(
                "header {name}: substitution formatters (%...%) are not supported"
            )));
        }
        // append_action: APPEND_IF_EXISTS_OR_ADD (0), ADD_IF_ABSENT (1),
        // OVERWRITE_IF_EXISTS_OR_ADD (2), OVERWRITE_IF_EXISTS (3). The
        // deprecated `append = false` overwrites.
        let overwrite = match (o.append_action, o.append.as_ref().map(|b| b.value)) {
            (_, Some(false)) | (2, _) => true,
            (0, _) => false,
            (n, _) => {
                return Err(Rejected::unsupported(format!(
                    "header {name}: append_action {n} is not supported"
                )))
            }
        };
        let section = if overwrite { "set" } else { "add" };
        let t = into
            .entry(section)
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(t) = t {
            t.insert(name, value.into());
        }
    }
    if !remove.is_empty() {
        let list = into
            .entry("remove")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = list {
            for r in remove {
                let r = Value::String(r.to_ascii_lowercase());
                if !list.contains(&r) {
                    list.push(r);
                }
            }
        }
    }
    Ok(())
}
