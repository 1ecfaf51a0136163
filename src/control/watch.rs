//! Config file watching. The directory holding the file is watched (inotify),
//! not the file: editors save by writing a new file and renaming it over the
//! old one, and Kubernetes ConfigMaps swap a `..data` symlink, and in both
//! cases a watch on the old file's inode would see nothing. Any event in the
//! directory tells the control thread to look; it debounces, re-reads the
//! file and reloads only when the content hash changed. Without inotify the
//! watcher polls the file's content once a second instead.
//!
//! The directories of the certificate, key and CA files the running config
//! names are watched too (added as reloads name new ones), so replacing a
//! certificate (rename, symlink swap or write in place) reloads it: new
//! handshakes get the new material, open connections keep theirs, and a
//! broken file fails the reload and keeps the old material.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Told that something changed; `false` once nobody listens any more.
pub type Changed = Box<dyn Fn() -> bool + Send>;

/// How often the poll fallback looks, and how often the inotify thread
/// checks whether it should stop.
const POLL: Duration = Duration::from_secs(1);

/// Start watching the directory of `file` (and those of the snapshot's
/// TLS material); each change is told to `changed` until `stop`.
pub fn spawn(
    file: &Path,
    snapshot: Arc<arc_swap::ArcSwap<crate::snapshot::Snapshot>>,
    changed: Changed,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file = file.to_path_buf();
    // The watch is in place before this returns: no change after start is missed.
    let watch = Inotify::watch(&dir);
    std::thread::Builder::new()
        .name("outrigger-watch".into())
        .spawn(move || {
            crate::rt::deprioritize_current_thread();
            run(watch, &dir, &file, &snapshot, &changed, &stop)
        })?;
    Ok(())
}

type Snapshots = arc_swap::ArcSwap<crate::snapshot::Snapshot>;

fn run(
    watch: std::io::Result<Inotify>,
    dir: &Path,
    file: &Path,
    snapshot: &Snapshots,
    changed: &Changed,
    stop: &AtomicBool,
) {
    match watch {
        Ok(fd) => {
            tracing::debug!(dir = %dir.display(), "watching the config directory");
            fd.run(snapshot, changed, stop);
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "inotify unavailable; polling the config file every second");
            poll(file, snapshot, changed, stop);
        }
    }
}

/// The config's bytes and its material's hash.
fn fingerprint(file: &Path, snapshot: &Snapshots) -> (Option<Vec<u8>>, u64) {
    let material = crate::config::material_hash(&snapshot.load().material);
    (std::fs::read(file).ok(), material)
}

fn poll(file: &Path, snapshot: &Snapshots, changed: &Changed, stop: &AtomicBool) {
    let mut last = fingerprint(file, snapshot);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(POLL);
        let now = fingerprint(file, snapshot);
        if now != last {
            last = now;
            if !changed() {
                return;
            }
        }
    }
}

/// The directories holding the snapshot's TLS material.
fn material_dirs(snapshot: &Snapshots) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = snapshot
        .load()
        .material
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .map(|d| {
            if d.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                d
            }
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// An inotify instance watching one directory.
struct Inotify(libc::c_int);

impl Drop for Inotify {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor and close it once.
        unsafe { libc::close(self.0) };
    }
}

impl Inotify {
    fn watch(dir: &Path) -> std::io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let me = Inotify(fd);
        me.add(dir)?;
        Ok(me)
    }

    /// Watch one more directory (adding one already watched is a no-op).
    fn add(&self, dir: &Path) -> std::io::Result<()> {
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let mask = libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MODIFY
            | libc::IN_ATTRIB;
        // SAFETY: fd is a live inotify descriptor and path a valid C string.
        if unsafe { libc::inotify_add_watch(self.0, path.as_ptr(), mask) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn run(&self, snapshot: &Snapshots, changed: &Changed, stop: &AtomicBool) {
        let mut buf = [0u8; 4096];
        let mut watched: Vec<PathBuf> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            // TLS material directories of the running config (a reload may
            // name new ones); at most a POLL late.
            for d in material_dirs(snapshot) {
                if !watched.contains(&d) {
                    match self.add(&d) {
                        Ok(()) => {
                            tracing::debug!(dir = %d.display(), "watching a TLS material directory")
                        }
                        Err(e) => {
                            tracing::warn!(dir = %d.display(), error = %e, "cannot watch a TLS material directory")
                        }
                    }
                    watched.push(d);
                }
            }
            let mut pfd = libc::pollfd {
                fd: self.0,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, POLL.as_millis() as libc::c_int) };
            if ready <= 0 {
                continue;
            }
            // SAFETY: reading into a buffer we own, with its length.
            let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 && !changed() {
                return;
            }
        }
    }
}
