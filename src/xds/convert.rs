//! Small conversions shared by the resource translations.

// Control planes still send the deprecated fields (v2-era `append`,
// `exact_match`, `dns_refresh_rate`, ...): they are read as Envoy reads them.
#![allow(deprecated)]

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource, HeaderValueOption};
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use toml::{Table, Value};

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
pub fn file_name(d: Option<&DataSource>, what: &str) -> Result<String, String> {
    match d.and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::Filename(f)) => Ok(f.clone()),
        Some(_) => Err(format!("{what}: only file names are supported")),
        None => Err(format!("{what} is missing")),
    }
}

/// `request_headers_to_add` / `_remove` (or the response's) as a
/// `request_headers` / `response_headers` table (`set`, `add`, `remove`).
pub fn header_edits(
    add: &[HeaderValueOption],
    remove: &[String],
    into: &mut Table,
) -> Result<(), String> {
    for o in add {
        let Some(h) = &o.header else { continue };
        let name = h.key.to_ascii_lowercase();
        let value = if h.raw_value.is_empty() {
            h.value.clone()
        } else {
            String::from_utf8(h.raw_value.clone())
                .map_err(|_| format!("header {name}: value is not UTF-8"))?
        };
        if value.contains('%') {
            return Err(format!(
                "header {name}: substitution formatters (%...%) are not supported"
            ));
        }
        // append_action: APPEND_IF_EXISTS_OR_ADD (0), ADD_IF_ABSENT (1),
        // OVERWRITE_IF_EXISTS_OR_ADD (2), OVERWRITE_IF_EXISTS (3). The
        // deprecated `append = false` overwrites.
        let overwrite = match (o.append_action, o.append.as_ref().map(|b| b.value)) {
            (_, Some(false)) | (2, _) => true,
            (0, _) => false,
            (n, _) => return Err(format!("header {name}: append_action {n} is not supported")),
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
