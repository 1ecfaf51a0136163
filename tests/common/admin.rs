//! Admin API helpers for the tests: a raw HTTP/1.1 request per call, a
//! temporary directory, and a strict Prometheus text-format parser.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One admin request; returns status and body (the admin closes after each).
pub fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(70))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length");
    assert_eq!(body.len(), length, "body length matches content-length");
    (status, body.to_string())
}

pub fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = request(addr, "GET", path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "outrigger-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The access log `access.log` in `dir` once it holds at least `lines`
/// lines (workers flush by time, so poll for up to 5 s).
pub fn read_log(dir: &TempDir, lines: usize) -> Vec<String> {
    let mut out = Vec::new();
    assert!(
        super::eventually(|| {
            out = std::fs::read_to_string(dir.path("access.log"))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            out.len() >= lines
        }),
        "access log has {} of {lines} lines",
        out.len()
    );
    out
}

/// Write `text` to `path` the way editors do: a new file renamed over the old.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A parsed exposition: family name → (type, samples (name, labels, value)).
#[derive(Debug, Default)]
pub struct Exposition {
    pub types: HashMap<String, String>,
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Exposition {
    /// The value of the sample with this name and these labels (a subset match).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
    }
}

fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

/// Parse the Prometheus text format (0.0.4) strictly: every sample belongs
/// to a family declared by HELP and TYPE before it, families are contiguous
/// and declared once, label values are properly escaped, counters end in
/// `_total`, histogram buckets are cumulative and end with `+Inf` == `_count`.
pub fn parse_prometheus(text: &str) -> Exposition {
    let mut e = Exposition::default();
    let mut helped = HashSet::new();
    let mut current: Option<String> = None;
    let mut done_families = HashSet::new();
    assert!(text.ends_with('\n'), "exposition ends with a newline");
    for (i, line) in text.lines().enumerate() {
        let at = format!("line {}: {line}", i + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect(&at);
            assert!(valid_name(name) && !help.is_empty(), "{at}");
            assert!(helped.insert(name.to_string()), "HELP twice: {at}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(&at);
            assert!(helped.contains(name), "TYPE before HELP: {at}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{at}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {at}");
            }
            assert!(
                e.types.insert(name.to_string(), kind.to_string()).is_none(),
                "{at}"
            );
            if let Some(prev) = current.replace(name.to_string()) {
                done_families.insert(prev);
            }
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "unexpected: {at}"
        );
        let (name_labels, value) = line.rsplit_once(' ').expect(&at);
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {at}")),
        };
        let (name, labels) = match name_labels.split_once('{') {
            None => (name_labels.to_string(), BTreeMap::new()),
            Some((n, rest)) => (
                n.to_string(),
                parse_labels(rest.strip_suffix('}').expect(&at), &at),
            ),
        };
        assert!(valid_name(&name), "{at}");
        let family = current.clone().expect("sample before any TYPE");
        let kind = &e.types[&family];
        let ok = match kind.as_str() {
            "histogram" => [
                format!("{family}_bucket"),
                format!("{family}_sum"),
                format!("{family}_count"),
            ]
            .contains(&name),
            _ => name == family,
        };
        assert!(ok, "sample {name} outside its family {family}: {at}");
        assert!(!done_families.contains(&family), "{at}");
        e.samples.push((name, labels, value));
    }
    check_histograms(&e);
    e
}

fn parse_labels(s: &str, at: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (k, r) = rest.split_once("=\"").expect(at);
        assert!(valid_name(k), "label name: {at}");
        let mut v = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            let (i, c) = chars.next().expect(at);
            match c {
                '\\' => match chars.next().expect(at).1 {
                    'n' => v.push('\n'),
                    '\\' => v.push('\\'),
                    '"' => v.push('"'),
                    other => panic!("bad escape \\{other}: {at}"),
                },
                '"' => break i,
                c => v.push(c),
            }
        };
        assert!(
            out.insert(k.to_string(), v).is_none(),
            "duplicate label: {at}"
        );
        rest = &r[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    out
}

/// A series' labels without `le`.
type Labels = Vec<(String, String)>;

fn check_histograms(e: &Exposition) {
    for (family, kind) in &e.types {
        if kind != "histogram" {
            continue;
        }
        let bucket = format!("{family}_bucket");
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for (n, l, v) in &e.samples {
            if *n == bucket {
                let le: f64 = match l["le"].as_str() {
                    "+Inf" => f64::INFINITY,
                    x => x.parse().unwrap(),
                };
                let key: Vec<_> = l
                    .iter()
                    .filter(|(k, _)| *k != "le")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                series.entry(key).or_default().push((le, *v));
            }
        }
        for (key, buckets) in series {
            for w in buckets.windows(2) {
                assert!(
                    w[0].0 < w[1].0 && w[0].1 <= w[1].1,
                    "{family} {key:?} not cumulative"
                );
            }
            let (le, inf) = *buckets.last().unwrap();
            assert!(le.is_infinite(), "{family} lacks +Inf");
            let labels: Vec<(&str, &str)> =
                key.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(
                e.value(&format!("{family}_count"), &labels),
                Some(inf),
                "{family} {key:?}"
            );
        }
    }
}

/// Write `config` as `dir`/config.toml and launch a proxy on it through
/// the library entry point (reloads read the file again; no file watch).
pub fn launch(dir: &TempDir, config: &str) -> outrigger::control::Proxy {
    let path = dir.path("config.toml");
    std::fs::write(&path, config).unwrap();
    let snapshot = outrigger::config::load(&path).unwrap_or_else(|e| panic!("{e}\n{config}"));
    let options = outrigger::control::Options {
        config_path: Some(path),
        watch: false,
    };
    outrigger::control::Proxy::launch(snapshot, options, None).unwrap()
}
