//! The xDS overlay's clash rule, on TOML text: the names a config file
//! defines, and the overlay without them (the file wins). Here because
//! config is the only code that reads TOML; the xDS client uses both.

use std::collections::BTreeSet;

use toml::{Table, Value};

/// Names the config file defines; xDS resources may not reuse them.
#[derive(Debug, Default, Clone)]
pub struct FileNames {
    pub clusters: BTreeSet<String>,
    pub listeners: BTreeSet<String>,
    pub routes: BTreeSet<String>,
}

impl FileNames {
    /// The names in a config file's text (empty sets if it does not parse:
    /// the running config always does).
    pub fn of(text: &str) -> FileNames {
        let Ok(t) = text.parse::<Table>() else {
            return FileNames::default();
        };
        let keys = |k: &str| -> BTreeSet<String> {
            t.get(k)
                .and_then(Value::as_table)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        FileNames {
            clusters: keys("clusters"),
            listeners: keys("listeners"),
            routes: keys("routes"),
        }
    }
}

/// The overlay without the names the config file defines: the file wins
/// (a reload that adds a name xDS also sends must not fail); the xDS
/// client NACKs the clash on the resource's next update. `None` when
/// nothing clashes.
pub fn strip_clashes(file_text: &str, overlay: &str) -> Option<String> {
    let file = FileNames::of(file_text);
    let mut top: Table = overlay.parse().ok()?;
    let mut changed = false;
    for (section, names) in [
        ("clusters", &file.clusters),
        ("listeners", &file.listeners),
        ("routes", &file.routes),
    ] {
        if let Some(Value::Table(t)) = top.get_mut(section) {
            let before = t.len();
            t.retain(|k, _| !names.contains(k));
            changed |= t.len() != before;
        }
    }
    if !changed {
        return None;
    }
    top.retain(|_, v| !v.as_table().is_some_and(Table::is_empty));
    Some(toml::to_string(&top).unwrap_or_default())
}
