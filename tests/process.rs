//! Tests of the real `outrigger` binary: signals and drain, worker threads
//! and pinning as the kernel shows them, recovery from EMFILE.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::*;
use common::*;
use outrigger::worker::Driver;

both_drivers!(
    sigterm_drains_open_connections,
    second_signal_exits_at_once,
    workers_named_and_pinned_in_proc,
    emfile_backs_off_and_recovers,
);

/// io_uring forbidden for the proxy alone (a seccomp filter, as a
/// container profile would): `io = "auto"` falls back to epoll, says so,
/// and serves; `io = "io_uring"` refuses to start.
#[test]
fn io_uring_forbidden_falls_back_to_epoll() {
    let up = echo(Driver::Epoll);
    let cfg = tcp_config(Driver::Epoll, 1, &[up.addr.to_string()], "", "")
        .replace("io = \"epoll\"", "io = \"auto\"");
    let p = spawn_with(
        &cfg,
        Launch {
            forbid_io_uring: true,
            ..Launch::default()
        },
    );
    assert!(
        p.startup
            .iter()
            .any(|l| l.contains("io_uring unavailable, falling back to epoll")),
        "{:#?}",
        p.startup
    );
    let mut s = connect(p.addr);
    assert_eq!(round_trip(&mut s, b"still relayed"), b"still relayed");
    let (_, metrics) = common::admin::request(p.admin, "GET", "/metrics");
    assert!(metrics.contains("driver=\"epoll\""), "{metrics}");
    drop(s);
    drop(p);
    // Asked for io_uring explicitly: a clear start-up failure.
    let strict = cfg.replace("io = \"auto\"", "io = \"io_uring\"");
    let path =
        std::env::temp_dir().join(format!("outrigger-test-strict-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        format!("[admin]\naddress = \"127.0.0.1:0\"\n{strict}"),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outrigger"));
    cmd.args(["run", "--config"]).arg(&path);
    // SAFETY: prctl only, in the child before exec.
    unsafe {
        cmd.pre_exec(deny_io_uring);
    }
    let out = cmd.output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("io_uring"), "{err}");
}

fn sigterm_drains_open_connections(driver: Driver) {
    let up = echo(driver);
    let cfg = tcp_config(driver, 2, &[up.addr.to_string()], "", "")
        .replace("drain_timeout = \"2s\"", "drain_timeout = \"4s\"");
    let mut p = spawn(&cfg, None);
    let mut open = connect(p.addr);
    assert_eq!(round_trip(&mut open, b"before"), b"before");
    signal(&p, libc::SIGTERM);
    // The log names the signal, not its number.
    let line = log_line(&p, "draining");
    assert!(
        line.contains("trigger=\"SIGTERM\"") || line.contains("trigger=SIGTERM"),
        "{line}"
    );
    // New connections are refused once every worker closed its socket.
    assert!(
        eventually(|| std::net::TcpStream::connect(p.addr).is_err()),
        "listener still accepting after SIGTERM"
    );
    // The open connection keeps working during the drain.
    assert_eq!(round_trip(&mut open, b"during drain"), b"during drain");
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "exited with a connection open"
    );
    let closed_at = Instant::now();
    drop(open);
    let code = wait_exit(&mut p, Duration::from_secs(4));
    assert_eq!(code, Some(0));
    assert!(
        closed_at.elapsed() < Duration::from_secs(3),
        "exited when the last connection closed, not at the timeout"
    );
}

fn second_signal_exits_at_once(driver: Driver) {
    let up = echo(driver);
    let cfg = tcp_config(driver, 1, &[up.addr.to_string()], "", "")
        .replace("drain_timeout = \"2s\"", "drain_timeout = \"30s\"");
    let mut p = spawn(&cfg, None);
    let mut open = connect(p.addr);
    assert_eq!(round_trip(&mut open, b"x"), b"x");
    signal(&p, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "the first signal only drains"
    );
    signal(&p, libc::SIGINT);
    assert_eq!(wait_exit(&mut p, Duration::from_secs(3)), Some(2));
    drop(open);
}

/// Worker threads are named, and pinned as `pin_workers` says: with the
/// default ("auto") on a machine whose CPUs this process shares (this
/// one, CI's) they run unpinned, each allowed every CPU; with `true` each
/// is pinned to its own core.
fn workers_named_and_pinned_in_proc(driver: Driver) {
    let up = echo(driver);
    let workers = |extra: &str| {
        let cfg = tcp_config(driver, 2, &[up.addr.to_string()], "", "")
            .replace("[runtime]\n", &format!("[runtime]\n{extra}\n"));
        let p = spawn(&cfg, None);
        let tasks = std::fs::read_dir(format!("/proc/{}/task", p.child.id())).unwrap();
        let mut cpus = Vec::new();
        for t in tasks {
            let dir = t.unwrap().path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap();
            // The kernel keeps 15 bytes of "outrigger-worker-N".
            if comm.trim() == "outrigger-worke" {
                let status = std::fs::read_to_string(dir.join("status")).unwrap();
                let allowed = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .unwrap()
                    .trim()
                    .to_string();
                cpus.push(allowed);
            }
        }
        cpus.sort();
        cpus
    };
    let process = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    let cores = core_affinity::get_core_ids().unwrap();
    let shared = !outrigger::worker::cpus::Cpus::get().exclusive();
    let unpinned = workers("");
    assert_eq!(unpinned.len(), 2, "two worker threads");
    if shared {
        assert!(
            unpinned.iter().all(|c| *c == process),
            "unpinned: {unpinned:?}"
        );
    }
    let pinned = workers("pin_workers = true");
    assert_eq!(pinned.len(), 2, "two worker threads");
    if cores.len() >= 2 {
        assert!(
            pinned.iter().all(|c| !c.contains(',') && !c.contains('-')),
            "each pinned to one core: {pinned:?}"
        );
        assert_ne!(pinned[0], pinned[1], "distinct cores");
    }
}

/// Process CPU time (user + system) in clock ticks, from /proc.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn emfile_backs_off_and_recovers(driver: Driver) {
    let up = echo(driver);
    let cfg = tcp_config(driver, 1, &[up.addr.to_string()], "", "");
    let p = spawn(&cfg, Some(64));
    // Each proxied connection costs two fds; 60 clients exhaust 64.
    let mut clients = Vec::new();
    for _ in 0..60 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&p.addr, Duration::from_secs(1)) {
            clients.push(s);
        }
    }
    for c in clients.iter_mut() {
        let _ = c.write_all(b"z");
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(p.child.id());
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(p.child.id()) - before;
    // Spinning on EMFILE would burn ~100 ticks (a whole core) in this second.
    assert!(spent < 30, "proxy used {spent} ticks/s while out of fds");
    drop(clients);
    // Once fds are free again, new connections are served.
    let ok = eventually(|| {
        let Ok(mut s) = std::net::TcpStream::connect(p.addr) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        s.write_all(b"back").is_ok() && {
            let mut got = [0u8; 4];
            std::io::Read::read_exact(&mut s, &mut got).is_ok() && &got == b"back"
        }
    });
    if !ok {
        let pid = p.child.id();
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let d = t.unwrap().path();
            let comm = std::fs::read_to_string(d.join("comm")).unwrap_or_default();
            let wchan = std::fs::read_to_string(d.join("wchan")).unwrap_or_default();
            let sys = std::fs::read_to_string(d.join("syscall")).unwrap_or_default();
            eprintln!(
                "DIAG {} {} wchan={} syscall={}",
                d.display(),
                comm.trim(),
                wchan,
                sys.trim()
            );
        }
        eprintln!(
            "DIAG fds={}",
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .count()
        );
    }
    assert!(ok, "not served after fds were freed");
}

both_drivers!(drain_closes_idle_http_keep_alive);

fn drain_closes_idle_http_keep_alive(driver: Driver) {
    let up = outrigger::backends::start(
        outrigger::backends::BackendKind::Http(outrigger::backends::HttpBackend::named("up")),
        "127.0.0.1:0".parse().unwrap(),
        1,
        driver,
    )
    .unwrap();
    let cfg = format!(
        "[runtime]\nworkers = 1\nio = \"{}\"\ndrain_timeout = \"10s\"\n[listeners.l]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\nroutes = \"r\"\n[[routes.r]]\nmatch.path_prefix = \"/\"\ncluster = \"c\"\n[clusters.c]\nendpoints = [\"{}\"]\n",
        io_name(driver),
        up.addr
    );
    let mut p = spawn(&cfg, None);
    let mut c = common::http::Client::connect(p.addr);
    assert_eq!(c.get("/", "x", "").status, 200);
    // The connection is now idle between requests; a drain must not wait
    // 10 s for it.
    let t = Instant::now();
    signal(&p, libc::SIGTERM);
    assert_eq!(wait_exit(&mut p, Duration::from_secs(5)), Some(0));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "drain waited for an idle keep-alive connection"
    );
    assert!(
        c.read_response(false).is_none(),
        "the idle connection was closed"
    );
}

both_drivers!(
    sighup_reloads_and_keeps_the_last_good_config,
    admin_drain_finishes_in_flight
);

fn http_config(driver: Driver, up: SocketAddr, tag: &str) -> String {
    format!(
        "[runtime]\nworkers = 2\nio = \"{}\"\ndrain_timeout = \"10s\"\n[listeners.l]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\nroutes = \"r\"\n[[routes.r]]\nmatch.path_prefix = \"/\"\ncluster = \"c\"\nresponse_headers = {{ set = {{ \"x-tag\" = \"{tag}\" }} }}\n[clusters.c]\nendpoints = [\"{up}\"]\n",
        io_name(driver),
    )
}

fn http_upstream(driver: Driver, delay: Duration) -> outrigger::backends::Backend {
    let mut b = outrigger::backends::HttpBackend::named("up");
    b.delay = delay;
    outrigger::backends::start(
        outrigger::backends::BackendKind::Http(b),
        "127.0.0.1:0".parse().unwrap(),
        1,
        driver,
    )
    .unwrap()
}

fn sighup_reloads_and_keeps_the_last_good_config(driver: Driver) {
    let up = http_upstream(driver, Duration::ZERO);
    let p = spawn(&http_config(driver, up.addr, "one"), None);
    let path = p.config.0.clone();
    let tag = |p: &Proxy| {
        let r = common::http::Client::connect(p.addr).get("/", "x", "");
        r.header("x-tag").map(str::to_string)
    };
    assert_eq!(tag(&p).as_deref(), Some("one"));
    // A broken config: the error names file:line:column, the old one serves on.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("cluster = \"c\"\nresponse", "cluster = \"nope\"\nresponse"),
    )
    .unwrap();
    signal(&p, libc::SIGHUP);
    let line = log_line(&p, "reload rejected");
    let position = format!("{}:", path.display());
    assert!(line.contains(&position) && line.contains("nope"), "{line}");
    assert_eq!(tag(&p).as_deref(), Some("one"));
    // A good one is applied on the next SIGHUP.
    std::fs::write(&path, text.replace("\"one\"", "\"two\"")).unwrap();
    signal(&p, libc::SIGHUP);
    let line = log_line(&p, "config reloaded");
    assert!(line.contains("generation=2"), "{line}");
    assert_eq!(tag(&p).as_deref(), Some("two"));
    let (status, body) = common::admin::request(p.admin, "GET", "/config");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["generation"], 2);
    assert_eq!(v["reloads"]["failed"], 1);
}

fn admin_drain_finishes_in_flight(driver: Driver) {
    let up = http_upstream(driver, Duration::from_millis(800));
    let mut p = spawn(&http_config(driver, up.addr, "one"), None);
    let mut c = common::http::Client::connect(p.addr);
    c.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
    // The (delayed) upstream holds the request: it is in flight.
    assert!(eventually(|| up
        .stats
        .requests
        .load(std::sync::atomic::Ordering::SeqCst)
        == 1));
    assert_eq!(common::admin::request(p.admin, "POST", "/drain").0, 202);
    assert!(eventually(|| common::admin::request(
        p.admin, "GET", "/ready"
    )
    .0 == 503));
    assert!(
        eventually(|| std::net::TcpStream::connect(p.addr).is_err()),
        "still accepting while draining"
    );
    let r = c
        .read_response(false)
        .expect("the in-flight request completes");
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert_eq!(wait_exit(&mut p, Duration::from_secs(5)), Some(0));
}

both_drivers!(sigkill_under_load_leaves_only_resets);

/// SIGKILL with requests in flight: every client sees its connection end
/// (EOF or reset) and never a response the upstream did not give.
fn sigkill_under_load_leaves_only_resets(driver: Driver) {
    let up = http_upstream(driver, Duration::from_millis(500));
    let p = spawn(&http_config(driver, up.addr, "k"), None);
    let addr = p.addr;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = connect(addr);
                s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
                read_to_eof(&mut s)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    signal(&p, libc::SIGKILL);
    for c in clients {
        let got = c.join().unwrap().expect("the connection ends at once");
        assert!(
            got.is_empty(),
            "a response came from a killed proxy: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}
