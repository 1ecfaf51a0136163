//! The `outrigger` command: `run`, `check`, `demo`. Logging and exit codes
//! live here; everything else is in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use outrigger::backends::{self, BackendKind};
use outrigger::config::{self, ConfigErrors, Snapshot};
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
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Do not watch the config file's directory for changes.
        #[arg(long)]
        no_watch: bool,
    },
    /// Validate a config file without binding anything.
    Check {
        /// The config file.
        file: PathBuf,
    },
    /// Run the proxy on the embedded demo config with its own demo upstreams.
    Demo,
    /// Certificates for trying things out.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Write a throwaway trust domain into DIR: bundle.pem (its CA) and two
    /// SVIDs with keys, frontend.pem/.key and orders.pem/.key, valid for
    /// 30 days, for configs/mesh-outbound.toml and configs/mesh-inbound.toml.
    /// The CA's key is not kept. Never use them outside a demo.
    Demo {
        dir: PathBuf,
        #[arg(long, default_value = "example.org")]
        trust_domain: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    let result = match cli.command {
        Command::Run { config, no_watch } => run(&config, !no_watch),
        Command::Check { file } => Ok(check(&file)),
        Command::Demo => demo(),
        Command::Certs {
            command: CertsCommand::Demo { dir, trust_domain },
        } => outrigger::tls::demo::write(&dir, &trust_domain).map(|written| {
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

fn run(file: &Path, watch: bool) -> anyhow::Result<ExitCode> {
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
    serve(snapshot, options)
}

fn serve(snapshot: Snapshot, options: Options) -> anyhow::Result<ExitCode> {
    tracing::info!(config = %snapshot.source.display(), summary = %snapshot.summary(), "starting");
    let signals =
        outrigger::control::SignalWatch::install().context("cannot install signal handlers")?;
    let proxy = Proxy::launch(snapshot, options, Some(signals))?;
    let code = proxy.wait();
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn demo() -> anyhow::Result<ExitCode> {
    let snapshot = config::compile(
        Path::new("<embedded configs/demo.toml>"),
        config::DEMO_CONFIG,
    )
    .map_err(|e| anyhow::anyhow!("the embedded demo config is invalid:\n{e}"))?;
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
                    "cannot start the demo upstream on {} (is another demo running?)",
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
        admin = snapshot.admin.address,
        eip = echo.ip(),
        eport = echo.port(),
    );
    let code = serve(snapshot, Options::default())?;
    drop(upstreams);
    Ok(code)
}
