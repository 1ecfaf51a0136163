//! The `outrigger` command: `run`, `check`, `demo`. Logging and exit codes
//! live here; everything else is in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use outrigger::backends::{self, BackendKind};
use outrigger::config::{self, ConfigErrors, IoMode, Snapshot};
use outrigger::control::{Options, Proxy};

#[derive(Parser, Debug)]
#[command(
    name = "outrigger",
    version,
    about = "A thread-per-core sidecar proxy on io_uring"
)]
struct Cli {
    /// Log filter: error, warn, info, debug, trace, or a tracing directive
    /// list. Overrides RUST_LOG; defaults to RUST_LOG, else "info".
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy until SIGINT or SIGTERM; SIGHUP, a change of the
    /// config file or POST /reload on the admin API reloads it.
    Run {
        /// The config file (`--config FILE`, `-c FILE` or just `FILE`).
        #[arg(long, short, required_unless_present = "file", conflicts_with = "file")]
        config: Option<PathBuf>,
        /// The config file, as `outrigger check` takes it.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// Do not watch the config file's directory for changes.
        #[arg(long)]
        no_watch: bool,
        /// After `--`: an app to start once the proxy is ready. SIGTERM and
        /// SIGINT go to the app; when it exits the proxy drains and exits
        /// with the app's status (a Job's pod completes).
        #[arg(last = true)]
        app: Vec<String>,
    },
    /// Exit 0 once the proxy's admin API says it is ready (GET /ready is
    /// 200), 1 when `--timeout` passes first.
    WaitReady {
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
    /// Print (default) or apply the nat rules that send a pod's TCP through
    /// the proxy (iptables-restore input for IPv4 and IPv6, or nftables).
    Iptables {
        /// Install the rules (needs NET_ADMIN; idempotent).
        #[arg(long)]
        apply: bool,
        /// Remove the rules installed by --apply.
        #[arg(long, conflicts_with = "apply")]
        cleanup: bool,
        /// nftables instead of iptables.
        #[arg(long)]
        nft: bool,
        /// The UID the proxy runs as: its own traffic is not redirected.
        #[arg(long, default_value_t = 1337)]
        proxy_uid: u32,
        #[arg(long, default_value_t = 15001)]
        outbound_port: u16,
        #[arg(long, default_value_t = 15006)]
        inbound_port: u16,
        /// Comma-separated ports whose outbound connections are not redirected.
        #[arg(long, value_delimiter = ',')]
        exclude_outbound_ports: Vec<u16>,
        /// Comma-separated ports whose inbound connections are not redirected.
        #[arg(long, value_delimiter = ',')]
        exclude_inbound_ports: Vec<u16>,
        /// Comma-separated CIDRs (v4 or v6) whose outbound connections are not redirected.
        #[arg(long, value_delimiter = ',')]
        exclude_outbound_cidrs: Vec<String>,
        /// Comma-separated inbound ports to redirect (default: all).
        #[arg(long, value_delimiter = ',')]
        include_inbound_ports: Vec<u16>,
    },
    /// Validate a config file without binding anything.
    Check {
        /// The config file (`FILE`, or `--config FILE` as `run` takes it).
        #[arg(value_name = "FILE", required_unless_present = "config")]
        file: Option<PathBuf>,
        #[arg(long, short, conflicts_with = "file")]
        config: Option<PathBuf>,
    },
    /// Run the proxy on the embedded demo config with its own demo upstreams.
    Demo {
        /// The I/O driver: auto (the demo config's own setting), io_uring
        /// or epoll.
        #[arg(long, default_value = "auto", value_parser = parse_io)]
        io: IoMode,
        /// The admin API's address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
        /// First port of the demo: TCP echo listener on N, HTTP on N+80,
        /// upstreams on N+9001.. (default 10000).
        #[arg(long, default_value_t = DEMO_PORT_BASE, value_parser = clap::value_parser!(u16).range(1024..=56000))]
        port_base: u16,
    },
    /// Certificates for trying things out.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Write a throwaway trust domain into DIR: bundle.pem (its CA, valid
    /// a year), ca.key (its key, mode 0600) and two SVIDs with keys (0600),
    /// frontend.pem/.key and orders.pem/.key, valid for 30 days, for
    /// configs/mesh-outbound.toml and configs/mesh-inbound.toml. Never use
    /// them outside a demo.
    Demo {
        dir: PathBuf,
        #[arg(long, default_value = "example.org")]
        trust_domain: String,
    },
    /// Issue one more SVID from a CA (the demo's bundle.pem and ca.key, say):
    /// OUT.pem and OUT.key (0600), for practising rotation.
    Issue {
        /// The CA certificate (PEM).
        #[arg(long)]
        ca: PathBuf,
        /// The CA's private key (PEM).
        #[arg(long)]
        ca_key: PathBuf,
        /// The SPIFFE ID, e.g. spiffe://example.org/ns/shop/sa/orders.
        #[arg(long)]
        id: String,
        /// Validity in days.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Where to write: OUT.pem and OUT.key.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    let result = match cli.command {
        Command::Run {
            config,
            file,
            no_watch,
            app,
        } => run(&config.or(file).unwrap_or_default(), !no_watch, &app),
        Command::WaitReady { admin, timeout } => Ok(
            if outrigger::sidecar::lifecycle::wait_ready(admin, timeout) {
                ExitCode::SUCCESS
            } else {
                eprintln!("outrigger: {admin} not ready after {timeout:?}");
                ExitCode::FAILURE
            },
        ),
        Command::Iptables {
            apply,
            cleanup,
            nft,
            proxy_uid,
            outbound_port,
            inbound_port,
            exclude_outbound_ports,
            exclude_inbound_ports,
            exclude_outbound_cidrs,
            include_inbound_ports,
        } => {
            let rules = outrigger::sidecar::iptables::Rules {
                proxy_uid,
                outbound_port,
                inbound_port,
                exclude_outbound_ports,
                exclude_inbound_ports,
                exclude_outbound_cidrs,
                include_inbound_ports,
            };
            iptables(&rules, apply, cleanup, nft)
        }
        Command::Check { file, config } => Ok(check(&file.or(config).unwrap_or_default())),
        Command::Demo {
            io,
            admin,
            port_base,
        } => demo(io, admin, port_base),
        Command::Certs { command } => match command {
            CertsCommand::Demo { dir, trust_domain } => {
                outrigger::tls::demo::write(&dir, &trust_domain)
            }
            CertsCommand::Issue {
                ca,
                ca_key,
                id,
                days,
                out,
            } => outrigger::tls::demo::issue(&ca, &ca_key, &id, days, &out),
        }
        .map(|written| {
            for f in written {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("outrigger: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    }
    .unwrap_or_else(|e| {
        eprintln!("outrigger: invalid log level ({e}); using \"info\"");
        EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_thread_names(true)
        .init();
}

fn print_errors(errors: &ConfigErrors) {
    for e in &errors.0 {
        eprintln!("error: {e}");
    }
}

fn check(file: &Path) -> ExitCode {
    match config::load(file) {
        Ok(snapshot) => {
            for w in snapshot.warnings() {
                eprintln!("warning: {}: {w}", file.display());
            }
            println!("{}: ok: {}", file.display(), snapshot.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(&errors);
            eprintln!("{}: {} error(s)", file.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}

fn parse_io(s: &str) -> Result<IoMode, String> {
    match s {
        "auto" => Ok(IoMode::Auto),
        "io_uring" => Ok(IoMode::IoUring),
        "epoll" => Ok(IoMode::Epoll),
        other => Err(format!(
            "unknown I/O driver {other:?}: one of auto, io_uring, epoll"
        )),
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    outrigger::config::value::parse_duration(s)
}

fn iptables(
    rules: &outrigger::sidecar::iptables::Rules,
    apply: bool,
    cleanup: bool,
    nft: bool,
) -> anyhow::Result<ExitCode> {
    rules.validate().map_err(anyhow::Error::msg)?;
    if cleanup {
        outrigger::sidecar::iptables::cleanup(nft).map_err(anyhow::Error::msg)?;
        println!("interception rules removed");
    } else if apply {
        rules.apply(nft).map_err(anyhow::Error::msg)?;
        println!("interception rules applied");
    } else {
        print!("{}", rules.script(nft));
    }
    Ok(ExitCode::SUCCESS)
}

fn run(file: &Path, watch: bool, app: &[String]) -> anyhow::Result<ExitCode> {
    let snapshot = match config::load(file) {
        Ok(s) => s,
        Err(errors) => {
            print_errors(&errors);
            return Ok(ExitCode::FAILURE);
        }
    };
    let options = Options {
        config_path: Some(file.to_path_buf()),
        watch,
    };
    if app.is_empty() {
        serve(snapshot, options)
    } else {
        serve_app(snapshot, options, app)
    }
}

/// `run -- APP`: the proxy first, then the app once the proxy is ready;
/// SIGTERM/SIGINT go to the app, SIGHUP reloads the proxy; when the app
/// exits, the proxy drains and the process exits with the app's status.
fn serve_app(snapshot: Snapshot, options: Options, app: &[String]) -> anyhow::Result<ExitCode> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("cannot install signal handlers")?;
    let proxy = std::sync::Arc::new(Proxy::launch(snapshot, options, None)?);
    // Launch returns once every worker serves every listener: ready.
    let mut child = std::process::Command::new(&app[0])
        .args(&app[1..])
        .spawn()
        .with_context(|| format!("cannot start {}", app[0]))?;
    let pid = child.id() as libc::pid_t;
    tracing::info!(app = %app[0], pid, "proxy ready; app started");
    let handle = signals.handle();
    let reloader = proxy.clone();
    let forwarder = std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == SIGHUP {
                let _ = reloader.reload();
            } else {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(pid, sig) };
            }
        }
    });
    let status = child.wait().context("waiting for the app")?;
    handle.close();
    let _ = forwarder.join();
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(1)
    });
    tracing::info!(code, "app exited; draining");
    proxy.drain_because("app exited");
    let proxy =
        std::sync::Arc::try_unwrap(proxy).map_err(|_| anyhow::anyhow!("proxy still shared"))?;
    let _ = proxy.wait();
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn serve(snapshot: Snapshot, options: Options) -> anyhow::Result<ExitCode> {
    tracing::info!(config = %snapshot.source.display(), summary = %snapshot.summary(), "starting");
    let signals =
        outrigger::control::SignalWatch::install().context("cannot install signal handlers")?;
    let proxy = Proxy::launch(snapshot, options, Some(signals))?;
    let code = proxy.wait();
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The demo config's lowest port; `--port-base` moves every demo port by
/// the same amount.
const DEMO_PORT_BASE: u16 = 10000;

/// The embedded demo config with its ports moved to `base` and the admin
/// API on `admin`.
fn demo_config(admin: std::net::SocketAddr, base: u16) -> String {
    let shift = i32::from(base) - i32::from(DEMO_PORT_BASE);
    let mut text = config::DEMO_CONFIG.replace(
        "address = \"127.0.0.1:9901\"",
        &format!("address = \"{admin}\""),
    );
    for port in [10000, 10080, 19001, 19002, 19081, 19082] {
        text = text.replace(
            &format!("127.0.0.1:{port}\""),
            &format!("127.0.0.1:{}\"", port + shift),
        );
    }
    text
}

fn demo(io: IoMode, admin: std::net::SocketAddr, port_base: u16) -> anyhow::Result<ExitCode> {
    let mut snapshot = config::compile(
        Path::new("<embedded configs/demo.toml>"),
        &demo_config(admin, port_base),
    )
    .map_err(|e| anyhow::anyhow!("the embedded demo config is invalid:\n{e}"))?;
    if io != IoMode::Auto {
        snapshot.runtime.io = io;
    }
    let driver = outrigger::worker::driver::choose(snapshot.runtime.io)?;
    // Each cluster's endpoints get a demo upstream: "echo" a TCP echo, the
    // others an HTTP server answering its cluster's name.
    let mut upstreams = Vec::new();
    for cluster in snapshot.clusters.values() {
        for ep in &cluster.endpoints {
            let kind = match cluster.name.as_str() {
                "echo" => BackendKind::Echo,
                name => BackendKind::Http(backends::HttpBackend::named(name)),
            };
            let b = backends::start(kind, ep.address, 1, driver).with_context(|| {
                format!(
                    "cannot start the demo upstream on {} (is another demo running? \
                     --port-base moves the demo's ports)",
                    ep.address
                )
            })?;
            upstreams.push(b);
        }
    }
    let addr = |name: &str| {
        snapshot
            .listener(name)
            .map(|l| l.address)
            .with_context(|| format!("demo config lacks the {name} listener"))
    };
    let (echo, web) = (addr("echo")?, addr("web")?);
    tracing::info!(summary = %snapshot.summary(), "starting the demo");
    // Everything is bound before the banner: a port in use fails here,
    // with nothing printed that would not work.
    let signals =
        outrigger::control::SignalWatch::install().context("cannot install signal handlers")?;
    let proxy = Proxy::launch(snapshot, Options::default(), Some(signals)).map_err(|e| {
        anyhow::anyhow!("{e} (is another demo running? --admin and --port-base move the demo)")
    })?;
    let admin = proxy.admin_addr();
    println!(
        "\nOutrigger demo: {n} upstreams on loopback, the proxy in front.\n\n\
         HTTP on {web}: routes in configs/demo.toml. Try, in another terminal:\n\n  \
         curl -si http://{web}/healthz                  # answered by the proxy itself\n  \
         curl -s http://{web}/                          # 90% \"v1\", 10% \"v2\"\n  \
         for i in $(seq 100); do curl -s http://{web}/; echo; done | sort | uniq -c\n  \
         curl -s -H 'x-version: 2' http://{web}/        # pinned to \"v2\" by a header\n  \
         curl -si http://{web}/anything -H 'x-debug: 1' # see x-route and the x-echo-* headers\n\n\
         TCP on {echo}: an echo service behind a round-robin L4 proxy:\n\n  \
         printf 'hello through outrigger\\n' | nc -q1 {eip} {eport}\n  \
         python3 -c \"import socket; s=socket.create_connection(('{eip}',{eport})); s.sendall(b'hi\\n'); s.shutdown(1); print(s.recv(100))\"\n\n\
         Admin API on {admin}:\n\n  \
         curl -s http://{admin}/stats                   # counters and latency percentiles\n  \
         curl -s http://{admin}/metrics | grep route    # Prometheus\n  \
         curl -s http://{admin}/clusters                # endpoints, per worker\n\n\
         Access log lines (text format) follow on stdout. Press Ctrl-C to stop.\n",
        n = upstreams.len(),
        eip = echo.ip(),
        eport = echo.port(),
    );
    let code = proxy.wait();
    drop(upstreams);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
