//! Overload protection: when the memory of the process's cgroup passes
//! `runtime.overload_memory_percent` of its limit (socket buffers
//! included: what the OOM killer counts), or its heap passes
//! `runtime.max_heap_bytes`, the proxy sheds new work before the kernel's
//! OOM killer ends everything: new connections are closed at accept (flag
//! `OL`) and requests whose heads are still arriving get 503 `overloaded`
//! instead of more buffer. It clears below 90% of the limits. Both are
//! sampled from the workers' ticks (glibc `mallinfo2`, the cgroup's usage
//! file), at most every 100 ms for the whole process; the data path reads
//! one relaxed flag at accept and per head read. A burst of reads can
//! grow memory faster than a tick comes round (a worker reading a thousand
//! backlogged partial heads in one turn of its loop took 70 MB between two
//! ticks and was OOM-killed): every `GROWTH_SAMPLE` bytes of partial heads
//! read on a worker also sample at once. Envoy's overload manager does the
//! same with its heap and cgroup monitors.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Sample at most this often, process-wide.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Bytes of partial heads a worker reads between forced samples.
const GROWTH_SAMPLE: u64 = 4 << 20;

static OVERLOADED: AtomicBool = AtomicBool::new(false);
/// The settings of the last tick's sample (for forced samples);
/// `u64::MAX`: no heap limit.
static HEAP_LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);
static PERCENT: AtomicU64 = AtomicU64::new(85);

thread_local! {
    /// Partial-head bytes read on this worker since its last forced sample.
    static GROWN: Cell<u64> = const { Cell::new(0) };
}

/// A worker read `bytes` more of a head still arriving: past
/// `GROWTH_SAMPLE` on this worker, sample now rather than at the next tick.
pub fn head_grew(bytes: usize) {
    let grown = GROWN.get() + bytes as u64;
    if grown < GROWTH_SAMPLE {
        GROWN.set(grown);
        return;
    }
    GROWN.set(0);
    let heap_limit = match HEAP_LIMIT.load(Ordering::Relaxed) {
        u64::MAX => None,
        l => Some(l),
    };
    measure(heap_limit, PERCENT.load(Ordering::Relaxed));
}
static IN_USE: AtomicU64 = AtomicU64::new(0);
static LAST_MS: AtomicU64 = AtomicU64::new(0);

/// Whether new work is being shed.
pub fn overloaded() -> bool {
    OVERLOADED.load(Ordering::Relaxed)
}

/// Heap bytes in use at the last sample (0 before the first one).
pub fn heap_in_use() -> u64 {
    IN_USE.load(Ordering::Relaxed)
}

/// From a worker's tick: sample when due and set the flag: over when the
/// heap is over `heap_limit`, or the cgroup's memory usage (socket buffers
/// and page cache included: what its OOM killer counts) is over
/// `cgroup_percent` of its limit; clear under 90% of both.
pub fn sample(now: Instant, heap_limit: Option<u64>, cgroup_percent: u64) {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let now_ms = u64::try_from(now.saturating_duration_since(epoch).as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let last = LAST_MS.load(Ordering::Relaxed);
    if last != 0 && now_ms.saturating_sub(last) < SAMPLE_EVERY.as_millis() as u64 {
        return;
    }
    if LAST_MS
        .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    HEAP_LIMIT.store(heap_limit.unwrap_or(u64::MAX), Ordering::Relaxed);
    PERCENT.store(cgroup_percent, Ordering::Relaxed);
    measure(heap_limit, cgroup_percent);
}

/// Read the heap and the cgroup's usage and set the flag.
fn measure(heap_limit: Option<u64>, cgroup_percent: u64) {
    let heap = heap_bytes();
    IN_USE.store(heap, Ordering::Relaxed);
    let was = OVERLOADED.load(Ordering::Relaxed);
    // Past the limit to start shedding; under 90% of it to stop.
    let over = |used: u64, limit: u64| {
        if was {
            used >= limit / 10 * 9
        } else {
            used > limit
        }
    };
    let heap_over = heap_limit.is_some_and(|l| over(heap, l));
    let cgroup_over = match cgroup() {
        Some(c) if cgroup_percent > 0 => c
            .usage()
            .is_some_and(|u| over(u, c.limit / 100 * cgroup_percent)),
        _ => false,
    };
    let now_over = heap_over || cgroup_over;
    if now_over != was {
        OVERLOADED.store(now_over, Ordering::Relaxed);
        if now_over {
            tracing::warn!(
                heap_bytes = heap,
                heap_limit,
                cgroup_over,
                "overloaded: shedding new connections and requests"
            );
        } else {
            tracing::warn!(heap_bytes = heap, "no longer overloaded: accepting again");
        }
    }
}

/// The process's cgroup memory accounting (v2 or v1), when it has a limit.
struct Cgroup {
    usage: std::path::PathBuf,
    limit: u64,
}

impl Cgroup {
    fn usage(&self) -> Option<u64> {
        std::fs::read_to_string(&self.usage)
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

fn cgroup() -> Option<&'static Cgroup> {
    static CG: OnceLock<Option<Cgroup>> = OnceLock::new();
    CG.get_or_init(find_cgroup).as_ref()
}

fn find_cgroup() -> Option<Cgroup> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |file: &std::path::Path| -> Option<u64> {
        let v: u64 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
        // cgroup v1 writes "no limit" as a number near 2^63.
        (v < 1 << 60).then_some(v)
    };
    let v2 = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .and_then(|p| {
            let dir = std::path::PathBuf::from(format!("/sys/fs/cgroup{}", p.trim()));
            Some(Cgroup {
                limit: read(&dir.join("memory.max"))?,
                usage: dir.join("memory.current"),
            })
        });
    v2.or_else(|| {
        let p = cgroup
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p))?;
        let dir = std::path::PathBuf::from(format!("/sys/fs/cgroup/memory{}", p.trim()));
        Some(Cgroup {
            limit: read(&dir.join("memory.limit_in_bytes"))?,
            usage: dir.join("memory.usage_in_bytes"),
        })
    })
}

#[cfg(target_env = "gnu")]
fn heap_bytes() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics (it locks
    // each arena briefly); no pointer is passed.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as u64
}

#[cfg(not(target_env = "gnu"))]
fn heap_bytes() -> u64 {
    0
}
