//! Deserialising the TOML into `FileConfig` while reporting *every* error
//! serde finds (unknown keys, bad enum values, bad durations), not only the
//! first: after each error the entry it points into is blanked with spaces
//! (so every later position still points into the original text) and the
//! text is parsed again. A file with two typos needs one `check`, not two.
//! When the blanked text then parses, that config is returned with the
//! errors, so the compiler can report the semantic errors of the rest in
//! the same run. An unknown key or value close to a known one gets a
//! "did you mean" suggestion.

use std::ops::Range;
use std::path::Path;

use toml_edit::{ImDocument, Item, Table};

use super::error::{ConfigError, SourceMap};
use super::file::FileConfig;

/// More errors than this in one file are not worth listing.
const MAX_ERRORS: usize = 50;

/// Parse errors, and the config that parsed once the entries they point
/// at were blanked (when it did).
pub struct ParseFailure {
    pub errors: Vec<ConfigError>,
    pub rest: Option<Box<FileConfig>>,
}

/// Parse `text`; on failure, every positioned error serde reports.
pub fn parse(file: &Path, map: &SourceMap<'_>, text: &str) -> Result<FileConfig, ParseFailure> {
    let mut work = text.to_string();
    let mut errors: Vec<(usize, ConfigError)> = Vec::new();
    let mut blanked: Vec<String> = Vec::new();
    let mut rest = None;
    loop {
        let e = match toml::from_str::<FileConfig>(&work) {
            Ok(f) if errors.is_empty() => return Ok(f),
            Ok(f) => {
                rest = Some(Box::new(f));
                break;
            }
            Err(e) => e,
        };
        // A required key whose bad value was blanked is now "missing": that
        // is not the user's error, and nothing more can be learnt.
        if blanked
            .iter()
            .any(|k| e.message().contains(&format!("missing field `{k}`")))
        {
            break;
        }
        let span = e.span();
        errors.push((span.as_ref().map_or(0, |s| s.start), error(file, map, &e)));
        let Some(span) = span else { break };
        if errors.len() >= MAX_ERRORS {
            break;
        }
        let Some((range, key)) = entry_at(&work, span.start) else {
            break;
        };
        blank(&mut work, range);
        blanked.push(key);
        // Blanking must leave valid TOML; if not, stop rather than report
        // an error of our own making.
        if ImDocument::parse(work.as_str()).is_err() {
            break;
        }
    }
    errors.sort_by_key(|(offset, _)| *offset);
    Err(ParseFailure {
        errors: errors.into_iter().map(|(_, e)| e).collect(),
        rest,
    })
}

fn error(file: &Path, map: &SourceMap<'_>, e: &toml::de::Error) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    // toml's messages end with a newline and sometimes repeat the key; keep them short.
    let message = e.message().trim().lines().collect::<Vec<_>>().join("; ");
    let message = suggest(&message).unwrap_or(message);
    ConfigError {
        file: file.to_path_buf(),
        position: Some(map.position(span.start)),
        key: map.key_at(span.start),
        message,
    }
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "unknown
/// variant") with the nearest expected name first, when one is close:
/// "unknown field `balanse`; did you mean `balance`? expected one of ...".
fn suggest(message: &str) -> Option<String> {
    let kind = ["unknown field `", "unknown variant `"]
        .into_iter()
        .find(|k| message.starts_with(k))?;
    let rest = &message[kind.len()..];
    let (given, tail) = rest.split_once('`')?;
    let expected = tail.split_once("expected ")?.1;
    let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let (best, distance) = names
        .iter()
        .map(|n| (*n, edit_distance(given, n)))
        .min_by_key(|(_, d)| *d)?;
    // Close: a slip of one or two characters, less than half the word.
    (distance > 0 && distance <= 2 && distance * 2 < given.len().max(2))
        .then(|| format!("{kind}{given}`; did you mean `{best}`? expected {expected}"))
}

/// Levenshtein distance (names are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Replace `range` with spaces, keeping newlines (and so every position).
fn blank(text: &mut String, range: Range<usize>) {
    let replaced: String = text[range.clone()]
        .chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect();
    text.replace_range(range, &replaced);
}

/// The smallest whole entry (`key = value`, a dotted `a.b = value` from its
/// first key, or a `[table]` with its entries) containing `offset`, and its
/// key.
fn entry_at(text: &str, offset: usize) -> Option<(Range<usize>, String)> {
    let doc = ImDocument::parse(text).ok()?;
    let mut best: Option<(Range<usize>, String)> = None;
    walk(doc.as_table(), None, offset, &mut best);
    best
}

fn consider(
    best: &mut Option<(Range<usize>, String)>,
    range: Range<usize>,
    key: &str,
    offset: usize,
) {
    if !range.contains(&offset) {
        return;
    }
    if best.as_ref().map_or(true, |(b, _)| range.len() < b.len()) {
        *best = Some((range, key.to_string()));
    }
}

fn walk(
    table: &Table,
    dotted_from: Option<usize>,
    offset: usize,
    best: &mut Option<(Range<usize>, String)>,
) {
    for (name, item) in table.iter() {
        let Some(key_span) = table.key(name).and_then(|k| k.span()) else {
            continue;
        };
        let start = dotted_from.unwrap_or(key_span.start);
        match item {
            Item::Value(v) => {
                if let Some(end) = v.span().map(|s| s.end) {
                    consider(best, start..end, name, offset);
                }
            }
            Item::Table(t) if t.is_dotted() => walk(t, Some(start), offset, best),
            Item::Table(t) => {
                if let Some(header) = t.span() {
                    let end = table_end(t).max(header.end);
                    consider(best, header.start..end, name, offset);
                }
                walk(t, None, offset, best);
            }
            Item::ArrayOfTables(a) => {
                for t in a.iter() {
                    if let Some(header) = t.span() {
                        let end = table_end(t).max(header.end);
                        consider(best, header.start..end, name, offset);
                    }
                    walk(t, None, offset, best);
                }
            }
            Item::None => {}
        }
    }
}

/// Where the last entry written under a table header ends.
fn table_end(t: &Table) -> usize {
    t.iter()
        .filter_map(|(_, item)| match item {
            Item::Value(v) => v.span().map(|s| s.end),
            Item::Table(t) if t.is_dotted() => Some(table_end(t)),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let map = SourceMap::new(text);
        match parse(Path::new("t.toml"), &map, text) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .errors
                .iter()
                .map(|e| {
                    let (l, c) = e.position.unwrap_or((0, 0));
                    format!("{l}:{c}: {}", e.key)
                })
                .collect(),
        }
    }

    #[test]
    fn every_serde_error_in_one_run() {
        let text = r#"[runtime]
io = "uring"
idle = 3

[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"
idle_timeout = 30
header_timeout = "5sec"

[[routes.r]]
match.path_prefix = "/"
match.nope = 1
cluster = "c"

[clusters.c]
endpoints = ["127.0.0.1:1"]
balance = "leastconn"
connect_timeout = "5 secs"
"#;
        assert_eq!(
            errors(text),
            vec![
                "2:6: runtime.io",
                "3:1: runtime.idle",
                "9:16: listeners.web.idle_timeout",
                "10:18: listeners.web.header_timeout",
                "14:7: routes.r[0].match.nope",
                "19:11: clusters.c.balance",
                "20:19: clusters.c.connect_timeout",
            ]
        );
    }

    #[test]
    fn a_bad_required_value_is_reported_once() {
        let text = "[listeners.a]\naddress = \"127.0.0.1:1\"\nprotocol = \"htp\"\ncluster = \"c\"\n[clusters.c]\nendpoints = [\"127.0.0.1:2\"]\n";
        assert_eq!(errors(text), vec!["3:12: listeners.a.protocol"]);
    }

    #[test]
    fn syntax_errors_stop_at_the_first() {
        assert_eq!(errors("[runtime\nio = 1\n").len(), 1);
    }

    #[test]
    fn near_misses_are_named() {
        assert_eq!(edit_distance("balanse", "balance"), 1);
        assert_eq!(edit_distance("pth", "path"), 1);
        assert_eq!(edit_distance("", "ab"), 2);
        let m = suggest("unknown field `balanse`, expected one of `endpoints`, `balance`").unwrap();
        assert_eq!(
            m,
            "unknown field `balanse`; did you mean `balance`? expected one of `endpoints`, `balance`"
        );
        let v = suggest("unknown variant `htp`, expected one of `tcp`, `http`, `auto`").unwrap();
        assert!(v.contains("did you mean `http`?"), "{v}");
        // Nothing close: the message stays as it was.
        assert_eq!(suggest("unknown field `zzzzzz`, expected `a` or `b`"), None);
        assert_eq!(suggest("invalid type: string"), None);
    }
}
