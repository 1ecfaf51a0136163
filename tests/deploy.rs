//! The deployment files in deploy/ are what they claim: the Kubernetes
//! manifest parses as YAML, its embedded config compiles, the native
//! sidecar and the init container have the shape and privileges the docs
//! describe; the seccomp profile allows io_uring; the systemd unit reloads
//! with SIGHUP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

#[test]
fn kubernetes_manifest() {
    let text = read("deploy/kubernetes/sidecar.yaml");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2);
    let config = docs[0]["data"]["outrigger.toml"].as_str().unwrap();
    let snapshot = outrigger::config::compile(Path::new("<configmap>"), config)
        .unwrap_or_else(|e| panic!("the ConfigMap's config does not compile:\n{e}"));
    assert!(snapshot
        .listeners
        .iter()
        .any(|l| l.original_destination && l.inbound));
    let spec = &docs[1]["spec"]["template"]["spec"];
    let init = spec["initContainers"].as_sequence().unwrap();
    let rules = &init[0];
    assert_eq!(rules["command"][1], "iptables");
    let caps: Vec<&str> = rules["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(caps, ["NET_ADMIN", "NET_RAW"]);
    let proxy = &init[1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    // The kubelet probes the read-only metrics listener (the admin API
    // stays on loopback): readiness on /ready, liveness on /healthz (a
    // draining proxy is not ready but must not be killed).
    let metrics = snapshot.metrics.as_ref().expect("a [metrics] listener");
    let port = metrics.address.port();
    for (probe, path) in [
        ("startupProbe", "/ready"),
        ("readinessProbe", "/ready"),
        ("livenessProbe", "/healthz"),
    ] {
        assert_eq!(proxy[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(proxy[probe]["httpGet"]["port"], port, "{probe}");
    }
    let annotations = &docs[1]["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string().as_str());
    // Scrapes and probes reach the proxy itself, not the inbound listener.
    let excluded = rules["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .skip_while(|a| *a != "--exclude-inbound-ports")
        .nth(1)
        .and_then(|v| v.as_str())
        .unwrap();
    assert!(
        excluded.split(',').any(|p| p == port.to_string()),
        "{excluded}"
    );
}

#[test]
fn seccomp_profile_allows_io_uring() {
    let p: serde_json::Value =
        serde_json::from_str(&read("deploy/seccomp/outrigger.json")).unwrap();
    let allowed = p["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW")
        .flat_map(|r| {
            r["names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_string())
        })
        .collect::<Vec<_>>();
    for s in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(allowed.iter().any(|a| a == s), "{s}");
    }
}

#[test]
fn systemd_unit() {
    let unit = read("deploy/systemd/outrigger.service");
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("ExecStart=/usr/local/bin/outrigger run --config"));
    assert!(unit.contains("AmbientCapabilities="));
    // The log directory the install steps never create is systemd's to
    // create (and make writable under ProtectSystem=strict).
    assert!(unit.contains("LogsDirectory=outrigger"));
    assert!(unit.contains("WorkingDirectory=/etc/outrigger"));
    assert!(!unit.contains("ReadWritePaths=/var/log/outrigger"));
}

/// Every metric the Grafana dashboard queries is one `/metrics` exposes
/// (with a config that turns on every family).
#[test]
fn grafana_dashboard_queries_real_metrics() {
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/outrigger-dashboard.json")).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("outrigger_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
    }
    assert!(names.len() >= 15, "{names:?}");
    // A proxy with TLS, a route rate limit, retries, outlier detection
    // and a health check, so every family is present.
    let dir = std::env::temp_dir().join(format!("outrigger-dash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("c.key"), key.serialize_pem()).unwrap();
    let config = format!(
        r#"
[runtime]
workers = 1
[admin]
address = "127.0.0.1:0"
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"
tls = {{ cert = "{d}/c.pem", key = "{d}/c.key" }}
[[routes.r]]
match.path_prefix = "/"
cluster = "c"
retry = {{ attempts = 1 }}
rate_limit = {{ requests_per_second = 100 }}
[clusters.c]
endpoints = ["127.0.0.1:9"]
outlier_detection = {{ consecutive_5xx = 5 }}
health_check = {{ protocol = "tcp", interval = "1s" }}
"#,
        d = dir.display()
    );
    let snapshot =
        outrigger::config::compile(Path::new("<dash>"), &config).unwrap_or_else(|e| panic!("{e}"));
    let server = outrigger::start(snapshot).unwrap();
    let text = server.shared().export(outrigger::metrics::prometheus);
    let exposed: std::collections::BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    for n in &names {
        assert!(
            exposed.contains(n),
            "the dashboard queries {n}, which /metrics does not expose"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
