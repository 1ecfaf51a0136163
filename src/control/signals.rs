//! SIGINT/SIGTERM handling on the `outrigger-control` thread.

use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::Server;

/// Exit status after a second signal cut the drain short.
pub const EXIT_FORCED: i32 = 2;

/// SIGINT/SIGTERM handlers, installed before the workers start so that a
/// busy proxy (say, one out of file descriptors) can always be stopped.
#[derive(Debug)]
pub struct SignalWatch {
    signals: Signals,
}

impl SignalWatch {
    /// Install the handlers (they need a file descriptor of their own).
    pub fn install() -> std::io::Result<Self> {
        Ok(SignalWatch {
            signals: Signals::new([SIGINT, SIGTERM])?,
        })
    }
}

/// Serve until SIGINT or SIGTERM, then drain for up to `drain_timeout`.
/// Returns the process exit status: 0 after a drain (complete or timed out),
/// [`EXIT_FORCED`] when a second signal arrived, 1 when a worker died.
pub fn run_until_signal(
    watch: SignalWatch,
    server: Server,
    drain_timeout: Duration,
) -> std::io::Result<i32> {
    let mut signals = watch.signals;
    let handle = std::thread::Builder::new()
        .name("outrigger-control".into())
        .spawn(move || {
            let mut deadline: Option<Instant> = None;
            loop {
                for sig in signals.pending() {
                    if deadline.is_some() {
                        tracing::warn!(
                            signal = sig,
                            open_connections = server.active_connections(),
                            "second signal: exiting now"
                        );
                        return EXIT_FORCED;
                    }
                    tracing::info!(
                        signal = sig,
                        open_connections = server.active_connections(),
                        timeout = ?drain_timeout,
                        "draining: stopped accepting, waiting for open connections"
                    );
                    server.drain();
                    deadline = Some(Instant::now() + drain_timeout);
                }
                if server.finished() {
                    if deadline.is_none() {
                        tracing::error!("workers exited unexpectedly");
                        return 1;
                    }
                    tracing::info!("drained; exiting");
                    return 0;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    tracing::warn!(
                        open_connections = server.active_connections(),
                        "drain timeout reached; exiting with connections still open"
                    );
                    return 0;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })?;
    Ok(handle.join().unwrap_or(1))
}
