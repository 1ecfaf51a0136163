//! The xDS client end to end on both I/O drivers, against a management
//! server in the test (tonic with envoy-types' ADS service): clusters,
//! endpoints, listeners and routes arrive and serve; endpoints added,
//! removed and reweighted and a route changed under load with no failed
//! request; a resource with an unsupported feature NACKed while the rest
//! apply; the server restarted (the proxy keeps its config and subscribes
//! again).

// The management server runs on its own threads, outside the data path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::admin::TempDir;
use common::http::Client;
use common::*;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::google::protobuf::Any;
use outrigger::control::Proxy;
use outrigger::worker::Driver;
use prost::Message;

both_drivers!(
    resources_serve_and_follow_changes_under_load,
    unsupported_resources_are_nacked_and_the_rest_apply,
    server_restart_keeps_the_config_and_resubscribes,
    file_clusters_take_endpoints_from_eds,
    mutual_tls_to_the_management_server,
    eds_priorities_fail_over_by_health,
);

#[path = "../loadtest/src/xds_plane.rs"]
mod plane;
use plane::*;

// ---- the proxy and its traffic ----

fn launch(dir: &TempDir, driver: Driver, plane: SocketAddr, extra: &str) -> Proxy {
    admin::launch(
        dir,
        &format!(
            r#"
[runtime]
workers = 1
io = "{io}"
[admin]
address = "127.0.0.1:0"
[xds]
address = "{plane}"
node_id = "test-node"
{extra}
"#,
            io = io_name(driver)
        ),
    )
}

/// An HTTP upstream on 127.0.0.1 answering its name.
fn named(name: &'static str) -> SocketAddr {
    common::script::named("127.0.0.1", 0, name)
}

/// Poll for up to 10 s.
fn within(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Requests in a loop on one keep-alive connection until stopped: how
/// many, which bodies, and every failure.
struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<String>)>,
}

fn load(addr: SocketAddr) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        let (mut n, mut failures) = (0u64, Vec::new());
        while !s.load(Ordering::Relaxed) {
            let r = c.get("/", "svc", "");
            n += 1;
            if r.status != 200 {
                failures.push(format!("{} {}", r.status, String::from_utf8_lossy(&r.body)));
            }
        }
        (n, failures)
    });
    Load { stop, thread }
}

impl Load {
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Bodies of `n` requests.
fn bodies(addr: SocketAddr, path: &str, n: usize) -> HashMap<String, usize> {
    let mut c = Client::connect(addr);
    let mut out = HashMap::new();
    for _ in 0..n {
        let r = c.get(path, "svc", "");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        *out.entry(String::from_utf8_lossy(&r.body).into_owned())
            .or_default() += 1;
    }
    out
}

fn generation(p: &Proxy) -> u64 {
    p.shared().snapshot.load().generation
}

fn resources_serve_and_follow_changes_under_load(driver: Driver) {
    let (a, b) = (named("a"), named("b"));
    let plane = Plane::new();
    plane.set(CDS, vec![eds_cluster("backend")]);
    plane.set(EDS, vec![assignment("backend", &[(a, 1)])]);
    plane.set(LDS, vec![http_listener("xds-web", "main")]);
    plane.set(RDS, vec![routes("main", vec![to_cluster("/", "backend")])]);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = l.local_addr().unwrap();
    let _server = serve(&plane, l);
    let dir = TempDir::new("xds-serve");
    let p = launch(&dir, driver, server_addr, "");
    within("the xDS listener", || p.local_addr("xds-web").is_some());
    let addr = p.local_addr("xds-web").unwrap();
    within("endpoints", || {
        Client::connect(addr).get("/", "svc", "").body == b"a"
    });
    within("every ACK", || {
        [CDS, EDS, LDS, RDS].iter().all(|t| plane.acked(t))
    });

    // Under load: endpoint added, weights changed, endpoint removed, route
    // changed. No request may fail.
    let running = load(addr);
    let before = generation(&p);
    plane.set(EDS, vec![assignment("backend", &[(a, 1), (b, 1)])]);
    within("b to take traffic", || {
        bodies(addr, "/", 20).contains_key("b")
    });
    plane.set(EDS, vec![assignment("backend", &[(a, 1), (b, 9)])]);
    within("the new weights", || {
        let seen = bodies(addr, "/", 100);
        seen.get("b").copied().unwrap_or(0) >= 75
    });
    plane.set(EDS, vec![assignment("backend", &[(b, 1)])]);
    within("a to be gone", || {
        bodies(addr, "/", 20).get("b") == Some(&20)
    });
    plane.set(
        RDS,
        vec![routes(
            "main",
            vec![
                direct("/v2", 200, "version two"),
                to_cluster("/", "backend"),
            ],
        )],
    );
    within("the new route", || {
        Client::connect(addr).get("/v2", "svc", "").body == b"version two"
    });
    let (n, failures) = running.finish();
    assert!(
        failures.is_empty(),
        "{} of {n} requests failed: {failures:?}",
        failures.len()
    );
    assert!(n > 20, "only {n} requests ran");
    assert!(generation(&p) >= before + 4, "each update is a generation");

    // What an operator sees.
    let clusters = admin::get_json(p.admin_addr(), "/clusters");
    let c = &clusters["clusters"]["backend"];
    assert_eq!(c["discovery"]["source"], "xds", "{c}");
    assert_eq!(c["endpoints"].as_array().unwrap().len(), 1);
    let config = admin::get_json(p.admin_addr(), "/config");
    assert_eq!(config["xds"]["connected"], true, "{config}");
    // The last update's RDS answer may still be on its way (each type is
    // its own response on the stream).
    let rds_version =
        || admin::get_json(p.admin_addr(), "/config")["xds"]["types"]["rds"]["version"].clone();
    assert!(
        eventually(|| rds_version() == plane.version()),
        "rds version {} while the plane is at {}",
        rds_version(),
        plane.version()
    );
    let (_, metrics) = admin::request(p.admin_addr(), "GET", "/metrics");
    assert!(metrics.contains("outrigger_xds_connected 1"), "{metrics}");
    assert!(
        metrics.contains("outrigger_xds_updates_total{type=\"eds\",result=\"ack\"}"),
        "{metrics}"
    );

    // A cluster the management server drops goes away; its listener too.
    plane.set(LDS, vec![]);
    within("the listener to go", || p.local_addr("xds-web").is_none());
    plane.set(RDS, vec![]);
    plane.set(CDS, vec![]);
    within("the cluster to go", || {
        !p.shared().snapshot.load().clusters.contains_key("backend")
    });
}

fn unsupported_resources_are_nacked_and_the_rest_apply(driver: Driver) {
    let a = named("a");
    let plane = Plane::new();
    // "odd" asks for a transport socket Outrigger lacks; "local" is defined
    // in the config file already. "good" applies.
    let mut odd = Cluster::decode(eds_cluster("odd").value.as_slice()).unwrap();
    odd.transport_socket = Some(TransportSocket {
        name: "alts".into(),
        config_type: Some(
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                Any {
                    type_url: "type.googleapis.com/envoy.extensions.transport_sockets.alts.v3.Alts"
                        .into(),
                    value: vec![],
                },
            ),
        ),
    });
    plane.set(
        CDS,
        vec![eds_cluster("good"), any(CDS, &odd), eds_cluster("local")],
    );
    plane.set(EDS, vec![assignment("good", &[(a, 1)])]);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = l.local_addr().unwrap();
    let _server = serve(&plane, l);
    let dir = TempDir::new("xds-nack");
    let file_cluster = format!(
        "[clusters.local]\nendpoints = [\"{a}\"]\n[listeners.web]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\nroutes = \"r\"\n[[routes.r]]\nmatch.path_prefix = \"/\"\ncluster = \"good\"\n"
    );
    let p = launch(&dir, driver, server_addr, "");
    within("the NACK", || {
        plane
            .seen()
            .iter()
            .any(|s| s.type_url == CDS && s.error.is_some())
    });
    let nack = plane
        .seen()
        .into_iter()
        .find(|s| s.type_url == CDS && s.error.is_some())
        .unwrap();
    let detail = nack.error.unwrap();
    assert!(
        detail.contains("odd") && detail.contains("alts"),
        "{detail}"
    );
    assert_ne!(
        nack.version,
        plane.version(),
        "a NACK carries the last good version"
    );
    within("the good cluster", || {
        p.shared().snapshot.load().clusters.contains_key("good")
    });
    assert!(!p.shared().snapshot.load().clusters.contains_key("odd"));
    let config = admin::get_json(p.admin_addr(), "/config");
    let cds = &config["xds"]["types"]["cds"];
    assert!(cds["last_error"].as_str().unwrap().contains("odd"), "{cds}");
    assert!(cds["nacks"].as_u64().unwrap() >= 1, "{cds}");

    // The file's names win: a file that defines "local" and routes to the
    // xDS cluster "good" reloads fine, and "local" from xDS is refused.
    let text = std::fs::read_to_string(dir.path("config.toml")).unwrap() + &file_cluster;
    std::fs::write(dir.path("config.toml"), text).unwrap();
    p.reload().unwrap();
    plane.set(CDS, vec![eds_cluster("good"), eds_cluster("local")]);
    within("the clash to be NACKed", || {
        plane.seen().iter().any(|s| {
            s.type_url == CDS
                && s.error
                    .as_deref()
                    .is_some_and(|e| e.contains("local") && e.contains("config file"))
        })
    });
    let web = p.local_addr("web").unwrap();
    within("good's endpoints", || {
        Client::connect(web).get("/", "svc", "").body == b"a"
    });
}

fn server_restart_keeps_the_config_and_resubscribes(driver: Driver) {
    let (a, b) = (named("a"), named("b"));
    let plane = Plane::new();
    plane.set(CDS, vec![eds_cluster("restart-backend")]);
    plane.set(EDS, vec![assignment("restart-backend", &[(a, 1)])]);
    plane.set(LDS, vec![http_listener("xds-web", "main")]);
    plane.set(
        RDS,
        vec![routes("main", vec![to_cluster("/", "restart-backend")])],
    );
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = l.local_addr().unwrap();
    let server = serve(&plane, l);
    let dir = TempDir::new("xds-restart");
    let p = launch(&dir, driver, server_addr, "");
    within("the xDS listener", || p.local_addr("xds-web").is_some());
    let addr = p.local_addr("xds-web").unwrap();
    within("endpoints", || {
        Client::connect(addr).get("/", "svc", "").body == b"a"
    });
    let running = load(addr);
    drop(server);
    within("the disconnect", || {
        admin::get_json(p.admin_addr(), "/config")["xds"]["connected"] == false
    });
    // Serving goes on with the last config.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(Client::connect(addr).get("/", "svc", "").body, b"a");
    // The server comes back with a change; the proxy subscribes again.
    plane.set(EDS, vec![assignment("restart-backend", &[(b, 1)])]);
    let l = std::net::TcpListener::bind(server_addr).unwrap();
    let _server = serve(&plane, l);
    within("the new endpoints", || {
        bodies(addr, "/", 10).get("b") == Some(&10)
    });
    assert!(plane.streams.load(Ordering::SeqCst) >= 2);
    let (n, failures) = running.finish();
    assert!(
        failures.is_empty(),
        "{} of {n} failed: {failures:?}",
        failures.len()
    );
}

fn file_clusters_take_endpoints_from_eds(driver: Driver) {
    let (a, b) = (named("a"), named("b"));
    let plane = Plane::new();
    plane.set(EDS, vec![assignment("svc-eds", &[(a, 1)])]);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = l.local_addr().unwrap();
    let _server = serve(&plane, l);
    let dir = TempDir::new("xds-file-eds");
    let p = launch(
        &dir,
        driver,
        server_addr,
        "[listeners.web]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\nroutes = \"r\"\n\
         [[routes.r]]\nmatch.path_prefix = \"/\"\ncluster = \"from-file\"\n\
         [clusters.from-file]\ndiscovery = \"xds\"\neds_service_name = \"svc-eds\"\n",
    );
    let web = p.local_addr("web").unwrap();
    // Empty until EDS answers: 503, then a.
    within("EDS endpoints", || {
        Client::connect(web).get("/", "svc", "").body == b"a"
    });
    plane.set(EDS, vec![assignment("svc-eds", &[(b, 1)])]);
    within("the change", || bodies(web, "/", 10).get("b") == Some(&10));
    let clusters = admin::get_json(p.admin_addr(), "/clusters");
    assert_eq!(
        clusters["clusters"]["from-file"]["discovery"]["source"],
        "xds"
    );
    // Without [xds], discovery = "xds" is a config error.
    let err = outrigger::config::compile(
        std::path::Path::new("t.toml"),
        "[clusters.c]\ndiscovery = \"xds\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("clusters.c.discovery") && err.contains("[xds]"),
        "{err}"
    );
}

fn mutual_tls_to_the_management_server(driver: Driver) {
    let a = named("a");
    let dir = TempDir::new("xds-tls");
    let ca = tls::Ca::new("xds test CA");
    let server_leaf = ca.leaf(&["xds.test"]);
    let client_leaf = ca.leaf(&["proxy"]);
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path("client.pem"), &client_leaf.cert_pem).unwrap();
    std::fs::write(dir.path("client.key"), &client_leaf.key_pem).unwrap();
    let plane = Plane::new();
    plane.set(CDS, vec![eds_cluster("tls-backend")]);
    plane.set(EDS, vec![assignment("tls-backend", &[(a, 1)])]);
    plane.set(LDS, vec![http_listener("tls-web", "tls-routes")]);
    plane.set(
        RDS,
        vec![routes("tls-routes", vec![to_cluster("/", "tls-backend")])],
    );
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = l.local_addr().unwrap();
    let tls_config = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &server_leaf.cert_pem,
            &server_leaf.key_pem,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca.pem()));
    let _server = serve_tls(&plane, l, Some(tls_config));
    let p = launch(
        &dir,
        driver,
        server_addr,
        "[xds.tls]\nca = \"ca.pem\"\ncert = \"client.pem\"\nkey = \"client.key\"\nserver_name = \"xds.test\"\n",
    );
    within("the xDS listener over mutual TLS", || {
        p.local_addr("tls-web").is_some()
    });
    let web = p.local_addr("tls-web").unwrap();
    within("traffic", || {
        Client::connect(web).get("/", "svc", "").body == b"a"
    });
    // A proxy that does not trust the server's CA never connects.
    let other = TempDir::new("xds-tls-untrusted");
    std::fs::write(other.path("ca.pem"), tls::Ca::new("someone else").pem()).unwrap();
    let q = launch(
        &other,
        driver,
        server_addr,
        "[xds.tls]\nca = \"ca.pem\"\nserver_name = \"xds.test\"\n",
    );
    within("the failure to show", || {
        let x = &admin::get_json(q.admin_addr(), "/config")["xds"];
        x["stream_failures"].as_u64().unwrap_or(0) >= 1 && x["last_error"].is_string()
    });
    assert!(q.local_addr("tls-web").is_none());
}

/// EDS `LocalityLbEndpoints` priorities: priority 0 takes everything while
/// healthy; when its endpoint fails the proxy's own health checks, the
/// priority-1 endpoint takes over; `/clusters` shows the levels and the
/// localities.
fn eds_priorities_fail_over_by_health(driver: Driver) {
    use envoy_types::pb::envoy::config::core::v3::Locality;
    use envoy_types::pb::envoy::config::endpoint::v3::{
        lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
    };
    let (a, b) = (named("a"), named("b"));
    let group = |zone: &str, priority: u32, at: SocketAddr| LocalityLbEndpoints {
        locality: Some(Locality {
            region: "r1".into(),
            zone: zone.into(),
            sub_zone: String::new(),
        }),
        priority,
        lb_endpoints: vec![LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(sock(at)),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    };
    let cla = |first: SocketAddr| {
        any(
            EDS,
            &ClusterLoadAssignment {
                cluster_name: "svc-eds".into(),
                endpoints: vec![group("a", 0, first), group("b", 1, b)],
                ..Default::default()
            },
        )
    };
    let plane = Plane::new();
    plane.set(EDS, vec![cla(a)]);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = l.local_addr().unwrap();
    let _server = serve(&plane, l);
    let dir = TempDir::new("xds-priorities");
    let p = launch(
        &dir,
        driver,
        server_addr,
        "[listeners.web]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\nroutes = \"r\"\n\
         [[routes.r]]\nmatch.path_prefix = \"/\"\ncluster = \"from-file\"\n\
         [clusters.from-file]\ndiscovery = \"xds\"\neds_service_name = \"svc-eds\"\n\
         health_check = { protocol = \"tcp\", interval = \"50ms\", unhealthy_threshold = 1, healthy_threshold = 1 }\n",
    );
    let web = p.local_addr("web").unwrap();
    let all_to = |name: &[u8]| {
        let mut c = Client::connect(web);
        (0..20).all(|_| c.get("/", "svc", "").body == name)
    };
    within("EDS endpoints", || all_to(b"a"));
    let clusters = admin::get_json(p.admin_addr(), "/clusters");
    let c = &clusters["clusters"]["from-file"];
    assert_eq!(c["levels"][1]["level"], "priority 1", "{c}");
    let zones: Vec<&str> = c["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["zone"].as_str().unwrap())
        .collect();
    assert_eq!(zones, ["a", "b"]);
    // Priority 0's endpoint moves to a closed port: it fails its checks
    // and priority 1 takes everything.
    plane.set(EDS, vec![cla(closed_port())]);
    within("failover to priority 1", || all_to(b"b"));
    // ... by the health verdict, not only by trying the next endpoint
    // after a refused connect: the split says so.
    within("the split", || {
        let c = admin::get_json(p.admin_addr(), "/clusters");
        let split = &c["clusters"]["from-file"]["split"];
        split[0]["usable"] == 0 && split[1]["traffic_percent"] == 100.0
    });
}
