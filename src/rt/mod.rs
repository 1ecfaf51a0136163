//! Thread helpers every layer may use: the bottom floor of the module map
//! (nothing here imports another module of the crate): the CPUs this
//! process may run on (`cpus`, which sizes and pins the workers), and the
//! control-plane threads' priority. The control-plane
//! threads (control, admin, watcher, signals, discovery, xds, prober,
//! OTLP exporter) lower their priority through here, so services below
//! `control` need not import it.

pub mod cpus;

/// Nice value of the control-plane threads. They are not pinned and may
/// share a core with a worker; at +10 the scheduler gives a busy worker
/// about ten times their share, so a reload or a large scrape cannot take
/// a worker's core for long.
const CONTROL_PLANE_NICE: i32 = 10;

/// Lower the calling thread's scheduling priority (best effort: a failure
/// only leaves it at the default).
pub fn deprioritize_current_thread() {
    // SAFETY: gettid and setpriority have no memory-safety preconditions;
    // on Linux PRIO_PROCESS with a thread id applies to that thread only.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, CONTROL_PLANE_NICE);
    }
}
