//! Applying a new snapshot to a running [`Server`]: check what cannot change
//! without a restart, bind added listeners on every worker (a failure
//! changes nothing), then publish once and tell the workers which accept
//! loops to start and stop.

use std::sync::Arc;

use super::{bind_listener, Bound, Server, StartError};
use crate::access_log::{self, LogMsg};
use crate::config::{ConfigErrors, Snapshot};
use crate::worker::Control;

/// Why a reload was rejected. The running config is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("{key}: cannot change without a restart (running: {running}, new: {new})")]
    Static {
        key: &'static str,
        running: String,
        new: String,
    },
    #[error("{0}")]
    Bind(StartError),
    #[error("access_log.path: cannot open: {0}")]
    AccessLog(std::io::Error),
    #[error("nothing to reload: the config did not come from a file")]
    NoFile,
}

impl Server {
    /// Publish `new` as the next generation, or change nothing and say why.
    pub fn apply(&mut self, mut new: Snapshot) -> Result<Arc<Snapshot>, ReloadError> {
        let old = self.shared.snapshot.load_full();
        check_static(&old, &new)?;
        if let Some(a) = &new.access_log {
            access_log::check_target(&a.target).map_err(ReloadError::AccessLog)?;
        }
        // Listeners that keep their name and configured address keep their
        // sockets; the others are bound now, before anything changes.
        let workers = self.shared.workers.len();
        let mut added: Vec<(Bound, Vec<crate::listener::ListenerSocket>)> = Vec::new();
        for l in &new.listeners {
            let kept = self
                .bound
                .iter()
                .any(|b| b.name == l.name && b.configured == l.address);
            if !kept {
                let sockets = bind_listener(&l.name, l.address, l.backlog, workers, self.driver)
                    .map_err(ReloadError::Bind)?;
                added.push(sockets);
            }
        }
        let removed: Vec<Bound> = self
            .bound
            .iter()
            .filter(|b| {
                !new.listeners
                    .iter()
                    .any(|l| l.name == b.name && l.address == b.configured)
            })
            .cloned()
            .collect();
        new.generation = old.generation + 1;
        new.adopt_stats(&old);
        let new = Arc::new(new);
        self.shared.snapshot.store(new.clone());
        for b in &removed {
            for c in &self.controls {
                let _ = c.send(Control::RemoveListener(b.name.clone()));
            }
            self.bound.retain(|x| x.name != b.name);
            tracing::info!(listener = %b.name, address = %b.local, "listener removed; draining its connections");
        }
        for (b, sockets) in added {
            for (c, s) in self.controls.iter().zip(sockets) {
                let _ = c.send(Control::AddListener(s));
            }
            tracing::info!(listener = %b.name, address = %b.local, "listening");
            self.bound.push(b);
        }
        self.shared
            .addresses
            .store(Arc::new(super::addresses(&self.bound)));
        // Every successful reload reopens the access log (log rotation).
        let _ = self.log_tx.send(LogMsg::Target(
            new.access_log.as_ref().map(|a| a.target.clone()),
        ));
        Ok(new)
    }
}

/// `[runtime]` and `[admin]` are fixed for the life of the process.
fn check_static(old: &Snapshot, new: &Snapshot) -> Result<(), ReloadError> {
    let (o, n) = (&old.runtime, &new.runtime);
    let checks: [(&'static str, String, String); 7] = [
        (
            "runtime.workers",
            format!("{:?}", o.workers),
            format!("{:?}", n.workers),
        ),
        ("runtime.io", format!("{:?}", o.io), format!("{:?}", n.io)),
        (
            "runtime.pin_workers",
            o.pin_workers.to_string(),
            n.pin_workers.to_string(),
        ),
        (
            "runtime.drain_timeout",
            format!("{:?}", o.drain_timeout),
            format!("{:?}", n.drain_timeout),
        ),
        (
            "runtime.buffer_size",
            o.buffer_size.to_string(),
            n.buffer_size.to_string(),
        ),
        (
            "runtime.buffer_pool_size",
            o.buffer_pool_size.to_string(),
            n.buffer_pool_size.to_string(),
        ),
        (
            "admin.address",
            old.admin.address.to_string(),
            new.admin.address.to_string(),
        ),
    ];
    for (key, running, new) in checks {
        if running != new {
            return Err(ReloadError::Static { key, running, new });
        }
    }
    Ok(())
}
