//! Reloads on the control thread: from a file change (reported once per
//! distinct rejected content), SIGHUP or `POST /reload`; each is logged,
//! counted and kept as `last_reload_error` when it fails.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::{Control, ReloadDone};
use crate::config;
use crate::control::ReloadOutcome;
use crate::control::{ReloadError, ReloadFailure};

impl Control {
    /// A file event: reload only when the config's content, or that of a
    /// certificate, key or CA file it names, changed.
    pub(super) fn reload_if_changed(&mut self) {
        let Some(path) = &self.options.config_path else {
            return;
        };
        let Ok(bytes) = std::fs::read(path) else {
            // Mid-swap, or removed: the next event will tell.
            return;
        };
        let running = self.server.snapshot();
        if config::compile::fnv1a(&bytes) == running.content_hash
            && config::material_hash(&running.material) == running.material_hash
        {
            // Back to what is running (after a failed edit, say): nothing to
            // reload, and the last error no longer describes the file.
            let shared = self.server.shared();
            if shared.last_reload_error.load().is_some() {
                shared.last_reload_error.store(None);
                tracing::info!(
                    "the config file matches the running config again; last reload error cleared"
                );
            }
            self.rejected = None;
            return;
        }
        let content = config::compile::fnv1a(&bytes);
        let trigger = Instant::now();
        if self.drain_deadline.is_some() {
            return;
        }
        // Tried again on every event (a file the config names may have
        // appeared), but a rejection already reported for this content is
        // not reported again: another file written in the directory (a log
        // beside the config, say) must not turn into a reload error a tick.
        let result = self.attempt();
        if let (Err(e), Some((hash, message))) = (&result, &self.rejected) {
            if *hash == content && e.to_string() == *message {
                tracing::debug!("the config file is still the rejected one; not reloaded");
                return;
            }
        }
        let outcome = self.report(result, trigger, "file change");
        self.rejected = outcome.err().map(|message| (content, message));
    }

    /// Compile the config file (with the xDS overlay) and apply it.
    fn attempt(&mut self) -> Result<Arc<config::Snapshot>, ReloadError> {
        match &self.options.config_path {
            None => Err(ReloadError::NoFile),
            Some(path) => config::load_with(path, &self.xds_overlay)
                .map_err(ReloadError::Config)
                .and_then(|s| self.server.apply(s)),
        }
    }

    pub(super) fn reload(&mut self, trigger: Instant, why: &str) -> ReloadOutcome {
        if self.drain_deadline.is_some() {
            return Err("draining: reloads are refused".into());
        }
        let result = self.attempt();
        let outcome = self.report(result, trigger, why);
        self.rejected = None;
        outcome
    }

    /// Log and count a reload's result; the admin API's answer.
    fn report(
        &mut self,
        result: Result<Arc<config::Snapshot>, ReloadError>,
        trigger: Instant,
        why: &str,
    ) -> ReloadOutcome {
        let shared = self.server.shared().clone();
        match result {
            Ok(snapshot) => {
                let duration = trigger.elapsed();
                shared.reloads.succeeded.inc();
                shared.reloads.duration.record(duration);
                shared.last_reload_error.store(None);
                tracing::info!(
                    trigger = why,
                    generation = snapshot.generation,
                    ?duration,
                    summary = %snapshot.summary(),
                    "config reloaded"
                );
                for w in snapshot.warnings() {
                    tracing::warn!("{w}");
                }
                Ok(ReloadDone {
                    generation: snapshot.generation,
                    duration,
                })
            }
            Err(e) => {
                shared.reloads.failed.inc();
                let message = e.to_string();
                for line in message.lines() {
                    tracing::error!(
                        trigger = why,
                        "reload rejected, running config kept: {line}"
                    );
                }
                shared.last_reload_error.store(Some(Arc::new(ReloadFailure {
                    at: SystemTime::now(),
                    message: message.clone(),
                })));
                Err(message)
            }
        }
    }
}
