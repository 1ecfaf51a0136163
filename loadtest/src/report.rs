//! Results: merged histograms, counts and the printed/JSON report.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Instant;

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
    /// Open loop: service time from the actual send (no correction).
    pub uncorrected: Histogram<u64>,
    /// Responses by status class ("2xx", …).
    /// Responses by status class: index 0 for 1xx … 4 for 5xx, 5 for others.
    pub statuses: [u64; 6],
    /// Open loop: sends that left more than four intervals late.
    pub behind_schedule: u64,
    /// When the last operation completed.
    pub last_done: Instant,
    /// Start of the measured window; `intervals[i]` covers second i after it.
    pub origin: Instant,
    /// Per-second latency histograms (2 significant digits) for the
    /// timeline and the interval log.
    pub intervals: Vec<Histogram<u64>>,
    /// End of the measured window (duration runs): operations completing
    /// after it were in flight when the time was up and are not counted.
    pub window_end: Option<Instant>,
    /// Operations that completed after `window_end`.
    pub after_window: u64,
    /// Open loop: how late each send left after its intended time (µs).
    pub send_lateness: Histogram<u64>,
}

fn interval_histogram() -> Histogram<u64> {
    // 2 significant digits keep a second's histogram around 30 KiB.
    Histogram::new_with_bounds(1, 3_600_000_000, 2).unwrap_or_else(|_| unreachable!())
}

fn lateness_histogram() -> Histogram<u64> {
    // From 0 µs (on time), 1 µs to 1 h.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .map(|mut h| {
            h.auto(true);
            h
        })
        .unwrap_or_else(|_| unreachable!())
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 h, 3 significant digits; new_with_bounds cannot fail for these bounds.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| unreachable!())
}

impl ThreadResult {
    pub fn new() -> Self {
        ThreadResult {
            latency: histogram(),
            ops: 0,
            bytes: 0,
            errors: BTreeMap::new(),
            cpu_seconds: 0.0,
            uncorrected: histogram(),
            statuses: [0; 6],
            behind_schedule: 0,
            last_done: Instant::now(),
            origin: Instant::now(),
            intervals: Vec::new(),
            window_end: None,
            after_window: 0,
            send_lateness: lateness_histogram(),
        }
    }

    /// Open loop: a send that left `sent - intended` after its time.
    pub fn lateness(&mut self, intended: Instant, sent: Instant) {
        let us = sent.saturating_duration_since(intended).as_micros() as u64;
        let _ = self.send_lateness.record(us.min(3_600_000_000));
    }

    /// One completed request: latency from the intended send (equal to the
    /// actual send in closed loop) and service time from the actual send.
    /// Count one finished operation; `false` (and only counted as late)
    /// when it finished after the measured window, so that nothing else
    /// (statuses) counts it either.
    pub fn record(
        &mut self,
        intended: Instant,
        sent: Instant,
        done: Instant,
        bytes: usize,
    ) -> bool {
        if self.window_end.is_some_and(|end| done > end) {
            self.after_window += 1;
            return false;
        }
        let us = |d: std::time::Duration| (d.as_micros() as u64).clamp(1, 3_600_000_000);
        let latency = us(done.saturating_duration_since(intended));
        let _ = self.latency.record(latency);
        let _ = self
            .uncorrected
            .record(us(done.saturating_duration_since(sent)));
        self.ops += 1;
        self.bytes += bytes as u64;
        let second = done.saturating_duration_since(self.origin).as_secs() as usize;
        if second < 24 * 3600 {
            while self.intervals.len() <= second {
                self.intervals.push(interval_histogram());
            }
            let _ = self.intervals[second].record(latency);
        }
        true
    }

    /// Count a response status by class (no allocation: this is per request).
    pub fn status(&mut self, status: u16) {
        let i = match status / 100 {
            c @ 1..=5 => usize::from(c) - 1,
            _ => 5,
        };
        self.statuses[i] += 1;
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
    /// Values recorded.
    pub count: u64,
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
    /// Open loop: requested rate (requests per second, all connections).
    pub target_rate: Option<f64>,
    /// Open loop: service time from the actual send, without correction.
    pub latency_uncorrected_us: Option<Percentiles>,
    /// Open loop: how late sends left after their intended time (the
    /// generator's own error), in µs.
    pub send_lateness_us: Option<Percentiles>,
    /// Responses by status class.
    pub statuses: BTreeMap<String, u64>,
    /// Open loop: sends more than four intervals behind schedule.
    pub behind_schedule: u64,
    /// Completed operations in each second of the measured window.
    pub timeline_ops_per_second: Vec<u64>,
    /// Operations in flight when the duration ended that completed after
    /// it: not counted in `operations` or the latency figures.
    pub completed_after_window: u64,
    /// Merged histograms, for the interval log and the plot.
    #[serde(skip)]
    pub histograms: Histograms,
}

/// The merged histograms behind a report.
#[derive(Debug, Default)]
pub struct Histograms {
    pub latency: Option<Histogram<u64>>,
    /// Open loop: service time from the actual send.
    pub uncorrected: Option<Histogram<u64>>,
    pub intervals: Vec<Histogram<u64>>,
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let q = |p: f64| h.value_at_quantile(p);
    Percentiles {
        p50: q(0.5),
        p75: q(0.75),
        p90: q(0.9),
        p99: q(0.99),
        p99_9: q(0.999),
        p99_99: q(0.9999),
        max: h.max(),
        mean: h.mean(),
        count: h.len(),
    }
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
        let mut latency = histogram();
        let mut uncorrected = histogram();
        let mut statuses = BTreeMap::new();
        let mut behind = 0;
        let mut intervals: Vec<Histogram<u64>> = Vec::new();
        let mut ops = 0;
        let mut bytes = 0;
        let mut errors = BTreeMap::new();
        let mut cpu = 0.0;
        let mut after_window = 0;
        let mut lateness = lateness_histogram();
        for r in results {
            after_window += r.after_window;
            let _ = lateness.add(&r.send_lateness);
            let _ = latency.add(&r.latency);
            let _ = uncorrected.add(&r.uncorrected);
            behind += r.behind_schedule;
            for (i, h) in r.intervals.iter().enumerate() {
                if intervals.len() <= i {
                    intervals.push(interval_histogram());
                }
                let _ = intervals[i].add(h);
            }
            for (i, v) in r.statuses.iter().enumerate() {
                if *v > 0 {
                    let class = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"][i];
                    *statuses.entry(class.to_string()).or_default() += v;
                }
            }
            ops += r.ops;
            bytes += r.bytes;
            cpu += r.cpu_seconds;
            for (k, v) in r.errors {
                *errors.entry(k).or_default() += v;
            }
        }
        let secs = measured_seconds.max(1e-9);
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
            latency_us: percentiles(&latency),
            errors,
            generator_cpu_utilisation: utilisation,
            generator_saturated: utilisation > 0.95 || behind * 100 > ops.max(1),
            target_rate: None,
            latency_uncorrected_us: (!uncorrected.is_empty()).then(|| percentiles(&uncorrected)),
            send_lateness_us: (!lateness.is_empty()).then(|| percentiles(&lateness)),
            statuses,
            behind_schedule: behind,
            timeline_ops_per_second: intervals.iter().map(|h| h.len()).collect(),
            completed_after_window: after_window,
            histograms: Histograms {
                latency: Some(latency),
                uncorrected: (!uncorrected.is_empty()).then_some(uncorrected),
                intervals,
            },
        }
    }

    /// The human-readable summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let l = &self.latency_us;
        let _ = writeln!(
            s,
            "{} {} {}={}B connections={} threads={} measured={:.2}s",
            self.mode,
            self.target,
            // tcp: the message size; http: the request's size on the wire
            // (bytes below are the response bodies).
            if self.mode.starts_with("http") {
                "request"
            } else {
                "size"
            },
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
        if let Some(rate) = self.target_rate {
            let _ = writeln!(
                s,
                "  open loop: target {rate:.0}/s, achieved {:.0}/s; latency above is from the intended send time",
                self.operations_per_second
            );
            if let Some(u) = &self.latency_uncorrected_us {
                let _ = writeln!(
                    s,
                    "  uncorrected service time us: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                    u.p50, u.p90, u.p99, u.p99_9, u.max
                );
            }
            if let Some(l) = &self.send_lateness_us {
                let _ = writeln!(
                    s,
                    "  send lateness us (the generator's own error): p50 {}  p99 {}  p99.9 {}  max {}",
                    l.p50, l.p99, l.p99_9, l.max
                );
            }
        }
        if !self.statuses.is_empty() {
            let list: Vec<String> = self
                .statuses
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(s, "  statuses: {}", list.join(" "));
        }
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
        if !self.timeline_ops_per_second.is_empty() {
            let t: Vec<String> = self
                .timeline_ops_per_second
                .iter()
                .map(u64::to_string)
                .collect();
            let _ = writeln!(s, "  per second: {}", t.join(" "));
        }
        if self.completed_after_window > 0 {
            let _ = writeln!(
                s,
                "  {} operations in flight when the time was up completed after it (not counted)",
                self.completed_after_window
            );
        }
        if self.behind_schedule > 0 {
            let _ = writeln!(
                s,
                "  {} sends left more than four intervals late",
                self.behind_schedule
            );
        }
        if self.generator_saturated {
            let _ = writeln!(
                s,
                "  WARNING: the generator was busy all the time; it may be the bottleneck, so these numbers understate the target. Add threads or cores."
            );
        }
        s
    }
}
