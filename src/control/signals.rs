//! Signal handling: SIGINT/SIGTERM (drain; a second one exits at once) and
//! SIGHUP (reload), forwarded to the control thread as events.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::Event;

/// Exit status after a second signal cut the drain short.
pub const EXIT_FORCED: i32 = 2;

/// Signal handlers, installed before the workers start so that a busy proxy
/// (say, one out of file descriptors) can always be stopped.
#[derive(Debug)]
pub struct SignalWatch {
    signals: Signals,
}

impl SignalWatch {
    /// Install the handlers (they need a file descriptor of their own).
    pub fn install() -> std::io::Result<Self> {
        Ok(SignalWatch {
            signals: Signals::new([SIGINT, SIGTERM, SIGHUP])?,
        })
    }

    /// Forward every signal to `inbox` from a thread of its own.
    pub(super) fn forward(mut self, inbox: flume::Sender<Event>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("outrigger-signal".into())
            .spawn(move || {
                crate::rt::deprioritize_current_thread();
                for sig in self.signals.forever() {
                    let event = if sig == SIGHUP {
                        Event::Reload(None)
                    } else {
                        Event::Signal(sig)
                    };
                    if inbox.send(event).is_err() {
                        return;
                    }
                }
            })?;
        Ok(())
    }
}
