//! The docs cannot drift from the program: every TOML block in README.md,
//! docs/*.md and configs/*.toml-style snippets is compiled with the real
//! config compiler, and every `outrigger` command line in a shell block
//! names a real subcommand and real flags.
//!
//! A snippet is usually a fragment (a cluster without the listener that
//! uses it), so errors that only say something is missing elsewhere (an
//! unknown cluster or route table, a file that does not exist here, a
//! required key the fragment leaves out) are accepted; an unknown key, a
//! bad value or a type error is a failure: that is what drifts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Top-level tables of the config file.
const SECTIONS: &[&str] = &[
    "runtime",
    "admin",
    "metrics",
    "node",
    "listeners",
    "routes",
    "clusters",
    "access_log",
    "identity",
    "tracing",
    "xds",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn doc_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.push(root().join("README.md"));
    files.sort();
    files
}

/// Fenced blocks: (info string, first line number, text).
fn blocks(text: &str) -> Vec<(String, usize, String)> {
    let mut out = Vec::new();
    let mut open: Option<(String, usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            match open.take() {
                Some(b) => out.push(b),
                None => open = Some((info.trim().to_string(), i + 2, String::new())),
            }
        } else if let Some((_, _, body)) = &mut open {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// Whether a compile error only says the fragment lacks something.
fn fragment_gap(message: &str) -> bool {
    [
        "missing field",
        "unknown cluster",
        "no cluster",
        "unknown route table",
        "no route table",
        "No such file",
        "cannot read",
        "needs `endpoints`",
        "needs an [identity]",
        "needs an [xds]",
        "needs a cluster",
        "needs `cluster`",
        "needs `routes`",
        "at least one listener",
        "no listeners",
        "is not used",
        "names no",
    ]
    .iter()
    .any(|gap| message.contains(gap))
}

/// Every TOML block (marked `toml`, or unmarked and shaped like a config:
/// it parses as TOML and names a config section) compiles, or fails only
/// for what a fragment leaves out.
#[test]
fn toml_snippets_compile() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (info, line, body) in blocks(&text) {
            if !(info == "toml" || info.is_empty()) {
                continue;
            }
            let parsed = toml::from_str::<toml::Table>(&body);
            let is_config = parsed
                .as_ref()
                .is_ok_and(|t| t.keys().any(|k| SECTIONS.contains(&k.as_str())));
            if info.is_empty() && !is_config {
                continue;
            }
            let at = format!("{}:{line}", file.strip_prefix(root()).unwrap().display());
            if let Err(e) = parsed {
                failures.push(format!("{at}: not TOML: {e}"));
                continue;
            }
            checked += 1;
            if let Err(errors) = outrigger::config::compile(Path::new(&at), &body) {
                for e in &errors.0 {
                    if !fragment_gap(&e.message) {
                        failures.push(format!("{at}: {e}"));
                    }
                }
            }
        }
    }
    assert!(checked >= 7, "only {checked} TOML blocks found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `outrigger SUB --flag` in shell blocks: the subcommand exists and its
/// help lists every long flag used.
#[test]
fn command_lines_use_real_flags() {
    let bin = env!("CARGO_BIN_EXE_outrigger");
    let help = |sub: &[&str]| -> Option<String> {
        let out = Command::new(bin).args(sub).arg("--help").output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    };
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (info, line, body) in blocks(&text) {
            if !matches!(info.as_str(), "sh" | "bash" | "shell" | "") {
                continue;
            }
            for (n, l) in body.lines().enumerate() {
                let words: Vec<&str> = l.split_whitespace().collect();
                // The command itself: first on the line, after a prompt,
                // `sudo` or environment assignments.
                let start = words
                    .iter()
                    .position(|w| !(*w == "$" || *w == "sudo" || w.contains('=')))
                    .unwrap_or(words.len());
                let is_proxy = words.get(start).is_some_and(|w| {
                    *w == "outrigger" || w.ends_with("/outrigger") || *w == "outrigger-load"
                });
                if !is_proxy {
                    continue;
                }
                let program = words[start];
                let args: Vec<&str> = words[start + 1..]
                    .iter()
                    .take_while(|w| {
                        !matches!(**w, "|" | "&&" | ";" | "&" | "#" | "--" | ">" | "2>&1")
                    })
                    .copied()
                    .collect();
                // `cargo run --release -- demo` and the like.
                let Some(first) = args.first() else { continue };
                if first.starts_with('-') || first.contains('=') || first.starts_with('$') {
                    continue;
                }
                let at = format!(
                    "{}:{}",
                    file.strip_prefix(root()).unwrap().display(),
                    line + n
                );
                let mut sub = vec![*first];
                // Nested subcommands (`certs demo`, `outrigger-load serve echo`).
                let mut text = if program == "outrigger-load" {
                    // Its binary is the workspace's other member: only the
                    // proxy's own commands are checked here.
                    continue;
                } else {
                    help(&sub)
                };
                if let (Some(_), Some(next)) = (&text, args.get(1)) {
                    if !next.starts_with('-') {
                        let mut deeper = sub.clone();
                        deeper.push(next);
                        if let Some(h) = help(&deeper) {
                            sub = deeper;
                            text = Some(h);
                        }
                    }
                }
                let Some(text) = text else {
                    failures.push(format!("{at}: no subcommand `outrigger {first}`: {l}"));
                    continue;
                };
                checked += 1;
                for flag in args.iter().filter(|a| a.starts_with("--")) {
                    let name = flag.split('=').next().unwrap();
                    if !text.contains(name) {
                        failures.push(format!(
                            "{at}: `outrigger {}` has no {name}: {l}",
                            sub.join(" ")
                        ));
                    }
                }
            }
        }
    }
    assert!(checked >= 5, "only {checked} command lines found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
