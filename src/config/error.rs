//! Configuration errors: every one names the file, the position and the key.

use std::fmt;
use std::path::PathBuf;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in (`<embedded>` for the demo config).
    pub file: PathBuf,
    /// 1-based line and column; `None` when the problem has no position
    /// (the file could not be read at all).
    pub position: Option<(usize, usize)>,
    /// Dotted key path, for example `listeners.public.address`.
    pub key: String,
    /// What is wrong, in plain words.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in one config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// A single error without a position (unreadable file, for example).
    pub fn single(file: PathBuf, key: &str, message: String) -> Self {
        ConfigErrors(vec![ConfigError {
            file,
            position: None,
            key: key.to_string(),
            message,
        }])
    }
}

/// Maps byte offsets in a TOML source to line/column and to the dotted key
/// path that was being defined there.
#[derive(Debug)]
pub(crate) struct SourceMap<'a> {
    text: &'a str,
}

impl<'a> SourceMap<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        SourceMap { text }
    }

    /// 1-based (line, column) of a byte offset; column counts characters.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    /// The key path a table header names: `listeners.web`, or for an
    /// array-of-tables entry its index among the same headers before it
    /// (`routes.web[1]`, 0-based, as the compiler's own errors write it).
    fn header_path(&self, header_start: usize, header: &str) -> String {
        let name = header
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or("")
            .trim();
        if !header.starts_with("[[") {
            return name.to_string();
        }
        let index = self.text[..header_start]
            .lines()
            .filter(|l| {
                let l = l.trim();
                l.starts_with("[[")
                    && l.trim_start_matches('[').split(']').next().map(str::trim) == Some(name)
            })
            .count();
        format!("{name}[{index}]")
    }

    /// Best-effort dotted key at an offset: the nearest table header above it
    /// joined with the key on its own line (`listeners.public` + `address`).
    pub(crate) fn key_at(&self, offset: usize) -> String {
        let offset = floor_char_boundary(self.text, offset.min(self.text.len()));
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        let line = &self.text[line_start..line_end];
        let t = line.trim();
        if t.starts_with('[') {
            return self.header_path(line_start, t);
        }
        let mut table = String::new();
        let mut starts = Vec::new();
        let mut at = 0;
        for l in self.text[..line_start].split_inclusive('\n') {
            starts.push((at, l));
            at += l.len();
        }
        for (start, l) in starts.into_iter().rev() {
            let t = l.trim();
            if t.starts_with('[') {
                table = self.header_path(start, t);
                break;
            }
        }
        let key = match line.find('=') {
            Some(eq) => line[..eq].trim().trim_matches('"').to_string(),
            None => t.to_string(),
        };
        match (table.is_empty(), key.is_empty()) {
            (true, _) => key,
            (false, true) => table,
            (false, false) => format!("{table}.{key}"),
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_and_key() {
        let src = "[runtime]\nworkers = 2\n\n[listeners.a]\naddress = \"x\"\n";
        let map = SourceMap::new(src);
        let off = src.find("\"x\"").unwrap();
        assert_eq!(map.position(off), (5, 11));
        assert_eq!(map.key_at(off), "listeners.a.address");
        assert_eq!(map.key_at(src.find("workers").unwrap()), "runtime.workers");
    }
}
