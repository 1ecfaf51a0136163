//! `outrigger-load compare`: runs every target, interleaved, and reports
//! medians, ratios, proxy CPU per request and peak RSS as markdown and JSON.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

/// The load tester, with an outrigger binary next to it (`cargo test
/// --workspace`, the README's command, builds it; without it these tests
/// would prove nothing, so they fail), and a scratch directory.
fn setup(name: &str) -> (PathBuf, PathBuf) {
    let load = PathBuf::from(env!("CARGO_BIN_EXE_outrigger-load"));
    let outrigger = load.with_file_name("outrigger");
    assert!(
        outrigger.is_file(),
        "no outrigger binary next to outrigger-load ({}): run cargo test --workspace",
        outrigger.display()
    );
    let dir = std::env::temp_dir().join(format!("outrigger-{name}-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    (load, dir)
}

#[test]
fn compare_direct_and_outrigger() {
    let (load, dir) = setup("compare");
    let (json, md, svg) = (dir.join("c.json"), dir.join("c.md"), dir.join("c.svg"));
    let compare = |targets: &str| {
        Command::new(&load)
            .args([
                "compare",
                "--targets",
                targets,
                "--runs",
                "2",
                "-d",
                "500ms",
            ])
            .args([
                "--warmup",
                "200ms",
                "-c",
                "4",
                "--proxy-cpus",
                "0",
                "--load-cpus",
                "0",
            ])
            .arg("--json")
            .arg(&json)
            .arg("--markdown")
            .arg(&md)
            .arg("--plot")
            .arg(&svg)
            .output()
            .unwrap()
    };
    // An unknown target is an error before anything runs.
    let out = compare("direct,outrigger,nosuchproxy");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuchproxy"));

    let out = compare("direct,outrigger");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let targets = v["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    let (direct, proxy) = (&targets[0], &targets[1]);
    assert_eq!(
        (direct["target"].as_str(), proxy["target"].as_str()),
        (Some("direct"), Some("outrigger"))
    );
    assert_eq!(direct["ratio_to_direct"], 1.0);
    for t in targets {
        assert_eq!(t["runs"].as_array().unwrap().len(), 2, "{t}");
        assert!(t["requests_per_second"].as_f64().unwrap() > 100.0, "{t}");
        assert_eq!(t["errors"], 0, "{t}");
        assert!(
            t["p50_us"].as_u64().unwrap() > 0,
            "no latency measured: {t}"
        );
    }
    assert!(direct["proxy_cpu_us_per_request"].is_null());
    assert!(
        proxy["proxy_cpu_us_per_request"].as_f64().unwrap() > 0.0,
        "{proxy}"
    );
    assert!(proxy["peak_rss_mib"].as_f64().unwrap() > 1.0, "{proxy}");
    let table = std::fs::read_to_string(&md).unwrap();
    assert!(
        table.contains("| outrigger |") && table.contains("vs direct"),
        "{table}"
    );
    // One chart, one curve per target, named in the legend.
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(plot.matches("<polyline").count(), 2, "{plot}");
    assert!(plot.contains(">direct<") && plot.contains(">outrigger<"));
    assert!(plot.contains("4 connections"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--topology mesh`: each target is a pair of sidecars with mutual TLS
/// between them (Outrigger: HTTP/2 in mesh mode; nginx, when installed:
/// HTTP/1.1 over TLS with client certificates); the pair's CPU is both
/// processes', and the table says what each pair adds to the direct call.
#[test]
fn compare_mesh_pairs() {
    let (load, dir) = setup("mesh");
    let (json, md) = (dir.join("m.json"), dir.join("m.md"));
    let out = Command::new(&load)
        .args(["compare", "--topology", "mesh"])
        .args(["--targets", "direct,outrigger,nginx", "--runs", "1"])
        .args(["-d", "500ms", "--warmup", "300ms", "-c", "4"])
        .args(["--proxy-cpus", "0", "--load-cpus", "0"])
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&md)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(v["workload"].as_str().unwrap().starts_with("mesh"), "{v}");
    let targets = v["targets"].as_array().unwrap();
    let by = |name: &str| targets.iter().find(|t| t["target"] == name);
    let pair = by("outrigger").unwrap_or_else(|| panic!("no outrigger pair: {v}"));
    assert_eq!(pair["errors"], 0, "{pair}");
    assert!(
        pair["requests_per_second"].as_f64().unwrap() > 100.0,
        "{pair}"
    );
    // Two processes, each with its own share of the pair's CPU.
    let parts = pair["sidecar_cpu_us_per_request"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{pair}");
    let total = pair["proxy_cpu_us_per_request"].as_f64().unwrap();
    let sum: f64 = parts.iter().map(|p| p.as_f64().unwrap()).sum();
    assert!(parts.iter().all(|p| p.as_f64().unwrap() > 0.0), "{pair}");
    assert!((total - sum).abs() < 0.01 * total.max(1.0), "{pair}");
    // A pair adds latency to the direct call.
    assert!(pair["added_p50_us"].as_i64().unwrap() > 0, "{pair}");
    assert!(by("direct").unwrap()["sidecar_cpu_us_per_request"]
        .as_array()
        .unwrap()
        .is_empty());
    // nginx's pair where nginx is installed (CI installs it).
    if let Some(nginx) = by("nginx") {
        assert_eq!(nginx["errors"], 0, "{nginx}");
        assert_eq!(
            nginx["sidecar_cpu_us_per_request"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
    let table = std::fs::read_to_string(&md).unwrap();
    assert!(
        table.contains("pair CPU us/req (A + B)") && table.contains("| outrigger |"),
        "{table}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
