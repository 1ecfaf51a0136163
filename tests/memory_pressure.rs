//! Memory pressure (issue 16): the real binary in a cgroup with a memory
//! limit, and a burst of clients each holding a large partial request head
//! (about 60 KB of heap per client in the proxy, more than the limit in
//! all). With overload protection on (the default
//! `runtime.overload_memory_percent = 85`) the proxy sheds and lives,
//! serves afterwards, and gives the memory and descriptors back; with it
//! off the same burst gets it OOM-killed, which shows the limit is real.
//!
//! Needs root and a cgroup memory controller (v1 or v2); skipped with a
//! message otherwise, and required where OUTRIGGER_REQUIRE_INTEROP is set
//! (as `.ci/run` sets it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::process::{log_line, spawn_with, Launch, Proxy};
use common::*;
use outrigger::worker::Driver;

/// One driver after the other: each burst holds 10,000 client sockets in
/// this process.
#[test]
fn burst_of_large_heads_under_a_cgroup_limit() {
    for driver in [Driver::IoUring, Driver::Epoll] {
        burst_under_limit(driver);
    }
}

/// The cgroup's memory limit.
const LIMIT: u64 = 320 << 20;
/// Clients in the burst: 60 KB heads, about 1.8x the limit in all.
const CLIENTS: usize = 10_000;
const PAD: usize = 60_000;

/// A memory cgroup of the test's own, removed on drop.
struct Cgroup {
    dir: PathBuf,
    v1: bool,
}

impl Cgroup {
    fn create(name: &str, limit: u64) -> Result<Self, String> {
        let name = format!("outrigger-test-{}-{name}", std::process::id());
        let v1 = std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists();
        let dir = if v1 {
            PathBuf::from("/sys/fs/cgroup/memory").join(&name)
        } else {
            let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control")
                .map_err(|e| format!("no cgroup memory controller: {e}"))?;
            if !controllers.split_whitespace().any(|c| c == "memory") {
                return Err("cgroup v2 without the memory controller enabled".into());
            }
            PathBuf::from("/sys/fs/cgroup").join(&name)
        };
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cg = Cgroup { dir, v1 };
        let write = |file: &str, value: &str| {
            std::fs::write(cg.dir.join(file), value).map_err(|e| format!("{file}: {e}"))
        };
        if v1 {
            write("memory.limit_in_bytes", &limit.to_string())?;
            // No swap here; where there is, swapping would only delay the kill.
            let _ = write("memory.swappiness", "0");
        } else {
            write("memory.max", &limit.to_string())?;
            let _ = write("memory.swap.max", "0");
        }
        Ok(cg)
    }

    /// The highest usage since creation, where the kernel keeps it.
    fn peak(&self) -> Option<u64> {
        let file = if self.v1 {
            "memory.max_usage_in_bytes"
        } else {
            "memory.peak"
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once its process has been waited for.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn config(driver: Driver, protect: bool) -> String {
    let percent = if protect {
        ""
    } else {
        "overload_memory_percent = 0\n"
    };
    format!(
        r#"
[runtime]
workers = 1
io = "{io}"
{percent}
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"
max_connections = 20000
header_timeout = "60s"
[[routes.r]]
match.path_prefix = "/"
direct_response = {{ status = 200, body = "ok" }}
"#,
        io = io_name(driver)
    )
}

/// Raise this process's descriptor limit to its hard limit (the burst
/// holds thousands of client sockets).
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

/// Open `clients` connections, each sending a request line and a 60 KB
/// header still without its end; stop early when the proxy has exited.
fn burst(p: &mut Proxy, clients: usize) -> Vec<std::net::TcpStream> {
    let head = {
        let mut h = b"GET / HTTP/1.1\r\nhost: x\r\nx-pad: ".to_vec();
        h.resize(h.len() + PAD, b'a');
        h
    };
    let mut held = Vec::with_capacity(clients);
    for i in 0..clients {
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&p.addr, Duration::from_secs(2)) {
            s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
            // A connection closed at accept may fail this write: expected.
            let _ = s.write_all(&head);
            held.push(s);
        }
        if i % 100 == 0 && p.child.try_wait().unwrap().is_some() {
            break;
        }
    }
    held
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn burst_under_limit(driver: Driver) {
    let tag = io_name(driver);
    let on = match Cgroup::create(&format!("{tag}-on"), LIMIT) {
        Ok(cg) => cg,
        Err(why) => {
            assert!(
                std::env::var_os("OUTRIGGER_REQUIRE_INTEROP").is_none(),
                "a cgroup memory controller is required: {why}"
            );
            eprintln!("skipped: {why}");
            return;
        }
    };
    assert!(
        raise_nofile() >= CLIENTS as u64 + 1000,
        "RLIMIT_NOFILE too low"
    );

    // Protection on: the proxy sheds and lives.
    let mut p = spawn_with(
        &config(driver, true),
        Launch {
            cgroup: Some(on.dir.clone()),
            ..Launch::default()
        },
    );
    let pid = p.child.id();
    let base_fds = open_fds(pid);
    let base_rss = rss_kib(pid);
    let held = burst(&mut p, CLIENTS);
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "killed although protected (peak {:?} of {LIMIT})",
        on.peak()
    );
    log_line(&p, "overloaded: shedding");
    // What the clients saw: some were closed at accept or answered 503
    // `overloaded` (none was served: no head was complete).
    let (mut answered_503, mut closed) = (0, 0);
    for mut s in held {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => closed += 1,
            Ok(n) => {
                let got = String::from_utf8_lossy(&buf[..n]);
                assert!(got.starts_with("HTTP/1.1 503"), "{got}");
                answered_503 += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            Err(_) => {}
        }
    }
    eprintln!(
        "{tag}: peak {:.0} MiB of {} MiB, {answered_503} answered 503, {closed} closed",
        on.peak().unwrap_or(0) as f64 / 1048576.0,
        LIMIT >> 20
    );
    assert!(answered_503 + closed > 0, "nothing shed");
    // All clients gone: it serves again and gives back descriptors and memory.
    let served = eventually(|| {
        let mut c = connect(p.addr);
        let _ = c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        read_to_eof(&mut c).is_ok_and(|b| b.starts_with(b"HTTP/1.1 200"))
    });
    assert!(served, "not served after the burst");
    let deadline = Instant::now() + Duration::from_secs(10);
    while (open_fds(pid) > base_fds + 4 || rss_kib(pid) > base_rss + 32 * 1024)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        open_fds(pid) <= base_fds + 4,
        "fds {} (before the burst {base_fds})",
        open_fds(pid)
    );
    assert!(
        rss_kib(pid) <= base_rss + 32 * 1024,
        "RSS {} KiB (before the burst {base_rss} KiB)",
        rss_kib(pid)
    );
    drop(p);
    drop(on);

    // Protection off: the same burst is fatal, so the limit was real.
    let off = Cgroup::create(&format!("{tag}-off"), LIMIT).unwrap();
    let mut p = spawn_with(
        &config(driver, false),
        Launch {
            cgroup: Some(off.dir.clone()),
            ..Launch::default()
        },
    );
    let held = burst(&mut p, CLIENTS);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(held);
    let status = status.expect("unprotected proxy survived the burst: the limit was not reached");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
}
