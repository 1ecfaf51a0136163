//! Results: merged histograms, counts and the printed/JSON report.

use std::collections::BTreeMap;
use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

/// What one generator thread measured.
#[derive(Debug)]
pub struct ThreadResult {
    /// Latency in microseconds, one value per completed operation.
    pub latency: Histogram<u64>,
    pub ops: u64,
    pub bytes: u64,
    pub errors: BTreeMap<String, u64>,
    /// CPU time this thread used during the run, in seconds.
    pub cpu_seconds: f64,
}

impl ThreadResult {
    pub fn new() -> Self {
        ThreadResult {
            // 1 µs to 1 h, 3 significant digits; new_with_bounds cannot fail for these bounds.
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .unwrap_or_else(|_| unreachable!()),
            ops: 0,
            bytes: 0,
            errors: BTreeMap::new(),
            cpu_seconds: 0.0,
        }
    }

    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p75: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub p99_99: u64,
    pub max: u64,
    pub mean: f64,
}

/// The whole report, as printed and as written by `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub mode: String,
    pub size_bytes: usize,
    pub connections: usize,
    pub threads: usize,
    pub measured_seconds: f64,
    pub operations: u64,
    pub operations_per_second: f64,
    pub bytes: u64,
    pub mebibytes_per_second: f64,
    pub gigabits_per_second: f64,
    pub latency_us: Percentiles,
    pub errors: BTreeMap<String, u64>,
    /// Generator CPU use: CPU seconds over (threads × wall seconds).
    pub generator_cpu_utilisation: f64,
    /// True when the generator itself was the bottleneck.
    pub generator_saturated: bool,
}

impl Report {
    pub fn build(
        target: String,
        mode: String,
        size_bytes: usize,
        connections: usize,
        results: Vec<ThreadResult>,
        measured_seconds: f64,
    ) -> Report {
        let threads = results.len();
        let mut latency = ThreadResult::new().latency;
        let mut ops = 0;
        let mut bytes = 0;
        let mut errors = BTreeMap::new();
        let mut cpu = 0.0;
        for r in results {
            let _ = latency.add(&r.latency);
            ops += r.ops;
            bytes += r.bytes;
            cpu += r.cpu_seconds;
            for (k, v) in r.errors {
                *errors.entry(k).or_default() += v;
            }
        }
        let secs = measured_seconds.max(1e-9);
        let q = |p: f64| latency.value_at_quantile(p);
        let utilisation = cpu / (threads.max(1) as f64 * secs);
        Report {
            target,
            mode,
            size_bytes,
            connections,
            threads,
            measured_seconds,
            operations: ops,
            operations_per_second: ops as f64 / secs,
            bytes,
            mebibytes_per_second: bytes as f64 / secs / (1024.0 * 1024.0),
            gigabits_per_second: bytes as f64 * 8.0 / secs / 1e9,
            latency_us: Percentiles {
                p50: q(0.5),
                p75: q(0.75),
                p90: q(0.9),
                p99: q(0.99),
                p99_9: q(0.999),
                p99_99: q(0.9999),
                max: latency.max(),
                mean: latency.mean(),
            },
            errors,
            generator_cpu_utilisation: utilisation,
            generator_saturated: utilisation > 0.95,
        }
    }

    /// The human-readable summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let l = &self.latency_us;
        let _ = writeln!(
            s,
            "{} {} size={}B connections={} threads={} measured={:.2}s",
            self.mode,
            self.target,
            self.size_bytes,
            self.connections,
            self.threads,
            self.measured_seconds
        );
        let _ = writeln!(
            s,
            "  ops: {} ({:.0}/s)   bytes: {} ({:.1} MiB/s, {:.2} Gbit/s)",
            self.operations,
            self.operations_per_second,
            self.bytes,
            self.mebibytes_per_second,
            self.gigabits_per_second
        );
        let _ = writeln!(
            s,
            "  latency us: p50 {}  p75 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  mean {:.1}",
            l.p50, l.p75, l.p90, l.p99, l.p99_9, l.p99_99, l.max, l.mean
        );
        if self.errors.is_empty() {
            let _ = writeln!(s, "  errors: none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(s, "  errors: {}", list.join(" "));
        }
        let _ = writeln!(
            s,
            "  generator cpu: {:.0}% of its threads",
            self.generator_cpu_utilisation * 100.0
        );
        if self.generator_saturated {
            let _ = writeln!(
                s,
                "  WARNING: the generator was busy all the time; it may be the bottleneck, so these numbers understate the target. Add threads or cores."
            );
        }
        s
    }
}
