//! The proxies `compare` runs: finding them, starting them pinned with
//! configs written here, waiting until they serve, and reading their CPU
//! time and peak RSS from /proc.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Where and how the proxies under comparison run.
pub(crate) struct Layout<'a> {
    /// CPUs each proxy is pinned to (one worker or thread per CPU).
    pub proxy_cpus: &'a [usize],
    /// Serve HTTP/2 to the generator.
    pub h2: bool,
    /// The outrigger binary (default: the one next to this program).
    pub outrigger: Option<&'a Path>,
}

/// A proxy process under test.
pub(crate) struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub(crate) fn find(name: &str, extra: &[&str]) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .chain(extra.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// Pin a child to `cpus` before it execs.
fn pinned(cmd: &mut Command, cpus: &[usize]) {
    let cpus = cpus.to_vec();
    // SAFETY: sched_setaffinity is async-signal-safe; the set lives on the stack.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in &cpus {
                libc::CPU_SET(c, &mut set);
            }
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub(crate) fn pin_current(cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: as above, on this thread; threads spawned later inherit it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        anyhow::ensure!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0,
            "cannot pin to cores {cpus:?}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

pub(crate) fn spawn(
    name: &str,
    mut cmd: Command,
    cpus: &[usize],
    addr: SocketAddr,
) -> anyhow::Result<Proxy> {
    pinned(&mut cmd, cpus);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Proxy { child, addr })
}

/// The outrigger binary: `--outrigger`, else the one next to this program.
pub(crate) fn outrigger_binary(args: &Layout<'_>) -> anyhow::Result<PathBuf> {
    let bin = match args.outrigger {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("outrigger"),
    };
    anyhow::ensure!(
        bin.is_file(),
        "no outrigger binary at {} (build it, or pass --outrigger)",
        bin.display()
    );
    Ok(bin)
}

pub(crate) fn start_outrigger(
    args: &Layout<'_>,
    dir: &Path,
    up: SocketAddr,
) -> anyhow::Result<Proxy> {
    let bin = outrigger_binary(args)?;
    let addr = free_port()?;
    let cfg = dir.join("outrigger.toml");
    std::fs::write(
        &cfg,
        format!(
            "[runtime]\nworkers = {w}\npin_workers = true\n[admin]\naddress = \"127.0.0.1:0\"\n[listeners.web]\naddress = \"{addr}\"\nprotocol = \"http\"\nroutes = \"main\"\n[[routes.main]]\nmatch.path_prefix = \"/\"\ncluster = \"up\"\n[clusters.up]\nendpoints = [\"{up}\"]\nmax_idle_connections = 1024\n",
            w = args.proxy_cpus.len().max(1)
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--no-watch", "--log-level", "warn", "--config"])
        .arg(&cfg);
    spawn("outrigger", cmd, args.proxy_cpus, addr)
}

pub(crate) fn start_nginx(args: &Layout<'_>, dir: &Path, up: SocketAddr) -> anyhow::Result<Proxy> {
    let addr = free_port()?;
    let server = format!(
        "server {{ listen {addr} reuseport{h2}; location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}",
        h2 = if args.h2 { " http2" } else { "" },
    );
    let cmd = nginx_command(
        &dir.join("nginx"),
        args.proxy_cpus.len().max(1),
        up,
        &server,
    )?;
    spawn("nginx", cmd, args.proxy_cpus, addr)
}

/// nginx with `workers` worker processes, its files in `d`: an `http`
/// block with upstream `up` (`upstream`, keep-alive) and `server`.
pub(crate) fn nginx_command(
    d: &Path,
    workers: usize,
    upstream: SocketAddr,
    server: &str,
) -> anyhow::Result<Command> {
    let bin = find("nginx", &["/usr/sbin/nginx"]).context("nginx is not installed")?;
    std::fs::create_dir_all(d)?;
    let d = d.display().to_string();
    let conf = format!(
        "daemon off; master_process {master}; worker_processes {workers}; pid {d}/pid; error_log stderr error;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;
  upstream up {{ server {upstream}; keepalive 1024; }}
  {server} }}
",
        master = if workers == 1 { "off" } else { "on" },
    );
    let path = format!("{d}/nginx.conf");
    std::fs::write(&path, conf)?;
    let mut cmd = Command::new(bin);
    cmd.args(["-p", &d, "-c", &path]);
    Ok(cmd)
}

pub(crate) fn start_haproxy(
    args: &Layout<'_>,
    dir: &Path,
    up: SocketAddr,
) -> anyhow::Result<Proxy> {
    let bin = find("haproxy", &["/usr/sbin/haproxy"]).context("haproxy is not installed")?;
    let addr = free_port()?;
    let conf = format!(
        "global\n  nbthread {n}\n  maxconn 8192\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\nfrontend web\n  bind {addr}{h2}\n  default_backend up\nbackend up\n  server s1 {up}\n",
        n = args.proxy_cpus.len().max(1),
        h2 = if args.h2 { " proto h2" } else { "" }
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    let mut cmd = Command::new(bin);
    cmd.arg("-db").arg("-f").arg(&path);
    spawn("haproxy", cmd, args.proxy_cpus, addr)
}

/// Wait until `addr` answers an HTTP request (up to 10 s).
pub(crate) fn wait_ready(addr: SocketAddr, h2: bool) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = (|| -> std::io::Result<bool> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            if h2 {
                // The preface and an empty SETTINGS; a SETTINGS frame back.
                s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")?;
                let mut head = [0u8; 9];
                s.read_exact(&mut head)?;
                return Ok(head[3] == 4);
            }
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)?;
            Ok(out.starts_with(b"HTTP/1.1 200"))
        })();
        if matches!(ok, Ok(true)) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "no 200 from {addr} within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `pid` and its descendants (nginx's and haproxy's workers).
pub(crate) fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((p, ppid))
        })
        .collect();
    while i < out.len() {
        let parent = out[i];
        out.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    out
}

/// User + system CPU seconds of these processes (all their threads).
pub(crate) fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ut: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some((ut + st) / tick)
        })
        .sum()
}

/// Peak resident set (VmHWM), summed over the processes, in KiB.
pub(crate) fn peak_rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}
