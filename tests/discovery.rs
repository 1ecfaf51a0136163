//! Service discovery end to end on both I/O drivers: a DNS server in the
//! test whose answer changes (traffic moves, no request fails; lookup
//! failures keep the last set; a name that never resolved leaves the
//! cluster empty), and an endpoints file rewritten, renamed over and
//! broken.

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::admin::launch;
use common::admin::TempDir;
use common::http::Client;
use common::script::named;
use common::*;
use outrigger::control::Proxy;
use outrigger::worker::Driver;

both_drivers!(dns_answers_move_traffic, endpoints_file_moves_traffic);

/// What the test DNS server answers for every A query.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    A([u8; 4]),
    NxDomain,
    ServFail,
    /// No answer at all (a server that times out).
    Silent,
}

/// A DNS server on 127.0.0.1 answering A queries with `answer` (TTL 1).
fn dns_server(answer: Arc<Mutex<Answer>>) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let q = &buf[..n];
            // Question end: the name, then type and class.
            let mut at = 12;
            while q[at] != 0 {
                at += 1 + usize::from(q[at]);
            }
            let qtype = u16::from_be_bytes([q[at + 1], q[at + 2]]);
            let end = at + 5;
            let mut r = q[..end].to_vec();
            r[2] = 0x81;
            let a = *answer.lock().unwrap();
            if a == Answer::Silent {
                continue;
            }
            match a {
                Answer::NxDomain => r[3] = 0x83,
                Answer::ServFail => r[3] = 0x82,
                Answer::A(ip) if qtype == 1 => {
                    r[3] = 0x80;
                    r[7] = 1;
                    r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
                    r.extend_from_slice(&ip);
                }
                Answer::A(_) => r[3] = 0x80, // no AAAA records
                Answer::Silent => {}
            }
            let _ = sock.send_to(&r, from);
        }
    });
    addr
}

fn config(driver: Driver, cluster: &str) -> String {
    format!(
        r#"
[runtime]
workers = 1
io = "{io}"
[admin]
address = "127.0.0.1:0"
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"
[[routes.r]]
match.path_prefix = "/"
cluster = "c"
[clusters.c]
{cluster}
"#,
        io = io_name(driver)
    )
}

/// Send requests until `want` answers (every one must succeed).
fn until(c: &mut Client, want: &str) -> usize {
    let t = Instant::now();
    let mut n = 0;
    loop {
        let r = c.get("/", "svc", "");
        assert_eq!(r.status, 200, "a request failed while waiting for {want}");
        n += 1;
        if r.body == want.as_bytes() {
            return n;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{want} never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until cluster `c`'s endpoints are exactly `want` (/clusters).
fn serving(p: &Proxy, want: &[SocketAddr]) {
    let mut want: Vec<String> = want.iter().map(|a| a.to_string()).collect();
    want.sort();
    let t = Instant::now();
    loop {
        let clusters = admin::get_json(p.admin_addr(), "/clusters");
        let mut have: Vec<String> = clusters["clusters"]["c"]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["address"].as_str().unwrap_or("").to_string())
            .collect();
        have.sort();
        if have == want {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "endpoints {have:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn dns_answers_move_traffic(driver: Driver) {
    let port = closed_port().port();
    named("127.0.0.2", port, "first");
    named("127.0.0.3", port, "second");
    let answer = Arc::new(Mutex::new(Answer::A([127, 0, 0, 2])));
    let dns = dns_server(answer.clone());
    let dir = TempDir::new("dns");
    let p = launch(
        &dir,
        &config(
            driver,
            &format!("discovery = \"dns\"\nendpoints = [\"svc.test:{port}\"]\ndns_servers = [\"{dns}\"]\ndns_refresh = \"200ms\"\ndns_family = \"v4\""),
        ),
    );
    let addr = p.local_addr("web").unwrap();
    // Until the first lookup lands the cluster is empty (503); then "first".
    let t = Instant::now();
    loop {
        let r = Client::connect(addr).get("/", "svc", "");
        if r.status == 200 {
            assert_eq!(r.body, b"first");
            break;
        }
        assert_eq!(r.status, 503);
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = Client::connect(addr);
    // The answer changes: traffic moves with no failed request.
    *answer.lock().unwrap() = Answer::A([127, 0, 0, 3]);
    until(&mut c, "second");
    // Lookups fail: the last set stays, failures are counted.
    *answer.lock().unwrap() = Answer::ServFail;
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..5 {
        let r = c.get("/", "svc", "");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"second"[..]));
    }
    let clusters = admin::get_json(p.admin_addr(), "/clusters");
    let d = &clusters["clusters"]["c"]["discovery"];
    assert_eq!(d["source"], "dns");
    assert!(
        d["failures"].as_u64().unwrap() >= 1 && d["updates"].as_u64().unwrap() >= 2,
        "{d}"
    );
    assert!(
        d["last_error"].as_str().unwrap().contains("server failure"),
        "{d}"
    );
    *answer.lock().unwrap() = Answer::NxDomain;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.get("/", "svc", "").status, 200);
    // A server that stops answering: lookups time out (1 s), the last set
    // keeps serving, the error says so.
    *answer.lock().unwrap() = Answer::Silent;
    assert!(eventually(|| {
        let clusters = admin::get_json(p.admin_addr(), "/clusters");
        clusters["clusters"]["c"]["discovery"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer"))
    }));
    for _ in 0..5 {
        let r = c.get("/", "svc", "");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"second"[..]));
    }

    // A name that never resolves: the config loads, the cluster is empty.
    let dir2 = TempDir::new("dns-never");
    let p2 = launch(
        &dir2,
        &config(driver, &format!("discovery = \"dns\"\nendpoints = [\"nowhere.test:{port}\"]\ndns_servers = [\"{dns}\"]")),
    );
    let r = Client::connect(p2.local_addr("web").unwrap()).get("/", "svc", "");
    assert_eq!(r.status, 503);
}

fn endpoints_file_moves_traffic(driver: Driver) {
    let a = named("127.0.0.1", 0, "a");
    let b = named("127.0.0.1", 0, "b");
    let dir = TempDir::new("file-discovery");
    let file = dir.path("endpoints.json");
    std::fs::write(&file, format!("[{{\"address\": \"{a}\", \"weight\": 1}}]")).unwrap();
    let p = launch(
        &dir,
        &config(
            driver,
            "discovery = \"file\"\nendpoints_file = \"endpoints.json\"",
        ),
    );
    let addr = p.local_addr("web").unwrap();
    let mut c = Client::connect(addr);
    until(&mut c, "a");
    // Renamed over (as editors and secret managers do).
    admin::write_atomic(&file, &format!("[{{\"address\": \"{b}\"}}]"));
    until(&mut c, "b");
    // Rewritten in place: both.
    std::fs::write(
        &file,
        format!("[{{\"address\": \"{a}\"}}, {{\"address\": \"{b}\"}}]"),
    )
    .unwrap();
    let t = Instant::now();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 && t.elapsed() < Duration::from_secs(5) {
        let r = c.get("/", "svc", "");
        assert_eq!(r.status, 200);
        seen.insert(r.body);
    }
    assert_eq!(seen.len(), 2);
    // A Kubernetes-style symlink swap (endpoints.json -> ..data/x,
    // ..data -> ..v1, then a new link renamed over ..data), with requests
    // running on another connection all along: none may fail.
    std::fs::create_dir(dir.path("..v1")).unwrap();
    std::fs::create_dir(dir.path("..v2")).unwrap();
    std::fs::write(
        dir.path("..v1/endpoints.json"),
        format!("[{{\"address\": \"{a}\"}}]"),
    )
    .unwrap();
    std::fs::write(
        dir.path("..v2/endpoints.json"),
        format!("[{{\"address\": \"{b}\"}}]"),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v1", dir.path("..data")).unwrap();
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink("..data/endpoints.json", &file).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            let mut failed = 0;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                if c.get("/", "svc", "").status != 200 {
                    failed += 1;
                }
            }
            (n, failed)
        })
    };
    serving(&p, &[a]);
    std::os::unix::fs::symlink("..v2", dir.path("..data_tmp")).unwrap();
    std::fs::rename(dir.path("..data_tmp"), dir.path("..data")).unwrap();
    serving(&p, &[b]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (n, failed) = load.join().unwrap();
    assert_eq!(
        failed, 0,
        "{failed} of {n} requests failed across the swaps"
    );
    // Broken: the last good set stays; the error is in /clusters.
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, "[{\"address\": ").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    for _ in 0..4 {
        assert_eq!(c.get("/", "svc", "").status, 200);
    }
    let clusters = admin::get_json(p.admin_addr(), "/clusters");
    let d = &clusters["clusters"]["c"]["discovery"];
    assert_eq!(d["source"], "file");
    assert!(d["last_error"].as_str().is_some(), "{d}");
    assert_eq!(
        clusters["clusters"]["c"]["endpoints"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

both_drivers!(
    srv_records_give_ports_and_weights,
    truncated_answers_retry_over_tcp
);

/// A DNS server whose UDP answers are truncated (TC set, no records) and
/// whose TCP answers (same port) carry every A record of `ips` (TTL 30).
fn truncating_dns_server(ips: Vec<[u8; 4]>) -> SocketAddr {
    // A port free for both (another test may hold its TCP twin).
    let (udp, tcp) = (0..50)
        .find_map(|_| {
            let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
            let tcp = std::net::TcpListener::bind(udp.local_addr().ok()?).ok()?;
            Some((udp, tcp))
        })
        .unwrap();
    let addr = udp.local_addr().unwrap();
    // The question's end: the name, then type and class.
    fn question_end(q: &[u8]) -> usize {
        let mut at = 12;
        while q[at] != 0 {
            at += 1 + usize::from(q[at]);
        }
        at + 5
    }
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let end = question_end(&buf[..n]);
            let mut r = buf[..end].to_vec();
            r[2] = 0x83; // response, TC, RD
            r[3] = 0x80;
            let _ = udp.send_to(&r, from);
        }
    });
    std::thread::spawn(move || {
        for s in tcp.incoming() {
            let Ok(mut s) = s else { return };
            let mut len = [0u8; 2];
            if s.read_exact(&mut len).is_err() {
                continue;
            }
            let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if s.read_exact(&mut q).is_err() {
                continue;
            }
            let end = question_end(&q);
            let qtype = u16::from_be_bytes([q[end - 4], q[end - 3]]);
            let mut r = q[..end].to_vec();
            r[2] = 0x81;
            r[3] = 0x80;
            if qtype == 1 {
                r[7] = ips.len() as u8;
                for ip in &ips {
                    r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
                    r.extend_from_slice(ip);
                }
            }
            let mut framed = (r.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&r);
            let _ = s.write_all(&framed);
        }
    });
    addr
}

/// More records than a UDP answer holds: the resolver asks again over TCP
/// and every address becomes an endpoint.
fn truncated_answers_retry_over_tcp(driver: Driver) {
    let first = named("127.0.0.2", 0, "two");
    let port = first.port();
    named("127.0.0.3", port, "three");
    named("127.0.0.4", port, "four");
    let dns = truncating_dns_server(vec![[127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 4]]);
    let dir = TempDir::new("dns-tcp");
    let p = launch(
        &dir,
        &config(
            driver,
            &format!(
                "discovery = \"dns\"\nendpoints = [\"many.test:{port}\"]\ndns_family = \"v4\"\ndns_servers = [\"{dns}\"]"
            ),
        ),
    );
    let addr = p.local_addr("web").unwrap();
    let mut c = Client::connect(addr);
    let t = Instant::now();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 3 {
        let r = c.get("/", "svc", "");
        if r.status == 200 {
            seen.insert(String::from_utf8_lossy(&r.body).into_owned());
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "only {seen:?} answered"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let clusters = admin::get_json(p.admin_addr(), "/clusters");
    assert_eq!(
        clusters["clusters"]["c"]["endpoints"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

/// A DNS server answering SRV queries for any `_...` name with `records`
/// (priority, weight, port, target; targets uncompressed) and A queries
/// for a target `tN.test` with 127.0.0.(N+2).
/// SRV records a test serves: (priority, weight, port, target).
type SrvRecords = Arc<Mutex<Vec<(u16, u16, u16, String)>>>;

fn srv_server(records: SrvRecords) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let q = &buf[..n];
            let mut at = 12;
            let mut labels = Vec::new();
            while q[at] != 0 {
                let l = usize::from(q[at]);
                labels.push(String::from_utf8_lossy(&q[at + 1..at + 1 + l]).to_string());
                at += 1 + l;
            }
            let qtype = u16::from_be_bytes([q[at + 1], q[at + 2]]);
            let end = at + 5;
            let mut r = q[..end].to_vec();
            r[2] = 0x81;
            r[3] = 0x80;
            let name = labels.join(".");
            let mut answers = 0u8;
            if qtype == 33 && name.starts_with('_') {
                for (prio, weight, port, target) in records.lock().unwrap().iter() {
                    let mut data = Vec::new();
                    data.extend_from_slice(&prio.to_be_bytes());
                    data.extend_from_slice(&weight.to_be_bytes());
                    data.extend_from_slice(&port.to_be_bytes());
                    for l in target.split('.') {
                        data.push(l.len() as u8);
                        data.extend_from_slice(l.as_bytes());
                    }
                    data.push(0);
                    r.extend_from_slice(&[0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 1]);
                    r.extend_from_slice(&(data.len() as u16).to_be_bytes());
                    r.extend_from_slice(&data);
                    answers += 1;
                }
            } else if qtype == 1 {
                if let Some(n) = name
                    .strip_prefix('t')
                    .and_then(|rest| rest.strip_suffix(".test"))
                    .and_then(|n| n.parse::<u8>().ok())
                {
                    r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
                    r.extend_from_slice(&[127, 0, 0, n + 2]);
                    answers = 1;
                }
            }
            r[7] = answers;
            let _ = sock.send_to(&r, from);
        }
    });
    addr
}

/// `endpoints = ["_http._tcp.svc.test"]`: the SRV records give targets,
/// ports and weights; only the best priority serves; a change moves
/// traffic.
fn srv_records_give_ports_and_weights(driver: Driver) {
    let a = named("127.0.0.2", 0, "first");
    let b = named("127.0.0.3", 0, "second");
    let backup = named("127.0.0.4", 0, "backup");
    let records = Arc::new(Mutex::new(vec![
        (10, 1, a.port(), "t0.test".to_string()),
        (20, 1, backup.port(), "t2.test".to_string()),
    ]));
    let dns = srv_server(records.clone());
    let dir = TempDir::new("srv");
    let p = launch(
        &dir,
        &config(
            driver,
            // A name per driver: discovery remembers endpoints per name
            // process-wide, and both variants run at once.
            &format!("discovery = \"dns\"\nendpoints = [\"_http._tcp.svc-{}.test\"]\ndns_servers = [\"{dns}\"]\ndns_refresh = \"200ms\"\ndns_family = \"v4\"", io_name(driver)),
        ),
    );
    let addr = p.local_addr("web").unwrap();
    let t = Instant::now();
    loop {
        let r = Client::connect(addr).get("/", "svc", "");
        if r.status == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "SRV never resolved");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = Client::connect(addr);
    // Priority 10 only: the backup (20) gets nothing.
    for _ in 0..20 {
        assert_eq!(c.get("/", "svc", "").body, b"first");
    }
    // Weights 1 and 3 between two targets at the best priority.
    *records.lock().unwrap() = vec![
        (0, 1, a.port(), "t0.test".to_string()),
        (0, 3, b.port(), "t1.test".to_string()),
    ];
    until(&mut c, "second");
    let (mut first, mut second) = (0, 0);
    for _ in 0..400 {
        match c.get("/", "svc", "").body.as_slice() {
            b"first" => first += 1,
            b"second" => second += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        (230..=370).contains(&second) && first + second == 400,
        "weights 1:3 gave {first}:{second}"
    );
    let clusters = admin::get_json(p.admin_addr(), "/clusters");
    let eps = clusters["clusters"]["c"]["endpoints"].to_string();
    assert!(eps.contains(&format!("t1.test:{}", b.port())), "{eps}");
}
