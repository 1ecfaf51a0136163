//! The CPUs this process may run on, and whether they are its own.
//!
//! A sidecar shares its node with every other pod's sidecar: pinning
//! worker n to core n on each of them piles every proxy onto the same first
//! cores. So the defaults follow what the process was given:
//!
//! - `workers = "auto"` is the number of CPUs in the affinity mask
//!   (`sched_getaffinity`, which a cpuset or `taskset` narrows), capped by
//!   the cgroup's CPU quota rounded up (`cpu.max`, or v1's
//!   `cpu.cfs_quota_us`/`cpu.cfs_period_us`, the tightest along the
//!   cgroup's ancestors): a pod limited to 2 CPUs on a 64-core node runs
//!   2 workers, as linkerd's proxy does.
//! - `pin_workers = "auto"` pins only when the CPUs are exclusive: the
//!   affinity mask is narrower than the online CPUs and the quota matches
//!   its size, which is what Kubernetes' static CPU manager gives a
//!   Guaranteed pod with whole CPUs. Everywhere else the workers run
//!   unpinned and the scheduler spreads them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// What this process was given.
#[derive(Debug, Clone, PartialEq)]
pub struct Cpus {
    /// The affinity mask, in order.
    pub allowed: Vec<core_affinity::CoreId>,
    /// CPUs online on the machine.
    pub online: usize,
    /// The cgroup CPU quota in CPUs (1.5 = 150 ms per 100 ms), if any.
    pub quota: Option<f64>,
}

impl Cpus {
    /// This process's, read once.
    pub fn get() -> &'static Cpus {
        static CPUS: OnceLock<Cpus> = OnceLock::new();
        CPUS.get_or_init(Cpus::detect)
    }

    fn detect() -> Cpus {
        let allowed = core_affinity::get_core_ids().unwrap_or_default();
        // SAFETY: sysconf has no preconditions.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        Cpus {
            online: usize::try_from(online).unwrap_or(0).max(allowed.len()),
            quota: cgroup_quota(),
            allowed,
        }
    }

    /// `workers = "auto"`: the allowed CPUs, capped by the quota; at least 1.
    pub fn default_workers(&self) -> usize {
        let allowed = if self.allowed.is_empty() {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.allowed.len()
        };
        let by_quota = self
            .quota
            .map_or(usize::MAX, |q| (q.ceil() as usize).max(1));
        allowed.min(by_quota).max(1)
    }

    /// `pin_workers = "auto"`: the CPUs are this process's alone.
    pub fn exclusive(&self) -> bool {
        let n = self.allowed.len();
        n > 0 && n < self.online && self.quota.is_some_and(|q| (q - n as f64).abs() < 0.01)
    }
}

/// The tightest CPU quota of this process's cgroup and its ancestors.
fn cgroup_quota() -> Option<f64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    if let Some(p) = cgroup.lines().find_map(|l| l.strip_prefix("0::")) {
        let leaf = PathBuf::from(format!("/sys/fs/cgroup{}", p.trim()));
        if let Some(q) = tightest(&leaf, Path::new("/sys/fs/cgroup"), |d| {
            parse_cpu_max(&std::fs::read_to_string(d.join("cpu.max")).ok()?)
        }) {
            return Some(q);
        }
    }
    // cgroup v1: the "cpu" controller, mounted as cpu or cpu,cpuacct.
    let p = cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "cpu")
            .then(|| path.trim().to_string())
    })?;
    ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"]
        .iter()
        .find_map(|root| {
            let root = Path::new(root);
            tightest(&root.join(p.trim_start_matches('/')), root, |d| {
                let read = |f: &str| std::fs::read_to_string(d.join(f)).ok();
                cfs_quota(
                    read("cpu.cfs_quota_us")?.trim(),
                    read("cpu.cfs_period_us")?.trim(),
                )
            })
        })
}

/// The smallest quota `read` finds from `leaf` up to `root`.
fn tightest(leaf: &Path, root: &Path, read: impl Fn(&Path) -> Option<f64>) -> Option<f64> {
    let mut best: Option<f64> = None;
    let mut dir = Some(leaf);
    while let Some(d) = dir {
        if let Some(q) = read(d) {
            best = Some(best.map_or(q, |b| b.min(q)));
        }
        if d == root {
            break;
        }
        dir = d.parent().filter(|p| p.starts_with(root));
    }
    best
}

/// cgroup v2 `cpu.max`: `"max 100000"` (no quota) or `"QUOTA PERIOD"`.
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut f = text.split_whitespace();
    let quota = f.next()?;
    let period: f64 = f.next().unwrap_or("100000").parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then(|| quota / period)
}

/// cgroup v1: a quota of -1 is none.
fn cfs_quota(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.parse().ok()?;
    let period: i64 = period.parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(allowed: usize, online: usize, quota: Option<f64>) -> Cpus {
        Cpus {
            allowed: (0..allowed)
                .map(|id| core_affinity::CoreId { id })
                .collect(),
            online,
            quota,
        }
    }

    #[test]
    fn quotas() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("200000 100000"), Some(2.0));
        assert_eq!(parse_cpu_max("junk"), None);
        assert_eq!(cfs_quota("-1", "100000"), None);
        assert_eq!(cfs_quota("50000", "100000"), Some(0.5));
    }

    #[test]
    fn workers_and_pinning() {
        // A shared node: every CPU, no quota: all of them, unpinned.
        let shared = cpus(64, 64, None);
        assert_eq!((shared.default_workers(), shared.exclusive()), (64, false));
        // A Burstable pod limited to 1.5 CPUs: 2 workers, unpinned.
        let limited = cpus(64, 64, Some(1.5));
        assert_eq!((limited.default_workers(), limited.exclusive()), (2, false));
        // Half a CPU still gets one worker.
        assert_eq!(cpus(64, 64, Some(0.5)).default_workers(), 1);
        // Guaranteed with the static CPU manager: 4 exclusive CPUs, quota 4.
        let own = cpus(4, 64, Some(4.0));
        assert_eq!((own.default_workers(), own.exclusive()), (4, true));
        // The shared pool of a node with some exclusive CPUs, quota 2:
        // narrowed, but not this pod's alone.
        let pool = cpus(60, 64, Some(2.0));
        assert_eq!((pool.default_workers(), pool.exclusive()), (2, false));
        // taskset without a quota: not known to be exclusive.
        assert!(!cpus(2, 8, None).exclusive());
    }

    #[test]
    fn tightest_quota_up_the_tree() {
        let root = Path::new("/sys/fs/cgroup");
        let leaf = root.join("kubepods/pod1/ctr");
        let q = tightest(&leaf, root, |d| match d.to_str() {
            Some("/sys/fs/cgroup/kubepods/pod1/ctr") => Some(4.0),
            Some("/sys/fs/cgroup/kubepods/pod1") => Some(2.0),
            Some("/sys/fs/cgroup/kubepods") => None,
            _ => Some(100.0),
        });
        assert_eq!(q, Some(2.0));
    }
}
