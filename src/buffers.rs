//! A per-worker pool of I/O buffers. Connections rent a buffer only while
//! bytes are moving and give it back before waiting again, so an idle
//! connection holds no buffer (ARCHITECTURE.md invariant 8).

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use crate::metrics::WorkerCells;

/// Buffers of one size, owned by one worker (`Rc`, never shared).
#[derive(Debug)]
pub struct BufferPool {
    size: usize,
    max_pooled: usize,
    free: RefCell<Vec<Vec<u8>>>,
    /// Buffers handed out by `get` and not yet returned.
    rented: Cell<usize>,
    /// Where `rented` is published for the admin thread (single writer).
    gauge: Option<Arc<WorkerCells>>,
}

impl BufferPool {
    /// A pool of `size`-byte buffers keeping at most `max_pooled` spares.
    pub fn new(size: usize, max_pooled: usize) -> Self {
        BufferPool {
            size,
            max_pooled,
            free: RefCell::new(Vec::new()),
            rented: Cell::new(0),
            gauge: None,
        }
    }

    /// The same, publishing the number of rented buffers in `stats`.
    pub fn with_gauge(size: usize, max_pooled: usize, stats: Arc<WorkerCells>) -> Self {
        BufferPool {
            gauge: Some(stats),
            ..BufferPool::new(size, max_pooled)
        }
    }

    fn set_rented(&self, n: usize) {
        self.rented.set(n);
        if let Some(g) = &self.gauge {
            g.buffers_rented.set(n as u64);
        }
    }

    /// The capacity of every buffer.
    pub fn buffer_size(&self) -> usize {
        self.size
    }

    /// An empty buffer with `buffer_size()` capacity.
    pub fn get(&self) -> Vec<u8> {
        self.set_rented(self.rented.get() + 1);
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// Return a buffer; kept for reuse unless the pool is full.
    pub fn put(&self, mut buf: Vec<u8>) {
        self.set_rented(self.rented.get().saturating_sub(1));
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_pooled && buf.capacity() == self.size {
            buf.clear();
            free.push(buf);
        }
    }

    /// Buffers rented and not yet returned (every `get` is paired with a
    /// `put`; a buffer dropped instead is still counted).
    pub fn rented(&self) -> usize {
        self.rented.get()
    }

    /// Spare buffers held now.
    pub fn pooled(&self) -> usize {
        self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let pool = BufferPool::new(1024, 2);
        let a = pool.get();
        let b = pool.get();
        let c = pool.get();
        assert_eq!(a.capacity(), 1024);
        let b_ptr = b.as_ptr();
        pool.put(a);
        pool.put(b);
        pool.put(c);
        assert_eq!(pool.pooled(), 2, "the third spare is dropped");
        assert_eq!(pool.rented(), 0);
        // The most recently returned buffer comes back: the same allocation.
        let again = pool.get();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), b_ptr);
        assert_eq!(pool.pooled(), 1);
        pool.put(Vec::with_capacity(10));
        assert_eq!(pool.pooled(), 1, "foreign sizes are dropped");
    }
}
