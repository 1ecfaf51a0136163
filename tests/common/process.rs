//! The real `outrigger` binary as a child process: spawned on a config
//! (with resource limits, a seccomp filter or a cgroup when asked), its
//! addresses read from its start-up log, its log lines kept.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Log lines after start-up.
    pub lines: std::sync::mpsc::Receiver<String>,
    /// Log lines up to the listeners' addresses.
    pub startup: Vec<String>,
    pub config: tempfile_path::TempPath,
}

mod tempfile_path {
    /// A file removed on drop.
    pub struct TempPath(pub std::path::PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the binary on `config`, wait for its "listening" log line.
pub fn spawn(config: &str, nofile: Option<u64>) -> Proxy {
    spawn_with(
        config,
        Launch {
            nofile,
            ..Launch::default()
        },
    )
}

/// How the child is started, beyond its config.
#[derive(Default)]
pub struct Launch {
    /// RLIMIT_NOFILE for the child.
    pub nofile: Option<u64>,
    /// A seccomp filter that makes io_uring_setup fail with EPERM.
    pub forbid_io_uring: bool,
    /// A cgroup directory (v1 or v2) the child joins before exec.
    pub cgroup: Option<std::path::PathBuf>,
    /// Environment variables for the child.
    pub env: Vec<(&'static str, String)>,
}

/// A seccomp filter for the child alone: io_uring_setup (425 on x86_64
/// and aarch64) fails with EPERM, as in a container whose profile forbids
/// io_uring; everything else is allowed.
pub fn deny_io_uring() -> std::io::Result<()> {
    let filter = [
        // Load the system call number (seccomp_data.nr, offset 0).
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // io_uring_setup? then the next instruction, else skip it.
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: 425,
        },
        // SECCOMP_RET_ERRNO | EPERM.
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x0005_0000 | libc::EPERM as u32,
        },
        // SECCOMP_RET_ALLOW.
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: plain prctl calls on this (child) process; `prog` and
    // `filter` live across the call, which copies them.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog as libc::c_ulong,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

pub fn spawn_with(config: &str, launch: Launch) -> Proxy {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "outrigger-test-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    // Tests run in parallel: each proxy's admin API gets a port of its own.
    let config = if config.contains("[admin]") {
        config.to_string()
    } else {
        format!("[admin]\naddress = \"127.0.0.1:0\"\n{config}")
    };
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outrigger"));
    let level = std::env::var("OUTRIGGER_TEST_LOG").unwrap_or_else(|_| "info".into());
    cmd.args(["run", "--log-level", &level, "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    for (k, v) in &launch.env {
        cmd.env(k, v);
    }
    if let Some(n) = launch.nofile {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child yet.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    if launch.forbid_io_uring {
        // SAFETY: prctl only, in the child before exec.
        unsafe {
            cmd.pre_exec(deny_io_uring);
        }
    }
    if let Some(dir) = &launch.cgroup {
        let procs = std::ffi::CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
            .expect("cgroup path without NUL");
        // SAFETY: open/write/close only (async-signal-safe), on a path
        // built before fork. Writing "0" moves the writing process.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let wrote = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if wrote != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut raw = Vec::new();
        // Keep draining until EOF: a full pipe would block the proxy's logging.
        while reader.read_until(b'\n', &mut raw).unwrap_or(0) > 0 {
            let line = String::from_utf8_lossy(&raw).trim_end().to_string();
            raw.clear();
            eprintln!("[proxy] {line}");
            let _ = tx.send(line);
        }
    });
    let (mut addr, mut admin) = (None, None);
    let mut startup = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while addr.is_none() || admin.is_none() {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("proxy reports its listener and admin addresses");
        startup.push(line.clone());
        let Some(a) = line.split("address=").nth(1) else {
            continue;
        };
        let a: SocketAddr = a.trim().parse().unwrap();
        if line.contains("admin API listening") {
            admin = Some(a);
        } else if line.contains("listening") && addr.is_none() {
            addr = Some(a);
        }
    }
    let (addr, admin) = (addr.unwrap(), admin.unwrap());
    Proxy {
        child,
        addr,
        admin,
        lines,
        startup,
        config: tempfile_path::TempPath(path),
    }
}

pub fn signal(p: &Proxy, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(p.child.id() as i32, sig) }, 0);
}

pub fn wait_exit(p: &mut Proxy, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = p.child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Wait for a log line containing `needle`.
pub fn log_line(p: &Proxy, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let line = p
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    }
}
