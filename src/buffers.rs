//! A per-worker pool of I/O buffers. Connections rent a buffer only while
//! bytes are moving and give it back before waiting again, so an idle
//! connection holds no buffer (ARCHITECTURE.md invariant 8).
//!
//! The spares a burst leaves behind (up to `buffer_pool_size`, 64 MiB of
//! address space at the defaults, with a touched page or more of each
//! resident) decay when the burst is over: every [`BufferPool::decay`]
//! (once a second, from the worker's tick) frees half of the spares that no
//! `get` needed since the last one, so a pool sized by a peak shrinks to
//! what is used within a few seconds, and a steady load keeps what it uses.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use crate::metrics::WorkerCells;

/// Buffers of one size, owned by one worker (`Rc`, never shared).
#[derive(Debug)]
pub struct BufferPool {
    size: usize,
    max_pooled: usize,
    free: RefCell<Vec<Vec<u8>>>,
    /// The fewest spares held since the last `decay`: that many were not
    /// needed.
    low: Cell<usize>,
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
            low: Cell::new(0),
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
        let mut free = self.free.borrow_mut();
        let buf = free.pop();
        self.low.set(self.low.get().min(free.len()));
        buf.unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// Free half of the spares no `get` needed since the last call; the
    /// number freed (their memory goes back with the next heap trim).
    pub fn decay(&self) -> usize {
        let mut free = self.free.borrow_mut();
        let unused = self.low.get().min(free.len());
        let drop = unused.div_ceil(2);
        let keep = free.len() - drop;
        free.truncate(keep);
        if drop > 0 {
            free.shrink_to(keep.max(16));
        }
        self.low.set(free.len());
        drop
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

/// Bytes a response head read asks for (`http::proxy`).
pub const HEAD_READ: usize = 8192;
/// Spare head buffers a worker keeps.
const HEAD_SPARES: usize = 8;
/// A buffer a large body grew beyond this is not kept.
const HEAD_SPARE_MAX: usize = 64 * 1024;

/// A worker's spare buffers for reading upstream response heads. A head is
/// sliced out of its buffer without copying, so the buffer is still shared
/// when the exchange ends; it goes back here anyway and is taken again only
/// once the head's last slice is gone (then reusing it allocates nothing).
/// Saves an 8 KiB allocation and its free per proxied request; holds at
/// most `HEAD_SPARES` buffers per worker.
#[derive(Debug, Default)]
pub struct HeadBuffers {
    spares: RefCell<Vec<bytes::BytesMut>>,
}

impl HeadBuffers {
    /// An empty buffer: a spare whose slices are all gone, or a new one.
    pub fn take(&self) -> bytes::BytesMut {
        let mut spares = self.spares.borrow_mut();
        while let Some(mut b) = spares.pop() {
            b.clear();
            if b.try_reclaim(HEAD_READ) && b.capacity() <= HEAD_SPARE_MAX {
                return b;
            }
            // Still shared (a long-lived slice), or grown by a large
            // body: let it go.
        }
        bytes::BytesMut::new()
    }

    /// Give a buffer back (its contents are discarded).
    pub fn put(&self, b: bytes::BytesMut) {
        let mut spares = self.spares.borrow_mut();
        if spares.len() < HEAD_SPARES && (1..=HEAD_SPARE_MAX).contains(&b.capacity()) {
            spares.push(b);
        }
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

    #[test]
    fn unused_spares_decay() {
        let pool = BufferPool::new(64, 100);
        // A burst: 40 buffers out at once, all back.
        let out: Vec<_> = (0..40).map(|_| pool.get()).collect();
        out.into_iter().for_each(|b| pool.put(b));
        assert_eq!(pool.pooled(), 40);
        // The interval of the burst used them all: nothing decays yet.
        assert_eq!(pool.decay(), 0);
        // Quiet intervals: half of the unused spares go each time.
        assert_eq!(pool.decay(), 20);
        assert_eq!(pool.decay(), 10);
        assert_eq!(pool.pooled(), 10);
        // A steady load of 4 buffers at a time keeps them.
        for _ in 0..5 {
            let out: Vec<_> = (0..4).map(|_| pool.get()).collect();
            out.into_iter().for_each(|b| pool.put(b));
            pool.decay();
        }
        assert_eq!(pool.pooled(), 4);
        for _ in 0..10 {
            let b = pool.get();
            pool.put(b);
            let _ = pool.decay();
        }
        assert!(pool.pooled() >= 1, "what each interval uses stays");
        assert_eq!(pool.rented(), 0);
    }

    #[test]
    fn head_buffers_are_reused_once_their_slices_are_gone() {
        let spares = HeadBuffers::default();
        let mut buf = spares.take();
        buf.reserve(HEAD_READ);
        buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\nbody");
        let at = buf.as_ptr();
        let head = buf.split_to(19).freeze();
        spares.put(buf);
        // The head still holds the allocation: not handed out again.
        let other = spares.take();
        assert_ne!(other.as_ptr(), at);
        assert!(spares.spares.borrow().is_empty());
        // Once the head is gone the same allocation comes back, empty and
        // with room for a head read.
        let mut buf = other;
        buf.reserve(HEAD_READ);
        let again_at = buf.as_ptr();
        let _ = buf.split_to(0);
        spares.put(buf);
        drop(head);
        assert_eq!(spares.spares.borrow().len(), 1);
        let reused = spares.take();
        assert_eq!(reused.as_ptr(), again_at);
        assert!(reused.is_empty());
        assert!(reused.capacity() >= HEAD_READ);
        // A buffer a large body grew is not kept.
        let mut big = bytes::BytesMut::with_capacity(HEAD_SPARE_MAX + 1);
        big.extend_from_slice(b"x");
        spares.put(big);
        assert!(spares.spares.borrow().is_empty());
    }
}
