//! The module map cannot drift: every `crate::` and `super::` path in
//! src/ (test code left out) must point to a unit on a lower row of the
//! layer table in src/lib.rs. An import that has to point up for a while
//! is listed below with why; the test fails on any other, and on a listed
//! one that is gone (so the list only shrinks). The list is empty.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Imports that still climb, (from unit, to unit, what keeps each): none
/// now. A climb that cannot be avoided for a while goes here with why; the
/// test fails once it is gone, so the list only shrinks.
const KNOWN: &[(&str, &str, &str)] = &[];

/// The rows of the table in src/lib.rs (`## Layers`, a `text` block):
/// each row a name and its units, bottom first.
fn layer_table(lib: &str) -> Vec<(String, Vec<String>)> {
    let Some(at) = lib.find("//! ## Layers") else {
        panic!("src/lib.rs has no `## Layers` section");
    };
    let mut rows = Vec::new();
    let mut inside = false;
    for line in lib[at..].lines() {
        let text = line.trim_start_matches("//!").trim();
        if text.starts_with("```") {
            if inside {
                break;
            }
            inside = true;
            continue;
        }
        if inside && !text.is_empty() {
            let mut words = text.split_whitespace();
            let name = words.next().unwrap_or_default().to_string();
            rows.push((name, words.map(str::to_string).collect()));
        }
    }
    rows
}

/// Every .rs file under `dir` with its module path (`http::h2::io`).
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if p.is_dir() {
            let mut sub = prefix.to_vec();
            sub.push(name);
            modules(&p, &sub, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let mut m = prefix.to_vec();
            if !matches!(name.as_str(), "mod" | "lib" | "main") {
                m.push(name);
            }
            out.insert(m, p);
        }
    }
}

/// Test code: a `tests` module (or one inside it), or a `*_tests` file.
fn is_test(module: &[String]) -> bool {
    module.iter().any(|m| m == "tests" || m.ends_with("_tests"))
}

/// The unit a module path belongs to: the longest prefix the table names.
fn unit_of(path: &[String], rank: &BTreeMap<String, usize>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|k| path[..k].join("::"))
        .find(|u| rank.contains_key(u))
}

/// Module paths a line refers to: `crate::a::b` and `super::x` (relative
/// to `module`), as far as they name modules that exist.
fn references(
    line: &str,
    module: &[String],
    mods: &BTreeMap<Vec<String>, PathBuf>,
) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", module[..module.len().saturating_sub(1)].to_vec()),
    ] {
        let mut rest = line;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            let after = &rest[i + prefix.len()..];
            rest = after;
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let words: Vec<String> = after
                .split("::")
                .map(|w| {
                    w.chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect::<String>()
                })
                .take_while(|w| !w.is_empty())
                .collect();
            let mut path = base.clone();
            let mut found = mods.contains_key(&path).then(|| path.clone());
            for w in words {
                path.push(w);
                if mods.contains_key(&path) {
                    found = Some(path.clone());
                }
            }
            if let Some(p) = found.filter(|p| !p.is_empty()) {
                out.push((
                    p,
                    format!("{prefix}{}", after.split(';').next().unwrap_or("")),
                ));
            }
        }
    }
    out
}

#[test]
fn imports_point_down_the_layer_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(root.join("lib.rs")).unwrap_or_else(|e| panic!("{e}"));
    let rows = layer_table(&lib);
    assert!(rows.len() > 5, "the layer table is missing: {rows:?}");
    let mut rank = BTreeMap::new();
    for (i, (_, units)) in rows.iter().enumerate() {
        for u in units {
            assert!(rank.insert(u.clone(), i).is_none(), "{u} is in two rows");
        }
    }
    let mut mods = BTreeMap::new();
    modules(&root, &[], &mut mods);
    // Every top-level module has a row.
    for m in mods.keys().filter(|m| m.len() == 1 && m[0] != "main") {
        assert!(
            rank.contains_key(&m[0]),
            "src/lib.rs's layer table has no row for `{}`",
            m[0]
        );
    }
    let known: BTreeSet<(&str, &str)> = KNOWN.iter().map(|k| (k.0, k.1)).collect();
    let mut seen_known = BTreeSet::new();
    let mut wrong = Vec::new();
    for (module, file) in &mods {
        let name = module.last().map(String::as_str).unwrap_or("");
        if module.is_empty() || name == "main" || is_test(module) {
            continue;
        }
        let Some(from) = unit_of(module, &rank) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{e}"));
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (target, written) in references(line, module, &mods) {
                let Some(to) = unit_of(&target, &rank) else {
                    continue;
                };
                if to == from || rank[&to] < rank[&from] {
                    continue;
                }
                if known.contains(&(from.as_str(), to.as_str())) {
                    seen_known.insert((from.clone(), to.clone()));
                    continue;
                }
                wrong.push(format!(
                    "{}:{}: {from} (row {}) imports {to} (row {}): {}",
                    file.strip_prefix(&root).unwrap_or(file).display(),
                    n + 1,
                    rows[rank[&from]].0,
                    rows[rank[&to]].0,
                    written.trim()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that point up (or across) the layer table in src/lib.rs:\n{}",
        wrong.join("\n")
    );
    for (from, to, why) in KNOWN {
        assert!(
            seen_known.contains(&(from.to_string(), to.to_string())),
            "{from} no longer imports {to} ({why}): remove it from KNOWN in tests/layers.rs"
        );
    }
}

/// Every file's `crate::` and `super::` references (test code left out).
fn file_graph(root: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut mods = BTreeMap::new();
    modules(root, &[], &mut mods);
    let mut graph = BTreeMap::new();
    for (module, file) in &mods {
        let name = module.last().map(String::as_str).unwrap_or("");
        if module.is_empty() || name == "main" || is_test(module) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{e}"));
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let targets: BTreeSet<Vec<String>> = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .flat_map(|l| references(l, module, &mods))
            .map(|(target, _)| target)
            .filter(|t| t != module)
            .collect();
        graph.insert(module.clone(), targets);
    }
    graph
}

/// Within a module too (and in the load tester), files depend in one direction: no file reaches
/// itself through the files it refers to (a parent's `pub use` of its
/// children is a facade, not a reference, and is not read).
#[test]
fn no_file_reaches_itself() {
    // Depth-first search; `path` is the chain being walked.
    fn visit(
        node: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        done: &mut BTreeSet<Vec<String>>,
        path: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle: Vec<String> = path[at..].iter().map(|m| m.join("::")).collect();
            cycle.push(node.join("::"));
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.clone());
        None
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (dir, least) in [("src", 100), ("loadtest/src", 8)] {
        let graph = file_graph(&manifest.join(dir));
        assert!(graph.len() >= least, "{dir} has {} files?", graph.len());
        let mut done = BTreeSet::new();
        for node in graph.keys() {
            if let Some(cycle) = visit(node, &graph, &mut done, &mut Vec::new()) {
                panic!(
                    "files of {dir} that refer to each other in a circle: {}",
                    cycle.join(" -> ")
                );
            }
        }
    }
}
