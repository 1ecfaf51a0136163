//! Locality-aware balancing with failover, as a client and an operator
//! see it: traffic stays in the proxy's zone, fails over to the region and
//! then anywhere as the local endpoints fail their health checks, spills
//! in proportion when they are partly healthy (overprovisioning 1.4), and
//! comes back when they recover; priorities fail over the same way without
//! `locality`; `/clusters` and the metrics show the split; the environment
//! sets the proxy's zone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::admin::{self, TempDir};
use common::http::Client;
use common::script::read_request;
use common::*;
use outrigger::worker::Driver;

both_drivers!(
    failover_and_failback,
    partial_health_spills_in_proportion,
    outlier_ejection_fails_over
);

/// An HTTP/1.1 upstream answering its `name`, and `/healthz` with 200
/// while `healthy` is set, 503 when not.
fn upstream(name: &'static str) -> (SocketAddr, Arc<AtomicBool>) {
    let healthy = Arc::new(AtomicBool::new(true));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = healthy.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let h = h.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                while let Some(req) = read_request(&mut s, &mut buf) {
                    let (status, body) = if req.line.starts_with("GET /healthz") {
                        if h.load(Ordering::SeqCst) {
                            ("200 OK", "ok")
                        } else {
                            ("503 Service Unavailable", "down")
                        }
                    } else {
                        ("200 OK", name)
                    };
                    let r = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(r.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, healthy)
}

fn config(driver: Driver, node: &str, cluster: &str) -> String {
    format!(
        r#"
[runtime]
workers = 2
io = "{io}"
[admin]
address = "127.0.0.1:0"
{node}
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"
[[routes.r]]
match.path_prefix = "/"
cluster = "api"
[clusters.api]
health_check = {{ path = "/healthz", interval = "50ms", timeout = "1s", healthy_threshold = 1, unhealthy_threshold = 1 }}
{cluster}
"#,
        io = io_name(driver)
    )
}

/// `n` requests over a few keep-alive connections: answers by body.
fn tally(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(addr)).collect();
    for i in 0..n {
        let r = clients[i % 4].get("/", "api", "");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        *out.entry(String::from_utf8_lossy(&r.body).into_owned())
            .or_default() += 1;
    }
    out
}

/// `/clusters`' endpoints of `api` that take traffic now.
fn usable(p: &outrigger::control::Proxy) -> usize {
    let j = admin::get_json(p.admin_addr(), "/clusters");
    j["clusters"]["api"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["usable"] == true)
        .count()
}

/// Two endpoints in the proxy's zone, one elsewhere in its region, one in
/// another region. All traffic stays local; the local pair down sends it
/// to the region, the region down too sends it anywhere; one local back
/// (50% healthy: 70% of the traffic) shares with the far one; both back
/// take it all again.
fn failover_and_failback(driver: Driver) {
    let (a1, a1_ok) = upstream("a1");
    let (a2, a2_ok) = upstream("a2");
    let (b, b_ok) = upstream("b");
    let (far, _) = upstream("far");
    let cluster = format!(
        r#"locality = "prefer_local"
endpoints = [
  {{ address = "{far}", zone = "c", region = "r2" }},
  {{ address = "{b}", zone = "b", region = "r1" }},
  {{ address = "{a1}", zone = "a", region = "r1" }},
  {{ address = "{a2}", zone = "a", region = "r1" }},
]"#
    );
    let dir = TempDir::new("locality");
    let cfg = config(driver, "[node]\nregion = \"r1\"\nzone = \"a\"", &cluster);
    let p = admin::launch(&dir, &cfg);
    let addr = p.local_addr("web").unwrap();
    let seen = tally(addr, 200);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["a1", "a2"], "{seen:?}");
    assert!(seen.values().all(|&n| n >= 60), "{seen:?}");

    // The zone fails: the region's endpoint takes everything.
    a1_ok.store(false, Ordering::SeqCst);
    a2_ok.store(false, Ordering::SeqCst);
    assert!(eventually(|| usable(&p) == 2));
    let seen = tally(addr, 100);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["b"], "{seen:?}");

    // The region fails too: anywhere.
    b_ok.store(false, Ordering::SeqCst);
    assert!(eventually(|| usable(&p) == 1));
    let seen = tally(addr, 100);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["far"], "{seen:?}");

    // Half the zone back: 1.4 x 50% = 70% stays local, 30% spills to the
    // nearest level with health (the far one). Binomial, n = 1000,
    // p = 0.7: sd 14.5, bound 5 sd.
    a1_ok.store(true, Ordering::SeqCst);
    assert!(eventually(|| usable(&p) == 2));
    let seen = tally(addr, 1000);
    let local = seen.get("a1").copied().unwrap_or(0);
    assert_eq!(
        local + seen.get("far").copied().unwrap_or(0),
        1000,
        "{seen:?}"
    );
    assert!((628..=772).contains(&local), "{seen:?}");
    // The operator sees the same split.
    let j = admin::get_json(p.admin_addr(), "/clusters");
    let api = &j["clusters"]["api"];
    assert_eq!(api["locality"], "prefer_local");
    assert_eq!(api["node"]["zone"], "a");
    let share = |zone: &str| {
        api["split"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["zone"] == zone)
            .map(|s| s["traffic_percent"].as_f64().unwrap())
            .unwrap()
    };
    assert_eq!((share("a"), share("b"), share("c")), (70.0, 0.0, 30.0));
    let (_, text) = admin::request(p.admin_addr(), "GET", "/metrics");
    let m = admin::parse_prometheus(&text);
    let ratio = |zone: &str, region: &str| {
        m.value(
            "outrigger_cluster_locality_traffic_ratio",
            &[
                ("cluster", "api"),
                ("region", region),
                ("zone", zone),
                ("priority", "0"),
            ],
        )
    };
    assert_eq!(ratio("a", "r1"), Some(0.7));
    assert_eq!(ratio("c", "r2"), Some(0.3));
    let e = api["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == b.to_string())
        .unwrap();
    assert_eq!((&e["zone"], &e["region"]), (&"b".into(), &"r1".into()));

    // The zone recovers: everything comes back.
    a2_ok.store(true, Ordering::SeqCst);
    b_ok.store(true, Ordering::SeqCst);
    assert!(eventually(|| usable(&p) == 4));
    let seen = tally(addr, 200);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["a1", "a2"], "{seen:?}");

    // A reload keeps the health state and the preference.
    let (_, body) = admin::request(p.admin_addr(), "POST", "/reload");
    assert!(body.contains("generation"), "{body}");
    let seen = tally(addr, 100);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["a1", "a2"], "{seen:?}");
}

/// Without `locality`, priorities alone: five priority-0 endpoints, two
/// failing (60% healthy) keep 84% of the traffic; the priority-1 endpoint
/// takes 16%. Binomial, n = 1000, p = 0.84: sd 11.6, bound 5 sd.
fn partial_health_spills_in_proportion(driver: Driver) {
    let ups: Vec<(SocketAddr, Arc<AtomicBool>)> =
        ["p0", "p0", "p0", "p0", "p0"].map(upstream).into();
    let (backup, _) = upstream("p1");
    let mut list: Vec<String> = ups
        .iter()
        .map(|(a, _)| format!("{{ address = \"{a}\" }}"))
        .collect();
    list.push(format!("{{ address = \"{backup}\", priority = 1 }}"));
    let cluster = format!("endpoints = [{}]", list.join(", "));
    let dir = TempDir::new("priority");
    let p = admin::launch(&dir, &config(driver, "", &cluster));
    let addr = p.local_addr("web").unwrap();
    let seen = tally(addr, 100);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["p0"], "{seen:?}");
    ups[0].1.store(false, Ordering::SeqCst);
    ups[1].1.store(false, Ordering::SeqCst);
    assert!(eventually(|| usable(&p) == 4));
    let seen = tally(addr, 1000);
    let primary = seen.get("p0").copied().unwrap_or(0);
    assert!((782..=898).contains(&primary), "{seen:?}");
    let j = admin::get_json(p.admin_addr(), "/clusters");
    let levels: Vec<&str> = j["clusters"]["api"]["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["level"].as_str().unwrap())
        .collect();
    assert_eq!(levels, ["priority 0", "priority 1"]);
}

/// Outlier detection feeds the split as health checks do: the local
/// endpoint answering 503s is ejected and the zone next door takes the
/// traffic (after the 503s that trip it, which the client sees).
fn outlier_ejection_fails_over(driver: Driver) {
    let (sick, _) = common::script::scripted(|mut s, _| {
        let mut buf = Vec::new();
        while read_request(&mut s, &mut buf).is_some() {
            let r = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nsick";
            if s.write_all(r.as_bytes()).is_err() {
                return;
            }
        }
    });
    let (b, _) = upstream("b");
    let cfg = format!(
        r#"
[runtime]
workers = 1
io = "{io}"
[admin]
address = "127.0.0.1:0"
[node]
zone = "a"
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"
[[routes.r]]
match.path_prefix = "/"
cluster = "api"
[clusters.api]
locality = "prefer_local"
outlier_detection = {{ consecutive_5xx = 2, base_ejection_time = "30s" }}
endpoints = [{{ address = "{sick}", zone = "a" }}, {{ address = "{b}", zone = "b" }}]
"#,
        io = io_name(driver)
    );
    let dir = TempDir::new("locality-outlier");
    let p = admin::launch(&dir, &cfg);
    let mut c = Client::connect(p.local_addr("web").unwrap());
    for _ in 0..2 {
        assert_eq!(c.get("/", "api", "").status, 503);
    }
    for _ in 0..50 {
        let r = c.get("/", "api", "");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"b"[..]));
    }
    let j = admin::get_json(p.admin_addr(), "/clusters");
    let split = &j["clusters"]["api"]["split"];
    assert_eq!(
        (&split[0]["zone"], &split[0]["usable"]),
        (&"a".into(), &0.into())
    );
    assert_eq!(split[1]["traffic_percent"], 100.0);
}

/// `OUTRIGGER_ZONE` (Kubernetes' downward API) overrides `[node] zone`,
/// on the real binary; bad values are config errors with a position.
#[test]
fn environment_sets_the_zone_and_errors_have_positions() {
    let (z, _) = upstream("z");
    let cfg = format!(
        r#"
[node]
region = "r1"
zone = "a"
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"
[[routes.r]]
match.path_prefix = "/"
cluster = "api"
[clusters.api]
locality = "prefer_local"
endpoints = [{{ address = "{z}", zone = "b" }}]
"#
    );
    let p = process::spawn_with(
        &cfg,
        process::Launch {
            env: vec![("OUTRIGGER_ZONE", "b".into())],
            ..process::Launch::default()
        },
    );
    let j = admin::get_json(p.admin, "/clusters");
    assert_eq!(j["clusters"]["api"]["node"]["zone"], "b");
    assert_eq!(j["clusters"]["api"]["node"]["region"], "r1");
    assert_eq!(j["clusters"]["api"]["split"][0]["traffic_percent"], 100.0);

    // Without a locality of its own the proxy is told (`check` prints it,
    // `run` logs it) that it prefers nothing.
    let nowhere = cfg.replace("[node]\nregion = \"r1\"\nzone = \"a\"\n", "");
    let s = outrigger::config::compile(std::path::Path::new("l.toml"), &nowhere).unwrap();
    if std::env::var_os("OUTRIGGER_ZONE").is_none()
        && std::env::var_os("OUTRIGGER_REGION").is_none()
    {
        let w = s.warnings();
        assert!(
            w.iter()
                .any(|w| w.starts_with("clusters.api.locality") && w.contains("no [node]")),
            "{w:?}"
        );
    }
    let bad = cfg.replace("\"prefer_local\"", "\"nearby\"");
    let e = outrigger::config::compile(std::path::Path::new("l.toml"), &bad)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("l.toml:13:12") && e.contains("must be \"off\" or \"prefer_local\""),
        "{e}"
    );
    let bad = cfg.replace("zone = \"b\" }", "zone = \"b\", priority = 9 }");
    let e = outrigger::config::compile(std::path::Path::new("l.toml"), &bad)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("priority must be from 0 to 7, not 9"), "{e}");
}
