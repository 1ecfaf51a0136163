//! `outrigger-load compare`: one HTTP workload against several targets side
//! by side: the upstream directly, and through Outrigger, nginx and HAProxy
//! (each when installed), with configs written here. The proxies run pinned
//! to `--proxy-cpus`; the upstream and the generator to `--load-cpus`. Runs
//! interleave (A B C A B C …) so that drift on a noisy host hits every
//! target alike; medians and ratios to the direct run are reported as a
//! markdown table and JSON, with each proxy's CPU time per request (from
//! /proc) and peak RSS (VmHWM). `--topology mesh` puts a pair of sidecars
//! of each proxy in the path instead of one (`mesh`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use outrigger::backends::{self, BackendKind, HttpBackend};
use serde::Serialize;

use crate::http::HttpArgs;
use crate::proxies::{
    cpu_seconds, peak_rss_kib, pin_current, process_tree, start_haproxy, start_nginx,
    start_outrigger, wait_ready, Layout, Proxy,
};
use crate::{parse_duration, parse_size, Io, LoadArgs, OutputArgs};

/// `outrigger-load compare`.
#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Targets, in run order: direct, outrigger, nginx, haproxy. Proxies not
    /// installed are skipped with a note.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,outrigger,nginx,haproxy"
    )]
    pub targets: Vec<String>,
    /// Rounds; each round runs every target once [default: 3; 5 with --full].
    #[arg(long)]
    pub runs: Option<usize>,
    /// Measured time of one run [default: 3s; 5s with --full].
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Load sent to each target before its first run, not counted
    /// [default: 1s; 2s with --full].
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// The long comparison for figures you publish: 5 rounds of 5 s after
    /// 2 s of warm-up per target (about 2.5 minutes for four targets),
    /// instead of a first look of 3 rounds of 3 s after 1 s (under a minute).
    #[arg(long)]
    pub full: bool,
    #[arg(short = 'c', long, default_value_t = 64)]
    pub connections: usize,
    #[arg(short = 't', long, default_value_t = 1)]
    pub threads: usize,
    /// Open loop at this rate instead of closed loop.
    #[arg(short = 'R', long)]
    pub rate: Option<f64>,
    /// Response body size of the upstream.
    #[arg(long, default_value = "128", value_parser = parse_size)]
    pub body_size: usize,
    /// Cores for the proxy under test (its worker count is their number).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub proxy_cpus: Vec<usize>,
    /// Cores for the upstream and the generator.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub load_cpus: Vec<usize>,
    /// The outrigger binary (default: next to this one).
    #[arg(long)]
    pub outrigger: Option<PathBuf>,
    /// Write the table as markdown here too.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Write every run and the medians as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw every target's latency by percentile (all rounds merged) on one
    /// SVG chart.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub io: Io,
    /// HTTP/2 (prior knowledge) to the proxies, HTTP/1.1 behind them; the
    /// HTTP/1.1 upstream cannot be a direct target then.
    #[arg(long)]
    pub h2: bool,
    /// With --h2: concurrent streams per connection.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// `single`: each proxy alone in front of the upstream. `mesh`: a pair
    /// of sidecars of each proxy, client -> A -> mutual TLS -> B -> app
    /// (Outrigger and HAProxy speak HTTP/2 between them, nginx HTTP/1.1
    /// with keep-alive); CPU is the pair's, and with `direct` the table
    /// shows the latency each pair adds.
    #[arg(long, value_enum, default_value = "single")]
    pub topology: Topology,
}

/// What stands between the generator and the upstream.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    Single,
    Mesh,
}

/// One run against one target.
#[derive(Debug, Clone, Serialize)]
struct Run {
    requests_per_second: f64,
    p50_us: u64,
    p99_us: u64,
    p99_9_us: u64,
    errors: u64,
    non_2xx: u64,
    proxy_cpu_us_per_request: Option<f64>,
    /// Per process of the target (a mesh pair: sidecar A, sidecar B).
    sidecar_cpu_us_per_request: Vec<f64>,
    generator_cpu_us_per_request: f64,
    generator_saturated: bool,
}

/// Medians over a target's runs.
#[derive(Debug, Clone, Serialize)]
struct Summary {
    target: String,
    requests_per_second: f64,
    ratio_to_direct: Option<f64>,
    p50_us: u64,
    p99_us: u64,
    p99_9_us: u64,
    errors: u64,
    /// The latency the target adds to the direct call (medians of p50 and
    /// p99), when `direct` ran.
    added_p50_us: Option<i64>,
    added_p99_us: Option<i64>,
    /// The proxy's CPU per request; with `--topology mesh`, both sidecars'.
    proxy_cpu_us_per_request: Option<f64>,
    /// With `--topology mesh`: sidecar A's and sidecar B's apart.
    sidecar_cpu_us_per_request: Vec<f64>,
    peak_rss_mib: Option<f64>,
    generator_cpu_us_per_request: f64,
    runs: Vec<Run>,
}

/// Run the comparison and print the table.
impl CompareArgs {
    /// Rounds, measured time and warm-up: as given, else the quick
    /// defaults, or the long ones with `--full`.
    pub fn plan(&self) -> (usize, Duration, Duration) {
        let (runs, duration, warmup) = if self.full { (5, 5, 2) } else { (3, 3, 1) };
        (
            self.runs.unwrap_or(runs),
            self.duration.unwrap_or(Duration::from_secs(duration)),
            self.warmup.unwrap_or(Duration::from_secs(warmup)),
        )
    }
}

pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    for t in &args.targets {
        anyhow::ensure!(
            ["direct", "outrigger", "nginx", "haproxy"].contains(&t.as_str()),
            "unknown target {t:?} (direct, outrigger, nginx, haproxy)"
        );
    }
    let (rounds, duration, warmup) = args.plan();
    anyhow::ensure!(rounds > 0, "--runs must be at least 1");
    let driver = args.io.driver()?;
    pin_current(&args.load_cpus)?;
    let upstream = backends::start(
        BackendKind::Http(HttpBackend {
            name: "upstream".into(),
            body_size: Some(args.body_size),
            delay: Duration::ZERO,
            status: 200,
        }),
        "127.0.0.1:0".parse()?,
        args.load_cpus.len().max(1),
        driver,
    )
    .context("cannot start the upstream")?;
    let dir = std::env::temp_dir().join(format!("outrigger-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let layout = Layout {
        proxy_cpus: &args.proxy_cpus,
        h2: args.h2,
        outrigger: args.outrigger.as_deref(),
    };
    let certs = match args.topology {
        Topology::Mesh => Some(crate::mesh::certs(&dir.join("certs"))?),
        Topology::Single => None,
    };
    let mut targets: Vec<(String, SocketAddr, Vec<Proxy>)> = Vec::new();
    for name in &args.targets {
        let started = match name.as_str() {
            "direct" if args.h2 => {
                eprintln!("skipping direct: the upstream speaks HTTP/1.1 only (--h2)");
                continue;
            }
            "direct" => {
                targets.push((name.clone(), upstream.addr, Vec::new()));
                continue;
            }
            kind => match &certs {
                Some(certs) => crate::mesh::start_pair(kind, &layout, &dir, upstream.addr, certs),
                None => {
                    let one = match kind {
                        "outrigger" => start_outrigger(&layout, &dir, upstream.addr),
                        "nginx" => start_nginx(&layout, &dir, upstream.addr),
                        "haproxy" => start_haproxy(&layout, &dir, upstream.addr),
                        other => anyhow::bail!("unknown target {other:?}"),
                    };
                    one.map(|p| (p.addr, vec![p]))
                }
            },
        };
        match started {
            Ok((addr, procs)) => targets.push((name.clone(), addr, procs)),
            Err(e) => eprintln!("skipping {name}: {e:#}"),
        }
    }
    let mut runs: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    let mut latencies: BTreeMap<String, hdrhistogram::Histogram<u64>> = BTreeMap::new();
    for (name, addr, _) in &targets {
        wait_ready(*addr, args.h2 && name != "direct")
            .with_context(|| format!("{name} does not answer"))?;
        let _ = load(&args, *addr, warmup)?;
    }
    for round in 0..rounds {
        for (name, addr, proxy) in &targets {
            // Each process of the target (a mesh pair: A, then B) apart.
            let pids: Vec<Vec<u32>> = proxy.iter().map(|p| process_tree(p.child.id())).collect();
            let cpu0: Vec<f64> = pids.iter().map(|p| cpu_seconds(p)).collect();
            let report = load(&args, *addr, duration)?;
            let cpu1: Vec<f64> = pids.iter().map(|p| cpu_seconds(p)).collect();
            if let Some(h) = &report.histograms.latency {
                match latencies.get_mut(name) {
                    Some(all) => {
                        let _ = all.add(h);
                    }
                    None => {
                        latencies.insert(name.clone(), h.clone());
                    }
                }
            }
            let ops = report.operations.max(1) as f64;
            let run = Run {
                requests_per_second: report.operations_per_second,
                p50_us: report.latency_us.p50,
                p99_us: report.latency_us.p99,
                p99_9_us: report.latency_us.p99_9,
                errors: report.errors.values().sum(),
                non_2xx: report
                    .statuses
                    .iter()
                    .filter(|(k, _)| k.as_str() != "2xx")
                    .map(|(_, v)| v)
                    .sum(),
                proxy_cpu_us_per_request: (!pids.is_empty())
                    .then(|| 1e6 * (cpu1.iter().sum::<f64>() - cpu0.iter().sum::<f64>()) / ops),
                sidecar_cpu_us_per_request: cpu0
                    .iter()
                    .zip(&cpu1)
                    .map(|(a, b)| 1e6 * (b - a) / ops)
                    .collect(),
                generator_cpu_us_per_request: 1e6
                    * report.generator_cpu_utilisation
                    * report.threads as f64
                    * report.measured_seconds
                    / ops,
                generator_saturated: report.generator_saturated,
            };
            eprintln!(
                "round {}/{} {name}: {:.0} req/s, p99 {} us",
                round + 1,
                rounds,
                run.requests_per_second,
                run.p99_us
            );
            runs.entry(name.clone()).or_default().push(run);
        }
    }
    let mut summaries = Vec::new();
    for (name, _, proxy) in &targets {
        let rs = runs.remove(name).unwrap_or_default();
        let rss = (!proxy.is_empty()).then(|| {
            let pids: Vec<u32> = proxy
                .iter()
                .flat_map(|p| process_tree(p.child.id()))
                .collect();
            peak_rss_kib(&pids) as f64 / 1024.0
        });
        summaries.push(summarize(name, rs, rss));
    }
    let direct = summaries
        .iter()
        .find(|s| s.target == "direct")
        .map(|s| (s.requests_per_second, s.p50_us, s.p99_us));
    for s in &mut summaries {
        s.ratio_to_direct = direct.map(|d| s.requests_per_second / d.0.max(1e-9));
        s.added_p50_us = direct.map(|d| s.p50_us as i64 - d.1 as i64);
        s.added_p99_us = direct.map(|d| s.p99_us as i64 - d.2 as i64);
    }
    let table = markdown(&args, &summaries);
    print!("{table}");
    if let Some(p) = &args.markdown {
        std::fs::write(p, &table).with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &args.plot {
        let series = targets
            .iter()
            .filter_map(|(name, _, _)| {
                latencies.get(name).map(|h| crate::plot::Series {
                    name: name.clone(),
                    latency: h,
                    dashed: false,
                })
            })
            .collect();
        let chart = crate::plot::Chart {
            title: "outrigger-load compare: latency by percentile".into(),
            subtitle: format!("{}; all rounds merged", workload(&args)),
            series,
            timeline: None,
        };
        std::fs::write(p, crate::plot::svg(&chart))
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &args.json {
        let v = serde_json::json!({ "workload": workload(&args), "targets": summaries });
        std::fs::write(p, serde_json::to_vec_pretty(&v)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    drop(targets);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn workload(args: &CompareArgs) -> String {
    format!(
        "{}GET, {} B responses, {} connections{}, {} generator thread(s), {}, {:?} per run, {} round(s); proxies on cores {:?}, upstream and generator on {:?}",
        match args.topology {
            Topology::Single => "",
            Topology::Mesh => "mesh (client -> sidecar A -> mutual TLS -> sidecar B -> app): ",
        },
        args.body_size,
        args.connections,
        if args.h2 {
            format!(" (HTTP/2, {} streams each; HTTP/1.1 upstream)", args.streams)
        } else {
            String::new()
        },
        args.threads,
        args.rate.map_or("closed loop".to_string(), |r| format!("open loop at {r} req/s")),
        args.plan().1,
        args.plan().0,
        args.proxy_cpus,
        args.load_cpus
    )
}

fn median_f(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

fn median_u(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn summarize(name: &str, runs: Vec<Run>, rss: Option<f64>) -> Summary {
    let f = |g: fn(&Run) -> f64| median_f(&mut runs.iter().map(g).collect::<Vec<_>>());
    let u = |g: fn(&Run) -> u64| median_u(&mut runs.iter().map(g).collect::<Vec<_>>());
    let cpu: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.proxy_cpu_us_per_request)
        .collect();
    Summary {
        target: name.to_string(),
        requests_per_second: f(|r| r.requests_per_second),
        ratio_to_direct: None,
        p50_us: u(|r| r.p50_us),
        p99_us: u(|r| r.p99_us),
        p99_9_us: u(|r| r.p99_9_us),
        errors: runs.iter().map(|r| r.errors + r.non_2xx).sum(),
        added_p50_us: None,
        added_p99_us: None,
        sidecar_cpu_us_per_request: (0..runs
            .first()
            .map_or(0, |r| r.sidecar_cpu_us_per_request.len()))
            .map(|i| {
                median_f(
                    &mut runs
                        .iter()
                        .filter_map(|r| r.sidecar_cpu_us_per_request.get(i).copied())
                        .collect::<Vec<_>>(),
                )
            })
            .collect(),
        proxy_cpu_us_per_request: (!cpu.is_empty()).then(|| median_f(&mut cpu.clone())),
        peak_rss_mib: rss,
        generator_cpu_us_per_request: f(|r| r.generator_cpu_us_per_request),
        runs,
    }
}

fn markdown(args: &CompareArgs, s: &[Summary]) -> String {
    let mut out = format!("\n{}; medians.\n\n", workload(args));
    let cpu = match args.topology {
        Topology::Single => "proxy CPU us/req",
        Topology::Mesh => "pair CPU us/req (A + B)",
    };
    out.push_str(&format!("| target | req/s | vs direct | p50 us | p99 us | p99.9 us | added p50 / p99 us | {cpu} | peak RSS MiB | errors |\n"));
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for t in s {
        let opt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            t.target,
            t.requests_per_second,
            t.ratio_to_direct
                .map_or("-".into(), |r| format!("{:.0}%", 100.0 * r)),
            t.p50_us,
            t.p99_us,
            t.p99_9_us,
            match (t.added_p50_us, t.added_p99_us) {
                (Some(a), Some(b)) if t.target != "direct" => format!("{a} / {b}"),
                _ => "-".into(),
            },
            match t.sidecar_cpu_us_per_request.as_slice() {
                [a, b] => format!("{} ({a:.1} + {b:.1})", opt(t.proxy_cpu_us_per_request, 1)),
                _ => opt(t.proxy_cpu_us_per_request, 1),
            },
            opt(t.peak_rss_mib, 1),
            t.errors
        ));
    }
    let saturated = s
        .iter()
        .flat_map(|t| &t.runs)
        .any(|r| r.generator_saturated);
    out.push_str(&format!(
        "\nGenerator CPU per request (median over targets): {:.1} us.{}\n",
        median_f(&mut s.iter().map(|t| t.generator_cpu_us_per_request).collect::<Vec<_>>()),
        if saturated {
            " WARNING: the generator was saturated in some runs; their numbers measure it, not the target."
        } else {
            ""
        }
    ));
    out
}

/// One generator run against `addr` for `duration` (no warm-up).
fn load(
    args: &CompareArgs,
    addr: SocketAddr,
    duration: Duration,
) -> anyhow::Result<crate::report::Report> {
    crate::http_load(HttpArgs {
        h2: args.h2,
        streams: args.streams,
        trace_ratio: 0.0,
        url: format!("http://{addr}/"),
        requests: None,
        rate: args.rate,
        pacer: crate::pacer::PacerKind::Auto,
        method: "GET".into(),
        headers: Vec::new(),
        body: None,
        body_file: None,
        timeout: Duration::from_secs(10),
        ca: None,
        insecure: false,
        load: LoadArgs {
            connections: args.connections,
            threads: args.threads,
            duration,
            warmup: Duration::ZERO,
            cpus: args.load_cpus.clone(),
            io: args.io,
        },
        output: OutputArgs::default(),
    })
}
