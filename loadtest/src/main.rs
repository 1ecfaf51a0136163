//! `outrigger-load`: Outrigger's bundled load tester.
//!
//! Generators: `http` (HTTP/1.1 keep-alive, or HTTP/2 with `--h2` and
//! `--streams`; closed loop or open loop at a fixed rate with
//! coordinated-omission correction) and `tcp` (echo ping-pong, echo
//! transfers, one-way bulk). Test upstreams: `serve echo|sink|http`
//! (`http --h2 [--grpc]` for HTTP/2). Side-by-side comparisons: `compare`.

mod compare;
mod h2;
mod http;
mod mesh;
mod output;
mod pacer;
mod plot;
mod proxies;
mod report;
mod tcp;
mod tls;
mod xds_bench;
mod xds_plane;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use outrigger::backends::{self, BackendKind};
use outrigger::config::IoMode;

#[derive(Parser, Debug)]
#[command(
    name = "outrigger-load",
    version,
    about = "Load generator and test upstreams for Outrigger"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// HTTP/1.1 load against URL (closed loop, or open loop with -R).
    Http(http::HttpArgs),
    /// Raw TCP load against ADDR.
    Tcp(tcp::TcpArgs),
    /// One HTTP workload against the upstream directly and through
    /// outrigger, nginx and haproxy, side by side.
    Compare(compare::CompareArgs),
    /// Serve a generated xDS config (ADS) for the discovery benchmark.
    XdsPlane(xds_bench::XdsPlaneArgs),
    /// Serve a test upstream until Ctrl-C.
    Serve {
        #[arg(value_enum)]
        kind: ServeKind,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        addr: SocketAddr,
        /// Threads (one runtime each, SO_REUSEPORT).
        #[arg(long, short = 't', default_value_t = 1)]
        threads: usize,
        /// I/O driver: auto, io-uring or epoll.
        #[arg(long, value_enum, default_value = "auto")]
        io: Io,
        /// http: response body size (default: the server's name).
        #[arg(long, value_parser = parse_size)]
        body_size: Option<usize>,
        /// http: wait this long before each response ("10ms").
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        delay: Duration,
        /// http: the name sent in `x-backend`.
        #[arg(long, default_value = "outrigger-load")]
        name: String,
        /// http: the status of every response (503 makes a failing upstream).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(200..=599))]
        status: u16,
        /// http: serve HTTP/2 with prior knowledge instead of HTTP/1.1.
        #[arg(long)]
        h2: bool,
        /// http --h2: answer like a unary gRPC method (`content-type:
        /// application/grpc`, `grpc-status: 0` trailers).
        #[arg(long)]
        grpc: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ServeKind {
    /// Write back every byte.
    Echo,
    /// Read and discard.
    Sink,
    /// HTTP/1.1 keep-alive server with a fixed response.
    Http,
}

/// I/O driver choice on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Io {
    Auto,
    IoUring,
    Epoll,
}

impl Io {
    /// The driver to run on.
    pub fn driver(self) -> anyhow::Result<outrigger::worker::Driver> {
        let mode = match self {
            Io::Auto => IoMode::Auto,
            Io::IoUring => IoMode::IoUring,
            Io::Epoll => IoMode::Epoll,
        };
        Ok(outrigger::worker::driver::choose(mode)?)
    }
}

/// Parses "64", "64KiB", "16MiB", "1GiB" (also k/m/g as binary units).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("invalid size \"{s}\""))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        _ => return Err(format!("invalid size unit in \"{s}\"")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size \"{s}\" too large"))
}

/// Parses durations like the proxy config ("10s", "500ms").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    outrigger::config::value::parse_duration(s)
}

/// `http`'s load: HTTP/2 with `--h2`, else HTTP/1.1.
pub(crate) fn http_load(args: http::HttpArgs) -> anyhow::Result<report::Report> {
    if args.h2 {
        h2::run(args)
    } else {
        http::run(args)
    }
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Http(args) => {
            let out = args.output.clone();
            let report = http_load(args)?;
            finish(&report, &out)
        }
        Cmd::Compare(args) => compare::run(args).map(|()| ExitCode::SUCCESS),
        Cmd::XdsPlane(args) => xds_bench::run(args).map(|()| ExitCode::SUCCESS),
        Cmd::Tcp(args) => {
            let out = args.output.clone();
            let report = tcp::run(args)?;
            finish(&report, &out)
        }
        Cmd::Serve {
            kind,
            addr,
            threads,
            io,
            body_size,
            delay,
            name,
            status,
            h2,
            grpc,
        } => {
            if h2 {
                anyhow::ensure!(matches!(kind, ServeKind::Http), "--h2 serves http only");
                let body = match body_size {
                    Some(n) => bytes::Bytes::from(vec![b'x'; n]),
                    None => bytes::Bytes::from(name.clone().into_bytes()),
                };
                let bound = h2::serve(addr, threads, io.driver()?, body, grpc)
                    .with_context(|| format!("cannot serve on {addr}"))?;
                println!("serving HTTP/2 on {bound} with {threads} thread(s); Ctrl-C to stop");
                wait_for_ctrl_c();
                return Ok(ExitCode::SUCCESS);
            }
            anyhow::ensure!(!grpc, "--grpc needs --h2");
            let backend = match kind {
                ServeKind::Echo => BackendKind::Echo,
                ServeKind::Sink => BackendKind::Sink,
                ServeKind::Http => BackendKind::Http(backends::HttpBackend {
                    name,
                    body_size,
                    delay,
                    status,
                }),
            };
            let b = backends::start(backend, addr, threads, io.driver()?)
                .with_context(|| format!("cannot serve on {addr}"))?;
            println!(
                "serving {kind:?} on {} with {threads} thread(s); Ctrl-C to stop",
                b.addr
            );
            wait_for_ctrl_c();
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Print and write the report; the exit status says whether the run
/// measured anything: 1 when no operation succeeded, or (with
/// `--fail-on-errors`) when any failed.
fn finish(report: &report::Report, out: &OutputArgs) -> anyhow::Result<ExitCode> {
    print!("{}", report.summary());
    out.write(report)?;
    if report.operations == 0 {
        eprintln!("outrigger-load: no operation succeeded; nothing was measured");
        return Ok(ExitCode::FAILURE);
    }
    let failed: u64 = report.errors.values().sum();
    if out.fail_on_errors && failed > 0 {
        eprintln!("outrigger-load: {failed} operation(s) failed (--fail-on-errors)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Load shape shared by the generators.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    #[arg(short = 'c', long, default_value_t = 1)]
    pub connections: usize,
    #[arg(short = 't', long, default_value_t = 1)]
    pub threads: usize,
    /// Measured duration (http: ignored with -n).
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before measuring starts (not counted).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Pin generator threads to these cores (comma list), e.g. "0".
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    #[arg(long, value_enum, default_value = "auto")]
    pub io: Io,
}

impl LoadArgs {
    /// The core generator thread `t` is pinned to, if any.
    pub fn core_for(&self, t: usize) -> Option<usize> {
        self.cpus.get(t % self.cpus.len().max(1)).copied()
    }

    /// Start generator thread `t` (`load-{t}`, pinned per `--cpus`) running
    /// `f` on its own runtime.
    pub fn spawn<F, Fut>(
        &self,
        t: usize,
        driver: outrigger::worker::Driver,
        f: F,
    ) -> std::io::Result<std::thread::JoinHandle<std::io::Result<Fut::Output>>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future + 'static,
        Fut::Output: Send + 'static,
    {
        let core = self.core_for(t);
        std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || {
                if let Some(c) = core {
                    core_affinity::set_for_current(core_affinity::CoreId { id: c });
                }
                outrigger::worker::driver::block_on(driver, 1024, f)
            })
    }
}

/// Output files shared by the generators.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OutputArgs {
    /// Write the whole report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an HdrHistogram interval log (one histogram per second, µs).
    #[arg(long)]
    pub hdr_log: Option<PathBuf>,
    /// Draw latency by percentile and throughput per second as SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Exit 1 when any operation failed (connect, timeout, I/O or protocol
    /// errors), not only when none succeeded.
    #[arg(long)]
    pub fail_on_errors: bool,
}

impl OutputArgs {
    fn write(&self, report: &report::Report) -> anyhow::Result<()> {
        output::write_all(
            report,
            self.json.as_deref(),
            self.hdr_log.as_deref(),
            self.plot.as_deref(),
        )
    }
}

/// The servers run on their own threads; the default SIGINT/SIGTERM action ends the process.
fn wait_for_ctrl_c() {
    loop {
        std::thread::park();
    }
}
