//! The one place that knows about I/O drivers: which one to use (chosen once
//! at start) and how to build a monoio runtime on it.

use std::future::Future;
use std::io;

use crate::snapshot::IoMode;

/// The I/O driver a worker runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// Completion-based io_uring.
    IoUring,
    /// Readiness-based epoll (monoio's legacy driver).
    Epoll,
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        })
    }
}

/// Why the requested driver cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("io = \"io_uring\" was requested but io_uring is unavailable here: {reason}")]
pub struct DriverUnavailable {
    pub reason: String,
}

/// Decide the driver for `mode`. `auto` falls back to epoll with a warning
/// that names the reason; `io_uring` fails instead.
pub fn choose(mode: IoMode) -> Result<Driver, DriverUnavailable> {
    match mode {
        IoMode::Epoll => Ok(Driver::Epoll),
        IoMode::IoUring => probe_io_uring()
            .map(|_| Driver::IoUring)
            .map_err(|reason| DriverUnavailable { reason }),
        IoMode::Auto => match probe_io_uring() {
            Ok(()) => Ok(Driver::IoUring),
            Err(reason) => {
                tracing::warn!(%reason, "io_uring unavailable, falling back to epoll");
                Ok(Driver::Epoll)
            }
        },
    }
}

/// Create (and drop) a small ring, and check the opcodes the workers need.
fn probe_io_uring() -> Result<(), String> {
    if std::env::var_os("OUTRIGGER_DISABLE_IO_URING").is_some() {
        return Err("disabled by OUTRIGGER_DISABLE_IO_URING".into());
    }
    let ring = io_uring::IoUring::new(8).map_err(|e| describe(&e))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("cannot probe io_uring opcodes: {}", describe(&e)))?;
    use io_uring::opcode;
    let needed = [
        ("accept", opcode::Accept::CODE),
        ("connect", opcode::Connect::CODE),
        ("recv", opcode::Recv::CODE),
        ("send", opcode::Send::CODE),
        ("poll_add", opcode::PollAdd::CODE),
        ("async_cancel", opcode::AsyncCancel::CODE),
        ("timeout", opcode::Timeout::CODE),
        ("splice", opcode::Splice::CODE),
    ];
    for (name, code) in needed {
        if !probe.is_supported(code) {
            return Err(format!("the kernel's io_uring lacks the {name} operation"));
        }
    }
    Ok(())
}

fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => format!("{e} (kernel without io_uring)"),
        Some(libc::EPERM) => format!("{e} (blocked by seccomp or kernel.io_uring_disabled)"),
        Some(libc::ENOMEM) => format!("{e} (locked-memory limit too low; raise RLIMIT_MEMLOCK)"),
        _ => e.to_string(),
    }
}

/// Run `f()` to completion on a fresh monoio runtime with `driver`.
pub fn block_on<F, Fut>(driver: Driver, ring_entries: u32, f: F) -> io::Result<Fut::Output>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    match driver {
        Driver::IoUring => {
            let build = |flags: RingFlags| {
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .with_entries(ring_entries)
                    .uring_builder(flags.builder())
                    .enable_timer()
                    .build()
            };
            // Kernels before 6.0 refuse the newer setup flags (EINVAL):
            // such a ring runs with none, as before.
            let mut rt = match build(RingFlags::Cooperative) {
                Ok(rt) => rt,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!("io_uring setup flags unsupported; using a plain ring");
                    build(RingFlags::None)?
                }
                Err(e) => return Err(e),
            };
            Ok(rt.block_on(f()))
        }
        Driver::Epoll => {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .with_entries(ring_entries)
                .enable_timer()
                .build()?;
            Ok(rt.block_on(f()))
        }
    }
}

/// How a worker's ring is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RingFlags {
    /// No setup flags (kernels before 6.0).
    None,
    /// `COOP_TASKRUN | TASKRUN_FLAG | SINGLE_ISSUER`: completions are not
    /// delivered by interrupting the worker (an inter-processor interrupt
    /// per completion, a VM exit on virtual machines) but run when the
    /// worker next enters the kernel, which a busy worker does constantly;
    /// only the worker's own thread submits. Measured in docs/benchmarks.md
    /// ("ring setup flags"): without them the io_uring driver saturated its
    /// core at 20k req/s where epoll did not. `DEFER_TASKRUN` is left out:
    /// it delivers completions only on an entry that waits for events, and
    /// monoio's submit-only entries (taken while tasks are ready) would hold
    /// them back.
    Cooperative,
}

impl RingFlags {
    fn builder(self) -> io_uring::Builder {
        let mut b = io_uring::IoUring::builder();
        if self == RingFlags::Cooperative {
            b.setup_coop_taskrun()
                .setup_taskrun_flag()
                .setup_single_issuer();
        }
        b
    }
}
