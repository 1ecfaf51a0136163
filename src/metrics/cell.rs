//! The primitives every per-worker metric is made of: a single-writer
//! [`Counter`] and [`PerWorker`] cells padded to their own cache lines.
//! Base floor: imports nothing of the crate, so resilience, tls and the
//! rest can count without importing the metric tables above them.

use std::sync::atomic::{AtomicU64, Ordering};

/// A single-writer counter or gauge.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n`. Only the owning worker calls this.
    #[inline]
    pub fn add(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    /// Add one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtract one (for gauges).
    #[inline]
    pub fn dec(&self) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.saturating_sub(1), Ordering::Relaxed);
    }

    /// Set a gauge.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One worker's cells, alone on their cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

/// One `T` per worker, indexed by worker number.
#[derive(Debug)]
pub struct PerWorker<T> {
    cells: Box<[Padded<T>]>,
}

impl<T: Default> PerWorker<T> {
    /// Cells for `workers` workers.
    pub fn new(workers: usize) -> Self {
        PerWorker {
            cells: (0..workers.max(1)).map(|_| Padded::default()).collect(),
        }
    }
}

impl<T> PerWorker<T> {
    /// Cells made by `f`, for types without a useful default.
    pub fn from_fn(workers: usize, f: impl Fn() -> T) -> Self {
        PerWorker {
            cells: (0..workers.max(1)).map(|_| Padded(f())).collect(),
        }
    }

    /// The cells of worker `index`. A worker index past the end (which start-up
    /// never produces) shares the last cell rather than panicking.
    #[inline]
    pub fn worker(&self, index: usize) -> &T {
        let i = index.min(self.cells.len() - 1);
        &self.cells[i].0
    }

    /// Every worker's cells, in worker order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.cells.iter().map(|p| &p.0)
    }

    /// Sum `f` over workers.
    pub fn sum(&self, f: impl Fn(&T) -> u64) -> u64 {
        self.iter().map(f).sum()
    }
}
