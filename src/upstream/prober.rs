//! Active health checks: one prober thread for the whole proxy (a host
//! with 64 workers sends one probe per endpoint and interval, not 64). It
//! runs a small monoio runtime of its own (epoll), one task per checked
//! endpoint, and writes each verdict into the endpoint's
//! [`EndpointHealth`](crate::resilience::EndpointHealth), which the
//! workers read with one relaxed load.
//!
//! The set of probed endpoints follows the current snapshot: reconciled
//! every 250 ms, so an endpoint added by a reload is probed at once, and a
//! removed one stops being probed. The thread ends when the proxy's
//! snapshot is gone (every worker and the control side exited).

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Weak;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::snapshot::Snapshot;

/// How often the set of probed endpoints is compared with the snapshot.
const RECONCILE: Duration = Duration::from_millis(250);

/// Start the prober thread.
pub fn spawn(snapshot: Weak<ArcSwap<Snapshot>>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("outrigger-health".into())
        .spawn(move || {
            crate::rt::deprioritize_current_thread();
            let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            match rt {
                Ok(mut rt) => rt.block_on(run(snapshot)),
                Err(e) => tracing::error!(error = %e, "cannot start the health check runtime"),
            }
        })
}

type Key = (String, SocketAddr);

async fn run(weak: Weak<ArcSwap<Snapshot>>) {
    let mut probes: HashMap<Key, Rc<Cell<bool>>> = HashMap::new();
    loop {
        let Some(swap) = weak.upgrade() else { break };
        let snapshot = swap.load_full();
        drop(swap);
        let mut wanted = HashSet::new();
        for (name, c) in &snapshot.clusters {
            if c.health_check.is_some() {
                for ep in &c.endpoints {
                    wanted.insert((name.clone(), ep.address));
                }
            }
        }
        drop(snapshot);
        probes.retain(|k, stop| {
            let keep = wanted.contains(k);
            if !keep {
                stop.set(true);
            }
            keep
        });
        for key in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = probes.entry(key) {
                let stop = Rc::new(Cell::new(false));
                monoio::spawn(probe_loop(weak.clone(), slot.key().clone(), stop.clone()));
                slot.insert(stop);
            }
        }
        monoio::time::sleep(RECONCILE).await;
    }
    for stop in probes.values() {
        stop.set(true);
    }
}

/// Probe one endpoint every `interval` while its cluster checks it.
async fn probe_loop(weak: Weak<ArcSwap<Snapshot>>, key: Key, stop: Rc<Cell<bool>>) {
    let (cluster, addr) = key;
    while !stop.get() {
        let Some(swap) = weak.upgrade() else { return };
        let snapshot = swap.load_full();
        drop(swap);
        let Some(c) = snapshot.clusters.get(&cluster) else {
            return;
        };
        let Some(ep) = c.endpoints.iter().find(|e| e.address == addr) else {
            return;
        };
        let Some(check) = c.health_check.clone() else {
            return;
        };
        let health = ep.health.clone();
        let host = check.host.clone().unwrap_or_else(|| ep.written.clone());
        let tls = c
            .tls
            .as_ref()
            .and_then(|t| t.name_for(&ep.written).map(|n| (t.clone(), n)));
        let protocol = c.protocol;
        drop(snapshot);
        let target = super::probe::Target {
            addr,
            host: &host,
            tls,
            protocol,
        };
        let result = super::probe::probe(&check, target).await;
        if let Err(why) = &result {
            tracing::debug!(%cluster, endpoint = %addr, reason = %why, "health check failed");
        }
        match health.probe_result(result.is_ok(), &check) {
            Some(false) => tracing::warn!(
                %cluster, endpoint = %addr, failures = check.unhealthy_threshold,
                reason = %result.err().map(|e| e.to_string()).unwrap_or_default(),
                "endpoint failed its health checks; it gets no traffic"
            ),
            Some(true) => tracing::info!(
                %cluster, endpoint = %addr, "endpoint passes its health checks again"
            ),
            None => {}
        }
        monoio::time::sleep(check.interval).await;
    }
}
