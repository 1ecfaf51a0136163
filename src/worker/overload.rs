//! Overload protection: when the process's heap in use passes
//! `runtime.max_heap_bytes`, the proxy sheds new work before the kernel's
//! OOM killer ends everything: new connections are closed at accept (flag
//! `OL`) and requests whose heads are still arriving get 503 `overloaded`
//! instead of more buffer. It clears below 90% of the limit. The heap is
//! sampled (glibc `mallinfo2`, all arenas) from the workers' ticks, at most
//! every 100 ms for the whole process; the data path reads one relaxed flag
//! at accept and per head read. Envoy's overload manager does the same
//! with its heap monitor.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Sample at most this often, process-wide.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

static OVERLOADED: AtomicBool = AtomicBool::new(false);
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

/// From a worker's tick: sample the heap when due and set the flag against
/// `limit` (`None`: protection off).
pub fn sample(now: Instant, limit: Option<u64>) {
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
    let in_use = heap_bytes();
    IN_USE.store(in_use, Ordering::Relaxed);
    let Some(limit) = limit else {
        OVERLOADED.store(false, Ordering::Relaxed);
        return;
    };
    let was = OVERLOADED.load(Ordering::Relaxed);
    let now_over = if was {
        in_use >= limit / 10 * 9
    } else {
        in_use > limit
    };
    if now_over != was {
        OVERLOADED.store(now_over, Ordering::Relaxed);
        if now_over {
            tracing::warn!(
                heap_bytes = in_use,
                limit,
                "heap over runtime.max_heap_bytes: shedding new connections and requests"
            );
        } else {
            tracing::warn!(
                heap_bytes = in_use,
                limit,
                "heap back under the limit: accepting again"
            );
        }
    }
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

/// The default limit: 85% of the memory limit of the process's cgroup
/// (v2 `memory.max`, or v1 `memory.limit_in_bytes`), else none.
pub fn default_limit() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read = |file: String| -> Option<u64> {
        let v: u64 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
        // cgroup v1 writes "no limit" as a number near 2^63.
        (v < 1 << 60).then_some(v)
    };
    let v2 = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .and_then(|p| read(format!("/sys/fs/cgroup{}/memory.max", p.trim())));
    let v1 = || {
        cgroup
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p))
            .and_then(|p| {
                read(format!(
                    "/sys/fs/cgroup/memory{}/memory.limit_in_bytes",
                    p.trim()
                ))
            })
    };
    v2.or_else(v1).map(|bytes| bytes / 100 * 85)
}
