//! Hot reload through the library's entry point (`control::Proxy`): under
//! load, with listeners added and removed, with a bind that fails, from file
//! changes (rename and ConfigMap-style symlink swap), and keeping upstream
//! pools across a route-only change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::admin::{self, TempDir};
use common::http::Client;
use common::*;
use outrigger::backends::{self, Backend, BackendKind, HttpBackend};
use outrigger::control::{Options, Proxy};
use outrigger::worker::Driver;

both_drivers!(
    reload_under_load_loses_nothing,
    listeners_added_removed_and_failed_bind_changes_nothing,
    runtime_keys_need_a_restart,
    file_watch_rename_and_symlink_swap,
    pools_survive_a_route_only_reload,
    renamed_listener_keeps_serving,
    pooled_connections_to_removed_endpoints_close,
    restoring_the_file_clears_the_reload_error,
    a_rejected_file_is_reported_once,
);

fn backend(driver: Driver, name: &str, delay: Duration) -> Backend {
    let mut b = HttpBackend::named(name);
    b.delay = delay;
    backends::start(
        BackendKind::Http(b),
        "127.0.0.1:0".parse().unwrap(),
        1,
        driver,
    )
    .unwrap()
}

/// Listener `web` routes everything to `target` and tags responses with `tag`.
fn config(
    driver: Driver,
    tag: u32,
    target: &str,
    a: SocketAddr,
    b: SocketAddr,
    listeners: &str,
) -> String {
    format!(
        r#"
[runtime]
workers = 2
io = "{io}"
drain_timeout = "2s"

[admin]
address = "127.0.0.1:0"

[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"
{listeners}

[[routes.r]]
name = "main"
match.path_prefix = "/"
cluster = "{target}"
response_headers = {{ set = {{ "x-tag" = "{tag}" }} }}

[clusters.a]
endpoints = ["{a}"]

[clusters.b]
endpoints = ["{b}"]
"#,
        io = io_name(driver)
    )
}

fn launch(path: &Path, watch: bool) -> Proxy {
    let snapshot = outrigger::config::load(path).unwrap();
    let options = Options {
        config_path: Some(path.to_path_buf()),
        watch,
    };
    Proxy::launch(snapshot, options, None).unwrap()
}

fn generation(p: &Proxy) -> u64 {
    p.shared().snapshot.load().generation
}

fn reload_under_load_loses_nothing(driver: Driver) {
    let (a, b) = (
        backend(driver, "a", Duration::ZERO),
        backend(driver, "b", Duration::ZERO),
    );
    let dir = TempDir::new("reload-load");
    let path = dir.path("config.toml");
    let target = |tag: u32| if tag % 2 == 0 { "a" } else { "b" };
    std::fs::write(&path, config(driver, 0, "a", a.addr, b.addr, "")).unwrap();
    let proxy = launch(&path, false);
    let addr = proxy.local_addr("web").unwrap();
    // Valid tags are 0..25 but not multiples of 5; each is published (here)
    // before the reload that uses it.
    let published = Arc::new(AtomicU32::new(0));
    let is_valid = |tag: u32, published: u32| tag <= published && (tag == 0 || tag % 5 != 0);
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (stop, total, published) = (stop.clone(), total.clone(), published.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = c.get("/x", "svc", "");
                    assert_eq!(r.status, 200, "{r:?}");
                    let tag: u32 = r.header("x-tag").unwrap().parse().unwrap();
                    assert!(
                        is_valid(tag, published.load(Ordering::SeqCst)),
                        "tag {tag} never valid"
                    );
                    assert_eq!(
                        r.body,
                        target(tag).as_bytes(),
                        "tag {tag} answered by the wrong cluster"
                    );
                    assert!(r.header("connection").is_none(), "keep-alive kept");
                    n += 1;
                    total.fetch_add(1, Ordering::Relaxed);
                }
                n
            })
        })
        .collect();
    let mut failures = 0;
    for i in 1..=25u32 {
        if i % 5 == 0 {
            // Invalid: a missing cluster (compile error) or broken TOML.
            let bad = if i % 10 == 0 {
                config(driver, 1000 + i, "nope", a.addr, b.addr, "")
            } else {
                config(driver, 1000 + i, "a", a.addr, b.addr, "")
                    .replace("[clusters.b]", "[clusters.b")
            };
            admin::write_atomic(&path, &bad);
            let err = proxy.reload().unwrap_err();
            assert!(err.contains("config.toml:"), "error names the file: {err}");
            failures += 1;
            let cfg = admin::get_json(proxy.admin_addr(), "/config");
            assert!(
                cfg["last_reload_error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("config.toml:"),
                "{cfg}"
            );
        } else {
            published.store(i, Ordering::SeqCst);
            admin::write_atomic(&path, &config(driver, i, target(i), a.addr, b.addr, ""));
            let done = proxy.reload().unwrap();
            assert_eq!(done.generation, u64::from(i - failures) + 1);
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while total.load(Ordering::Relaxed) < 5000 {
        assert!(
            Instant::now() < deadline,
            "only {} requests in 30 s",
            total.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let per_client: Vec<u64> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(per_client.iter().all(|&n| n > 0), "{per_client:?}");
    assert_eq!(generation(&proxy), 21);
    assert_eq!(proxy.shared().reloads.failed.get(), 5);
    assert_eq!(proxy.shared().reloads.succeeded.get(), 20);
    let metrics = admin::parse_prometheus(&admin::request(proxy.admin_addr(), "GET", "/metrics").1);
    assert_eq!(
        metrics.value("outrigger_config_generation", &[]),
        Some(21.0)
    );
    assert_eq!(
        metrics.value("outrigger_config_reloads_total", &[("result", "failure")]),
        Some(5.0)
    );
    assert_eq!(
        metrics.value("outrigger_config_reload_duration_seconds_count", &[]),
        Some(20.0)
    );
    // The route kept its name, so its counter ran on across every reload.
    // (Counted just after the response is written: poll for the last ones.)
    let served: u64 = per_client.iter().sum();
    assert!(eventually(|| {
        let m = admin::parse_prometheus(&admin::request(proxy.admin_addr(), "GET", "/metrics").1);
        m.value(
            "outrigger_route_requests_total",
            &[("route", "main"), ("class", "2xx")],
        ) == Some(served as f64)
    }));
}

fn listeners_added_removed_and_failed_bind_changes_nothing(driver: Driver) {
    let (a, b) = (
        backend(driver, "a", Duration::from_millis(400)),
        backend(driver, "b", Duration::ZERO),
    );
    let dir = TempDir::new("reload-listeners");
    let path = dir.path("config.toml");
    let two = "\n[listeners.two]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\nroutes = \"r\"\n";
    std::fs::write(&path, config(driver, 1, "b", a.addr, b.addr, "")).unwrap();
    let proxy = launch(&path, false);
    let web = proxy.local_addr("web").unwrap();
    assert!(proxy.local_addr("two").is_none());

    // Added: bound on every worker, serving at once.
    std::fs::write(&path, config(driver, 2, "b", a.addr, b.addr, two)).unwrap();
    assert_eq!(proxy.reload().unwrap().generation, 2);
    let two_addr = proxy.local_addr("two").unwrap();
    for _ in 0..8 {
        let r = Client::connect(two_addr).get("/", "svc", "");
        assert_eq!((r.status, r.header("x-tag")), (200, Some("2")));
    }
    assert_eq!(
        proxy.local_addr("web"),
        Some(web),
        "kept listener keeps its socket"
    );

    // A bind failure (the port is taken by a socket without SO_REUSEPORT)
    // fails the whole reload: no new listener, no new routes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let three = format!(
        "{two}\n[listeners.three]\naddress = \"{}\"\nprotocol = \"http\"\nroutes = \"r\"\n",
        taken.local_addr().unwrap()
    );
    std::fs::write(&path, config(driver, 3, "a", a.addr, b.addr, &three)).unwrap();
    let err = proxy.reload().unwrap_err();
    assert!(err.contains("three"), "{err}");
    assert_eq!(generation(&proxy), 2);
    assert!(proxy.local_addr("three").is_none());
    let r = Client::connect(web).get("/", "svc", "");
    assert_eq!(
        (r.status, r.header("x-tag"), r.body.as_slice()),
        (200, Some("2"), &b"b"[..])
    );

    // Removed: an in-flight request on it completes, with Connection: close;
    // new connections are refused.
    std::fs::write(&path, config(driver, 4, "a", a.addr, b.addr, two)).unwrap();
    proxy.reload().unwrap();
    // An idle keep-alive connection, parked (idle past the warm window).
    let mut idle = Client::connect(web);
    assert_eq!(idle.get("/", "svc", "").status, 200);
    std::thread::sleep(Duration::from_millis(450));
    let mut slow = Client::connect(web);
    let before = a.stats.requests.load(Ordering::SeqCst);
    slow.send(b"GET /slow HTTP/1.1\r\nHost: svc\r\n\r\n");
    // The (delayed) upstream holds the request: it is in flight.
    assert!(eventually(
        || a.stats.requests.load(Ordering::SeqCst) > before
    ));
    let no_web = config(driver, 5, "a", a.addr, b.addr, two).replace(
        "[listeners.web]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\nroutes = \"r\"\n",
        "",
    );
    std::fs::write(&path, &no_web).unwrap();
    assert_eq!(proxy.reload().unwrap().generation, 4);
    let r = slow
        .read_response(false)
        .expect("in-flight request answered");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    // The parked connection of the removed listener is closed at once.
    idle.stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        matches!(std::io::Read::read(&mut idle.stream, &mut byte), Ok(0)),
        "parked connection of a removed listener closed"
    );
    assert!(
        eventually(|| std::net::TcpStream::connect(web).is_err()),
        "removed listener still accepts"
    );
    let r = Client::connect(two_addr).get("/", "svc", "");
    assert_eq!((r.status, r.header("x-tag")), (200, Some("5")));
}

fn runtime_keys_need_a_restart(driver: Driver) {
    let (a, b) = (
        backend(driver, "a", Duration::ZERO),
        backend(driver, "b", Duration::ZERO),
    );
    let dir = TempDir::new("reload-runtime");
    let path = dir.path("config.toml");
    std::fs::write(&path, config(driver, 1, "a", a.addr, b.addr, "")).unwrap();
    let proxy = launch(&path, false);
    for (from, to, key) in [
        ("workers = 2", "workers = 3", "runtime.workers"),
        (
            "drain_timeout = \"2s\"",
            "drain_timeout = \"3s\"",
            "runtime.drain_timeout",
        ),
        (
            "address = \"127.0.0.1:0\"\n\n[listeners",
            "address = \"127.0.0.1:1\"\n\n[listeners",
            "admin.address",
        ),
    ] {
        let cfg = config(driver, 2, "b", a.addr, b.addr, "").replacen(from, to, 1);
        assert!(cfg.contains(to), "{key}");
        std::fs::write(&path, cfg).unwrap();
        let err = proxy.reload().unwrap_err();
        assert!(err.starts_with(key), "{err}");
    }
    assert_eq!(generation(&proxy), 1);
    let r = Client::connect(proxy.local_addr("web").unwrap()).get("/", "svc", "");
    assert_eq!(r.header("x-tag"), Some("1"));
}

fn wait_generation(p: &Proxy, want: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if generation(p) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn file_watch_rename_and_symlink_swap(driver: Driver) {
    let (a, b) = (
        backend(driver, "a", Duration::ZERO),
        backend(driver, "b", Duration::ZERO),
    );
    // An editor-style save: write elsewhere, rename over the file.
    let dir = TempDir::new("watch-rename");
    let path = dir.path("config.toml");
    std::fs::write(&path, config(driver, 1, "a", a.addr, b.addr, "")).unwrap();
    let proxy = launch(&path, true);
    admin::write_atomic(&path, &config(driver, 2, "b", a.addr, b.addr, ""));
    assert!(wait_generation(&proxy, 2), "rename not picked up");
    let r = Client::connect(proxy.local_addr("web").unwrap()).get("/", "svc", "");
    assert_eq!(
        (r.header("x-tag"), r.body.as_slice()),
        (Some("2"), &b"b"[..])
    );
    // A broken file is not applied; fixing it is.
    admin::write_atomic(&path, "[listeners.web\n");
    assert!(eventually(|| proxy.shared().reloads.failed.get() == 1));
    assert_eq!(generation(&proxy), 2);
    admin::write_atomic(&path, &config(driver, 3, "a", a.addr, b.addr, ""));
    assert!(wait_generation(&proxy, 3));
    drop(proxy);

    // A Kubernetes ConfigMap: config.toml -> ..data/config.toml, and
    // ..data -> ..v1 is replaced by renaming a new symlink over it.
    let dir = TempDir::new("watch-configmap");
    std::fs::create_dir(dir.path("..v1")).unwrap();
    std::fs::write(
        dir.path("..v1/config.toml"),
        config(driver, 1, "a", a.addr, b.addr, ""),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v1", dir.path("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.toml", dir.path("config.toml")).unwrap();
    let proxy = launch(&dir.path("config.toml"), true);
    std::fs::create_dir(dir.path("..v2")).unwrap();
    std::fs::write(
        dir.path("..v2/config.toml"),
        config(driver, 2, "b", a.addr, b.addr, ""),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v2", dir.path("..data_tmp")).unwrap();
    std::fs::rename(dir.path("..data_tmp"), dir.path("..data")).unwrap();
    assert!(wait_generation(&proxy, 2), "symlink swap not picked up");
    let r = Client::connect(proxy.local_addr("web").unwrap()).get("/", "svc", "");
    assert_eq!(
        (r.header("x-tag"), r.body.as_slice()),
        (Some("2"), &b"b"[..])
    );
}

fn pools_survive_a_route_only_reload(driver: Driver) {
    let (a, b) = (
        backend(driver, "a", Duration::ZERO),
        backend(driver, "b", Duration::ZERO),
    );
    let dir = TempDir::new("reload-pools");
    let path = dir.path("config.toml");
    std::fs::write(&path, config(driver, 1, "a", a.addr, b.addr, "")).unwrap();
    let proxy = launch(&path, false);
    let addr = proxy.local_addr("web").unwrap();
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(addr)).collect();
    for _ in 0..25 {
        for c in &mut clients {
            assert_eq!(c.get("/", "svc", "").status, 200);
        }
    }
    let opened = a.connections();
    assert!(opened <= 4, "{opened} upstream connections for 4 clients");
    std::fs::write(&path, config(driver, 2, "a", a.addr, b.addr, "")).unwrap();
    proxy.reload().unwrap();
    for _ in 0..25 {
        for c in &mut clients {
            let r = c.get("/", "svc", "");
            assert_eq!((r.status, r.header("x-tag")), (200, Some("2")));
        }
    }
    assert_eq!(
        a.connections(),
        opened,
        "a route-only reload opened upstream connections"
    );
    // The last connection returns to the pool just after its response
    // reached the client: poll for it.
    let mut ep = serde_json::Value::Null;
    assert!(
        eventually(|| {
            let clusters = admin::get_json(proxy.admin_addr(), "/clusters");
            ep = clusters["clusters"]["a"]["endpoints"][0].clone();
            ep["requests"] == 200 && ep["pooled"].as_u64() == Some(opened)
        }),
        "{ep}"
    );
}

fn renamed_listener_keeps_serving(driver: Driver) {
    let (a, b) = (
        backend(driver, "a", Duration::ZERO),
        backend(driver, "b", Duration::ZERO),
    );
    let addr = closed_port();
    let named = |name: &str, tag: u32| {
        config(driver, tag, "a", a.addr, b.addr, "").replace(
            "[listeners.web]\naddress = \"127.0.0.1:0\"",
            &format!("[listeners.{name}]\naddress = \"{addr}\""),
        )
    };
    let dir = TempDir::new("reload-rename");
    let path = dir.path("config.toml");
    std::fs::write(&path, named("web", 1)).unwrap();
    let proxy = launch(&path, false);
    assert_eq!(proxy.local_addr("web"), Some(addr));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (s2, c2) = (stop.clone(), count.clone());
    // New connections all through the rename: none may fail.
    let client = std::thread::spawn(move || {
        while !s2.load(Ordering::Relaxed) {
            let r = Client::connect(addr).get("/", "svc", "connection: close\r\n");
            assert_eq!(r.status, 200);
            c2.fetch_add(1, Ordering::SeqCst);
        }
    });
    // Connections are flowing before the rename, and go on after it.
    assert!(eventually(|| count.load(Ordering::SeqCst) >= 10));
    std::fs::write(&path, named("renamed", 2)).unwrap();
    assert_eq!(proxy.reload().unwrap().generation, 2);
    let at_reload = count.load(Ordering::SeqCst);
    assert!(eventually(|| count.load(Ordering::SeqCst) >= at_reload + 10));
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    assert_eq!(proxy.local_addr("renamed"), Some(addr));
    assert!(proxy.local_addr("web").is_none());
    let r = Client::connect(addr).get("/", "svc", "");
    assert_eq!(r.header("x-tag"), Some("2"));
}

/// A reload that removes an endpoint closes the idle pooled connections to
/// it (nothing else would: the pool is keyed by address), while requests
/// go to the endpoint that replaced it.
fn pooled_connections_to_removed_endpoints_close(driver: Driver) {
    use std::io::{Read, Write};
    let old = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let old_addr = old.local_addr().unwrap();
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = old.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nold")
            .unwrap();
        // Pooled by the proxy now: wait for it to close the connection.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let eof = matches!(s.read(&mut buf), Ok(0));
        let _ = closed_tx.send(eof);
    });
    let new = backend(driver, "new", Duration::ZERO);
    let cfg = |endpoint: SocketAddr| {
        format!(
            "[runtime]\nworkers = 1\nio = \"{}\"\n[admin]\naddress = \"127.0.0.1:0\"\n[listeners.web]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\nroutes = \"r\"\n[[routes.r]]\nmatch.path_prefix = \"/\"\ncluster = \"c\"\n[clusters.c]\nendpoints = [\"{endpoint}\"]\n",
            io_name(driver)
        )
    };
    let dir = TempDir::new("reload-sweep");
    let path = dir.path("config.toml");
    std::fs::write(&path, cfg(old_addr)).unwrap();
    let proxy = launch(&path, false);
    let web = proxy.local_addr("web").unwrap();
    assert_eq!(Client::connect(web).get("/", "svc", "").body, b"old");
    std::fs::write(&path, cfg(new.addr)).unwrap();
    assert_eq!(proxy.reload().unwrap().generation, 2);
    assert_eq!(
        closed_rx.recv_timeout(Duration::from_secs(10)),
        Ok(true),
        "the pooled connection to the removed endpoint stayed open"
    );
    assert_eq!(Client::connect(web).get("/", "svc", "").body, b"new");
}

/// After a failed reload, putting the running content back needs no reload
/// (nothing changed) but clears `last_reload_error` in /config.
fn restoring_the_file_clears_the_reload_error(driver: Driver) {
    let (a, b) = (
        backend(driver, "a", Duration::ZERO),
        backend(driver, "b", Duration::ZERO),
    );
    let dir = TempDir::new("reload-restore");
    let path = dir.path("config.toml");
    let good = config(driver, 1, "a", a.addr, b.addr, "");
    std::fs::write(&path, &good).unwrap();
    let proxy = launch(&path, true);
    let error = || admin::get_json(proxy.admin_addr(), "/config")["last_reload_error"].clone();
    admin::write_atomic(&path, &good.replace("[clusters.b]", "[clusters.b"));
    assert!(
        eventually(|| !error().is_null()),
        "the bad edit was not reported"
    );
    admin::write_atomic(&path, &good);
    assert!(eventually(|| error().is_null()), "{}", error());
    assert_eq!(generation(&proxy), 1);
}

/// A rejected config file is reported (logged, counted) once per distinct
/// content: other files written in its directory do not turn it into a
/// failed reload a tick. It is still tried again on each event, so a
/// certificate it names that appears later lets it load.
fn a_rejected_file_is_reported_once(driver: Driver) {
    let (a, b) = (
        backend(driver, "a", Duration::ZERO),
        backend(driver, "b", Duration::ZERO),
    );
    let dir = TempDir::new("reload-rejected-once");
    let path = dir.path("config.toml");
    let good = config(driver, 1, "a", a.addr, b.addr, "");
    std::fs::write(&path, &good).unwrap();
    let proxy = launch(&path, true);
    let failed = || proxy.shared().reloads.failed.get();
    // A log (or anything else) written beside the config, three times a
    // second: each write is a directory event past the 200 ms debounce.
    // (The proxy's own log in that directory made every report an event.)
    let noise = |d: Duration| {
        let t = Instant::now();
        let mut n = 0u32;
        while t.elapsed() < d {
            std::fs::write(dir.path("noise.log"), n.to_string()).unwrap();
            n += 1;
            std::thread::sleep(Duration::from_millis(300));
        }
        std::thread::sleep(Duration::from_millis(400));
    };
    admin::write_atomic(&path, &good.replace("[clusters.b]", "[clusters.b"));
    assert!(
        eventually(|| failed() == 1),
        "the bad edit was not reported"
    );
    noise(Duration::from_secs(2));
    assert_eq!(failed(), 1, "the same bad content was reported again");
    // Another bad content is reported, once: a certificate that is not there.
    let tls = dir.path("tls");
    let with_tls = config(
        driver,
        2,
        "a",
        a.addr,
        b.addr,
        &format!(
            "tls = {{ cert = \"{0}/cert.pem\", key = \"{0}/cert.key\" }}",
            tls.display()
        ),
    );
    admin::write_atomic(&path, &with_tls);
    assert!(
        eventually(|| failed() == 2),
        "the second bad edit was not reported"
    );
    noise(Duration::from_secs(1));
    assert_eq!(failed(), 2);
    assert_eq!(generation(&proxy), 1);
    // The certificate appears (one rename): the same content now loads.
    let staging = dir.path("staging");
    std::fs::create_dir(&staging).unwrap();
    common::tls::Ca::new("reload")
        .leaf(&["localhost"])
        .write(&staging, "cert");
    std::fs::rename(&staging, &tls).unwrap();
    assert!(
        eventually(|| generation(&proxy) == 2),
        "the config did not load once its certificate appeared"
    );
    assert_eq!(failed(), 2);
    assert!(admin::get_json(proxy.admin_addr(), "/config")["last_reload_error"].is_null());
}
