//! Applying a new snapshot to a running [`Server`]: check what cannot change
//! without a restart, bind added listeners on every worker (a failure
//! changes nothing), then publish once and tell the workers which accept
//! loops to start and stop.

use std::sync::Arc;

use super::{bind_listener, Bound, Server, StartError};
use crate::access_log::{self, LogMsg};
use crate::config::{ConfigErrors, Snapshot};
use crate::worker::Command;

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
    #[error("access_log.path: cannot open \"{path}\": {cause}")]
    AccessLog { path: String, cause: std::io::Error },
    #[error("nothing to reload: the config did not come from a file")]
    NoFile,
}

impl Server {
    /// Publish `new` as the next generation, or change nothing and say why.
    pub fn apply(&mut self, mut new: Snapshot) -> Result<Arc<Snapshot>, ReloadError> {
        let old = self.shared.snapshot.load_full();
        check_static(&old, &new)?;
        if let Some(a) = &new.access_log {
            access_log::check_target(&a.target).map_err(|cause| ReloadError::AccessLog {
                path: a.target.to_string(),
                cause,
            })?;
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
                // Moved onto (or renamed at) an address one of our
                // listeners holds: sharing it with ourselves is the point.
                let ours = l.address.port() != 0 && self.bound.iter().any(|b| b.local == l.address);
                let sockets =
                    bind_listener(&l.name, l.address, l.backlog, workers, self.driver, ours)
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
                let _ = c.send(Command::RemoveListener(b.name.clone()));
            }
            self.bound.retain(|x| x.name != b.name);
            tracing::info!(listener = %b.name, address = %b.local, "listener removed; draining its connections");
        }
        for (b, sockets) in added {
            for (c, s) in self.controls.iter().zip(sockets) {
                let _ = c.send(Command::AddListener(s));
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

/// `[runtime]`, `[admin]` and `[metrics]` are fixed for the life of the
/// process.
fn check_static(old: &Snapshot, new: &Snapshot) -> Result<(), ReloadError> {
    let (o, n) = (&old.runtime, &new.runtime);
    let metrics = |s: &Snapshot| {
        s.metrics
            .as_ref()
            .map_or("none".to_string(), |m| m.address.to_string())
    };
    let checks: [(&'static str, String, String); 8] = [
        (
            "runtime.workers",
            o.workers.to_string(),
            n.workers.to_string(),
        ),
        ("runtime.io", o.io.to_string(), n.io.to_string()),
        (
            "runtime.pin_workers",
            o.pin_workers.to_string(),
            n.pin_workers.to_string(),
        ),
        (
            "runtime.drain_timeout",
            crate::config::value::format_duration(o.drain_timeout),
            crate::config::value::format_duration(n.drain_timeout),
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
        ("metrics.address", metrics(old), metrics(new)),
    ];
    for (key, running, new) in checks {
        if running != new {
            return Err(ReloadError::Static { key, running, new });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn snapshot(extra_route: &str, runtime: &str) -> Snapshot {
        let runtime = if runtime.starts_with("workers") {
            runtime.to_string()
        } else {
            format!("workers = 2\n{runtime}")
        };
        let text = format!(
            r#"
[runtime]
{runtime}

[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"

[[routes.r]]
name = "main"
match.path_prefix = "/api"
cluster = "c"
{extra_route}

[clusters.c]
endpoints = ["127.0.0.1:9000", "127.0.0.1:9001"]
"#
        );
        crate::config::compile(Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn counters_follow_names_across_a_reload() {
        let old = snapshot("", "");
        let route = &old.route_tables["r"].routes[0];
        route.stats.worker(1).requests.inc(200);
        old.listeners[0].stats.worker(0).accepted.add(3);
        old.clusters["c"].endpoints[1]
            .stats
            .worker(0)
            .requests
            .add(5);
        // The new config adds a route: "main" keeps its counters, the new
        // route starts at zero.
        let mut new = snapshot("[[routes.r]]\nmatch.path = \"/x\"\ncluster = \"c\"", "");
        new.adopt_stats(&old);
        let routes = &new.route_tables["r"].routes;
        assert_eq!(routes.len(), 2);
        let main = routes.iter().find(|r| r.name == "main").unwrap();
        assert_eq!(main.stats.sum(|c| c.requests.total()), 1);
        let added = routes.iter().find(|r| r.name == "r#1").unwrap();
        assert_eq!(added.stats.sum(|c| c.requests.total()), 0);
        assert!(!std::sync::Arc::ptr_eq(&main.stats, &added.stats));
        assert_eq!(new.listeners[0].stats.sum(|c| c.accepted.get()), 3);
        assert_eq!(
            new.clusters["c"].endpoints[1]
                .stats
                .sum(|c| c.requests.get()),
            5
        );
        assert_eq!(
            new.clusters["c"].endpoints[0]
                .stats
                .sum(|c| c.requests.get()),
            0
        );
    }

    #[test]
    fn static_keys_are_named() {
        let old = snapshot("", "");
        assert!(check_static(
            &old,
            &snapshot("[[routes.r]]\nmatch.path = \"/x\"\ncluster = \"c\"", "")
        )
        .is_ok());
        for (runtime, key) in [
            ("io = \"epoll\"", "runtime.io"),
            ("pin_workers = false", "runtime.pin_workers"),
            ("buffer_size = 8192", "runtime.buffer_size"),
            ("buffer_pool_size = 7", "runtime.buffer_pool_size"),
        ] {
            let err = check_static(&old, &snapshot("", runtime))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(key), "{err}");
        }
        // Values as the config writes them, not Rust's debug form.
        let err = check_static(&old, &snapshot("", "workers = 3"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("(running: 2, new: 3)"), "{err}");
        let err = check_static(&old, &snapshot("", "drain_timeout = \"1500ms\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("new: \"1500ms\")"), "{err}");
        let err = check_static(&old, &snapshot("", "io = \"io_uring\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("new: \"io_uring\")"), "{err}");
    }
}
