//! The `outrigger-control` thread: the one owner of the [`Server`]. Signals,
//! the file watcher and the admin API send it [`Event`]s; it reloads,
//! drains, and decides the exit status.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{
    Event, ReloadDone, ReloadError, ReloadOutcome, Server, Shared, SignalWatch, StartError,
    EXIT_FORCED,
};
use crate::config::{self, Snapshot};

mod reloading;

/// How the proxy is run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The file the config came from; reloads read it again. `None` (the
    /// demo's embedded config) makes every reload fail with a message.
    pub config_path: Option<PathBuf>,
    /// Watch the file's directory and reload on changes.
    pub watch: bool,
}

/// Quiet time after a file event before the file is read: editors and
/// ConfigMap updates touch several files in a burst.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// A proxy with its control thread, admin API and watchers running.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    inbox: flume::Sender<Event>,
    thread: Option<JoinHandle<i32>>,
    admin: crate::admin::AdminHandle,
    /// The `[metrics]` listener, when configured.
    metrics: Option<crate::admin::AdminHandle>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Bind the admin API, start the workers, the watcher and the control
    /// thread. `signals`, when given, are forwarded to the control thread.
    pub fn launch(
        snapshot: Snapshot,
        options: Options,
        signals: Option<SignalWatch>,
    ) -> Result<Proxy, StartError> {
        let admin_address = snapshot.admin.address;
        let admin_listener =
            std::net::TcpListener::bind(admin_address).map_err(|cause| StartError::Admin {
                address: admin_address,
                cause,
            })?;
        for w in snapshot.warnings() {
            tracing::warn!("{w}");
        }
        // The admin API answers from the start: /healthz 200, /ready 503
        // until every worker serves every listener.
        let (inbox, events) = flume::unbounded();
        let admin = crate::admin::spawn(admin_listener, inbox.clone(), crate::admin::Scope::Admin)
            .map_err(StartError::Spawn)?;
        let metrics = match snapshot.metrics.as_ref().map(|m| m.address) {
            None => None,
            Some(address) => {
                let bound = std::net::TcpListener::bind(address)
                    .map_err(|cause| StartError::Metrics { address, cause })
                    .and_then(|l| {
                        crate::admin::spawn(l, inbox.clone(), crate::admin::Scope::Metrics)
                            .map_err(StartError::Spawn)
                    });
                match bound {
                    Ok(h) => Some(h),
                    Err(e) => {
                        admin.stop();
                        return Err(e);
                    }
                }
            }
        };
        let server = match super::start(snapshot) {
            Ok(s) => s,
            Err(e) => {
                admin.stop();
                if let Some(m) = &metrics {
                    m.stop();
                }
                return Err(e);
            }
        };
        let shared = server.shared().clone();
        admin.set_ready(shared.clone());
        if let Some(m) = &metrics {
            m.set_ready(shared.clone());
            tracing::info!(address = %m.address(), "metrics listening (read-only)");
        }
        let stop = Arc::new(AtomicBool::new(false));
        tracing::info!(address = %admin.address(), "admin API listening");
        if let (true, Some(path)) = (options.watch, &options.config_path) {
            let files = inbox.clone();
            let changed = Box::new(move || files.send(Event::FileChanged).is_ok());
            super::watch::spawn(path, shared.snapshot.clone(), changed, stop.clone())
                .map_err(StartError::Spawn)?;
        }
        if let Some(s) = signals {
            s.forward(inbox.clone()).map_err(StartError::Spawn)?;
        }
        let updates = inbox.clone();
        crate::discovery::spawn(Arc::downgrade(&shared.snapshot), move |u| {
            updates.send(Event::Discovered(u)).is_ok()
        })
        .map_err(StartError::Spawn)?;
        let xds_reports = inbox.clone();
        crate::xds::spawn(
            Arc::downgrade(&shared.snapshot),
            Box::new(move |r| {
                xds_reports
                    .send(match r {
                        crate::xds::Report::Apply(a) => Event::Xds(a),
                        crate::xds::Report::Endpoints(u) => Event::DiscoveredMany(u),
                    })
                    .is_ok()
            }),
            shared.xds.clone(),
        )
        .map_err(StartError::Spawn)?;
        let keep = inbox.clone();
        let thread = std::thread::Builder::new()
            .name("outrigger-control".into())
            .spawn(move || {
                let _keep = keep;
                crate::rt::deprioritize_current_thread();
                Control::new(server, options).run(&events)
            })
            .map_err(StartError::Spawn)?;
        Ok(Proxy {
            shared,
            inbox,
            thread: Some(thread),
            admin,
            metrics,
            stop,
        })
    }

    /// The admin API's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.address()
    }

    /// The `[metrics]` listener's bound address, when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .map(crate::admin::AdminHandle::address)
    }

    /// A listener's bound address as of now (reloads may add listeners).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.shared
            .addresses
            .load()
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, a)| *a)
    }

    /// Counters, snapshot and workers.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Reload from the config file now, as `POST /reload` does.
    pub fn reload(&self) -> ReloadOutcome {
        let (tx, rx) = flume::bounded(1);
        self.inbox
            .send(Event::Reload(Some(tx)))
            .map_err(|_| "the control thread has exited".to_string())?;
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| "no answer from the control thread".to_string())?
    }

    /// Start draining, as SIGTERM does.
    pub fn drain(&self) {
        self.drain_because("drain requested");
    }

    /// Start draining; `trigger` names why in the log.
    pub fn drain_because(&self, trigger: &'static str) {
        let _ = self.inbox.send(Event::Drain(trigger));
    }

    /// Wait for the control thread to finish; returns the exit status.
    pub fn wait(mut self) -> i32 {
        let code = self.thread.take().map_or(1, |t| t.join().unwrap_or(1));
        self.stop.store(true, Ordering::Relaxed);
        code
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.admin.stop();
        if let Some(m) = &self.metrics {
            m.stop();
        }
        if let Some(t) = self.thread.take() {
            let _ = self.inbox.send(Event::Drain("shutdown"));
            let _ = t.join();
        }
    }
}

/// The control thread's state.
struct Control {
    server: Server,
    options: Options,
    drain_deadline: Option<Instant>,
    file_due: Option<Instant>,
    /// When inbound listeners stop accepting during a drain.
    inbound_until: Option<Instant>,
    /// Exit as soon as the drain leaves no connection.
    exit_when_idle: bool,
    /// What the xDS client adds to the config file, compiled with it on
    /// every reload.
    xds_overlay: String,
    /// The config file's content hash and error when a file-change reload
    /// last failed: the same content failing the same way is not reported
    /// (logged, counted) again.
    rejected: Option<(u64, String)>,
}

impl Control {
    fn new(server: Server, options: Options) -> Self {
        Control {
            server,
            options,
            drain_deadline: None,
            file_due: None,
            inbound_until: None,
            exit_when_idle: false,
            xds_overlay: String::new(),
            rejected: None,
        }
    }

    /// Serve events until drained; returns the exit status: 0 after a drain
    /// (complete or timed out), [`EXIT_FORCED`] when a second signal
    /// arrived, 1 when the workers died on their own.
    fn run(mut self, events: &flume::Receiver<Event>) -> i32 {
        loop {
            match events.recv_timeout(Duration::from_millis(20)) {
                Ok(Event::Signal(sig)) => {
                    if self.drain_deadline.is_some() {
                        tracing::warn!(
                            signal = signal_name(sig),
                            open_connections = self.server.active_connections(),
                            "second signal: exiting now"
                        );
                        return EXIT_FORCED;
                    }
                    self.start_drain(signal_name(sig));
                }
                Ok(Event::Drain(trigger)) => {
                    if self.drain_deadline.is_none() {
                        self.start_drain(trigger);
                    }
                }
                Ok(Event::Discovered(update)) => self.apply_discovery(vec![update]),
                Ok(Event::DiscoveredMany(updates)) => self.apply_discovery(updates),
                Ok(Event::Xds(a)) => {
                    let outcome = self.apply_xds(a.overlay);
                    let _ = a.reply.send(outcome);
                }
                Ok(Event::DrainWhenIdle) => {
                    self.exit_when_idle = true;
                    if self.drain_deadline.is_none() {
                        self.start_drain("POST /drain?exit_when_idle=1");
                    }
                }
                Ok(Event::FileChanged) => self.file_due = Some(Instant::now() + DEBOUNCE),
                Ok(Event::Reload(reply)) => {
                    let outcome = self.reload(
                        Instant::now(),
                        if reply.is_some() { "admin" } else { "SIGHUP" },
                    );
                    if let Some(r) = reply {
                        let _ = r.send(outcome);
                    }
                }
                Err(_) => {}
            }
            if self.inbound_until.is_some_and(|d| Instant::now() >= d) {
                self.inbound_until = None;
                tracing::info!("inbound drain delay over; inbound listeners stop accepting");
                self.server.drain();
            }
            if self.file_due.is_some_and(|d| Instant::now() >= d) {
                self.file_due = None;
                self.reload_if_changed();
            }
            if let Some(code) = self.check_exit() {
                // After a drain timeout the workers still run: exit without
                // them (the process ends); otherwise wait for the log writer.
                if self.server.finished() {
                    self.server.join();
                }
                return code;
            }
        }
    }

    /// Publish discovery updates as one new generation (the clusters with
    /// their new endpoints; everything else as it is).
    fn apply_discovery(&mut self, updates: Vec<crate::discovery::Update>) {
        if self.drain_deadline.is_some() {
            return;
        }
        let current = self.server.snapshot();
        let workers = current.runtime.worker_count();
        let mut next = current.derive();
        let mut applied = Vec::new();
        for u in updates {
            let Some(cluster) = current.clusters.get(&u.cluster) else {
                continue;
            };
            // A reload may have changed the cluster's source since.
            if crate::discovery::key(&u.cluster, &cluster.source) != u.key {
                continue;
            }
            let updated = cluster.with_endpoints(&u.endpoints, workers);
            next.clusters.insert(u.cluster.clone(), Arc::new(updated));
            applied.push((u, cluster.clone()));
        }
        if applied.is_empty() {
            return;
        }
        match self.server.apply(next) {
            Ok(published) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let remembered: Vec<(&str, &[crate::discovery::Found])> = applied
                    .iter()
                    .map(|(u, _)| (u.key.as_str(), u.endpoints.as_slice()))
                    .collect();
                crate::discovery::remember_many(&remembered);
                for (_, cluster) in &applied {
                    cluster.status.updates.fetch_add(1, Ordering::Relaxed);
                    cluster.status.last_update.store(now, Ordering::Relaxed);
                }
                if let [(u, _)] = applied.as_slice() {
                    tracing::info!(
                        cluster = %u.cluster,
                        endpoints = u.endpoints.len(),
                        generation = published.generation,
                        "discovery: endpoints changed"
                    );
                } else {
                    tracing::info!(
                        clusters = applied.len(),
                        generation = published.generation,
                        "discovery: endpoints changed"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(clusters = applied.len(), error = %e, "discovery update not applied")
            }
        }
    }

    /// Compile the running config file's text with a new xDS overlay and
    /// publish it. Errors come back by config key so that the xDS client
    /// can NACK the resources they belong to.
    fn apply_xds(&mut self, overlay: String) -> Result<u64, Vec<(String, String)>> {
        if self.drain_deadline.is_some() {
            return Err(vec![(
                String::new(),
                "draining: updates are refused".into(),
            )]);
        }
        let running = self.server.snapshot();
        let compiled =
            config::compile_with(&running.source, &running.text, &overlay).map_err(|e| {
                e.0.into_iter()
                    .map(|e| (e.key.clone(), e.to_string()))
                    .collect::<Vec<_>>()
            })?;
        let published = self.server.apply(compiled).map_err(|e| {
            let key = match &e {
                ReloadError::Bind(StartError::Bind { listener, .. }) => {
                    format!("listeners.{listener}")
                }
                _ => String::new(),
            };
            vec![(key, e.to_string())]
        })?;
        self.xds_overlay = overlay;
        tracing::info!(
            generation = published.generation,
            summary = %published.summary(),
            "xds: new config published"
        );
        Ok(published.generation)
    }

    fn start_drain(&mut self, why: &str) {
        let snapshot = self.server.snapshot();
        let runtime = &snapshot.runtime;
        let timeout = runtime.drain_timeout;
        self.exit_when_idle |= runtime.exit_when_idle;
        let inbound: Vec<String> = snapshot
            .listeners
            .iter()
            .filter(|l| l.inbound)
            .map(|l| l.name.clone())
            .collect();
        let delay = runtime.drain_inbound_delay;
        tracing::info!(
            trigger = why,
            open_connections = self.server.active_connections(),
            ?timeout,
            inbound_delay = ?delay,
            "draining: stopped accepting, waiting for open connections"
        );
        if delay.is_zero() || inbound.is_empty() {
            self.server.drain();
        } else {
            // Inbound listeners accept a while longer: the endpoints
            // controller takes the pod out of rotation first.
            self.server.drain_except(&inbound);
            self.inbound_until = Some(Instant::now() + delay);
        }
        self.drain_deadline = Some(Instant::now() + delay + timeout);
    }

    fn check_exit(&self) -> Option<i32> {
        let waiting_out =
            !self.exit_when_idle && self.drain_deadline.is_some_and(|d| Instant::now() < d);
        if self.server.finished() && !waiting_out {
            if self.drain_deadline.is_none() {
                tracing::error!("workers exited unexpectedly");
                return Some(1);
            }
            tracing::info!("drained; exiting");
            return Some(0);
        }
        if self.drain_deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(
                open_connections = self.server.active_connections(),
                "drain timeout reached; exiting with connections still open"
            );
            return Some(0);
        }
        None
    }
}

/// The name of a signal the control thread handles (`SIGTERM`, ...).
fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        _ => "a signal",
    }
}
