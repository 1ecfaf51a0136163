//! A latency histogram with one writer (a worker) and any number of readers
//! (the admin thread). Recording is a few relaxed loads and stores; nothing
//! is locked and nothing is shared with other workers.
//!
//! Two views of the same samples:
//! - fixed Prometheus buckets (`le`), counted exactly, for `/metrics`;
//! - log-linear buckets with 32 sub-buckets per power of two (under 3.2%
//!   relative error), allocated on the first sample, merged on scrape into an
//!   `hdrhistogram::Histogram` for percentiles in `/stats`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Upper bounds of the Prometheus buckets, in microseconds (0.1 ms … 10 s).
pub const LE_BUCKETS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 10_000_000,
];

/// Values below this are their own bucket.
const LINEAR: u64 = 64;
/// Sub-buckets per power of two above `LINEAR`.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Largest octave kept (2^36 µs is about 19 hours); larger values clamp.
const MAX_EXP: u32 = 36;
const FINE_BUCKETS: usize = LINEAR as usize + ((MAX_EXP - 6 + 1) as usize) * SUB as usize;

/// Single-writer latency histogram, in microseconds.
#[derive(Debug, Default)]
pub struct Histogram {
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
    le: [AtomicU64; LE_BUCKETS_US.len()],
    fine: OnceLock<Box<[AtomicU64]>>,
}

#[inline]
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Index of the fine bucket holding `v`.
fn fine_index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = (63 - v.leading_zeros()).min(MAX_EXP);
    let v = v.min((1u64 << (MAX_EXP + 1)) - 1);
    let sub = (v >> (exp - SUB_BITS)) - SUB;
    LINEAR as usize + (exp - 6) as usize * SUB as usize + sub as usize
}

/// The largest value that lands in fine bucket `i`.
fn fine_upper(i: usize) -> u64 {
    if (i as u64) < LINEAR {
        return i as u64;
    }
    let k = i as u64 - LINEAR;
    let exp = (k / SUB) as u32 + 6;
    let sub = k % SUB;
    ((SUB + sub + 1) << (exp - SUB_BITS)) - 1
}

impl Histogram {
    /// Record one sample. Only the owning worker calls this.
    #[inline]
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        bump(&self.count, 1);
        bump(&self.sum_us, us);
        if us > self.max_us.load(Ordering::Relaxed) {
            self.max_us.store(us, Ordering::Relaxed);
        }
        if let Some(i) = LE_BUCKETS_US.iter().position(|&le| us <= le) {
            bump(&self.le[i], 1);
        }
        let fine = self
            .fine
            .get_or_init(|| (0..FINE_BUCKETS).map(|_| AtomicU64::new(0)).collect());
        bump(&fine[fine_index(us)], 1);
    }

    /// Add this histogram's samples into `into` (a reader's merge).
    pub fn merge_into(&self, into: &mut Merged) {
        into.count += self.count.load(Ordering::Relaxed);
        into.sum_us += self.sum_us.load(Ordering::Relaxed);
        into.max_us = into.max_us.max(self.max_us.load(Ordering::Relaxed));
        for (acc, b) in into.le.iter_mut().zip(&self.le) {
            *acc += b.load(Ordering::Relaxed);
        }
        if let Some(fine) = self.fine.get() {
            for (i, b) in fine.iter().enumerate() {
                let n = b.load(Ordering::Relaxed);
                if n > 0 {
                    // Recorded at the bucket's top: percentiles err high, never low.
                    let _ = into.hdr.record_n(fine_upper(i).max(1), n);
                }
            }
        }
    }
}

/// Histograms merged across workers, ready to print.
#[derive(Debug)]
pub struct Merged {
    pub count: u64,
    pub sum_us: u64,
    pub max_us: u64,
    /// Per-bucket (not cumulative) counts for `LE_BUCKETS_US`.
    pub le: [u64; LE_BUCKETS_US.len()],
    pub hdr: hdrhistogram::Histogram<u64>,
}

impl Default for Merged {
    fn default() -> Self {
        Merged {
            count: 0,
            sum_us: 0,
            max_us: 0,
            le: [0; LE_BUCKETS_US.len()],
            // Auto-resizing with 3 significant digits cannot fail to build.
            hdr: hdrhistogram::Histogram::new(3).unwrap_or_else(|_| unreachable_hdr()),
        }
    }
}

#[cold]
fn unreachable_hdr() -> hdrhistogram::Histogram<u64> {
    // new(3) only fails for sigfig > 5; keep a usable value anyway.
    hdrhistogram::Histogram::new_with_bounds(1, 1 << 40, 2).unwrap_or_else(|_| {
        hdrhistogram::Histogram::new_with_max(1 << 40, 1).unwrap_or_else(|_| std::process::abort())
    })
}

impl Merged {
    /// The value at quantile `q` (0..=1) in microseconds, capped by the exact max.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        self.hdr.value_at_quantile(q).min(self.max_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_in_order() {
        let mut last = 0;
        for v in (0..5000u64).chain([1 << 20, (1 << 20) + 12345, 1 << 36, u64::MAX / 2]) {
            let i = fine_index(v);
            assert!(i < FINE_BUCKETS, "{v}");
            assert!(
                v.min((1 << (MAX_EXP + 1)) - 1) <= fine_upper(i),
                "{v} in {i}"
            );
            if v < 5000 {
                assert!(i >= last);
                last = i;
            }
        }
        // Relative error of a bucket's top stays under 1/32.
        for v in [100u64, 999, 1000, 65_000, 1_000_000] {
            let up = fine_upper(fine_index(v));
            assert!((up - v) as f64 / v as f64 <= 1.0 / 32.0, "{v} -> {up}");
        }
    }

    #[test]
    fn percentiles_and_prometheus_buckets() {
        let h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let mut m = Merged::default();
        h.merge_into(&mut m);
        assert_eq!(m.count, 100);
        assert_eq!(m.max_us, 100_000);
        assert_eq!(m.sum_us, (1..=100u64).sum::<u64>() * 1000);
        let p50 = m.quantile_us(0.5);
        assert!((50_000..=51_600).contains(&p50), "{p50}");
        assert_eq!(m.quantile_us(1.0), 100_000);
        // le=1ms holds 1 sample, le=2.5ms 1 more (2 ms), le=5ms 3 more.
        assert_eq!(&m.le[..6], &[0, 0, 0, 1, 1, 3]);
        assert_eq!(m.le.iter().sum::<u64>(), 100);
    }
}
