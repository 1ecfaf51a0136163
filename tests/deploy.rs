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
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(proxy[probe]["exec"]["command"][1], "wait-ready", "{probe}");
    }
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
}
