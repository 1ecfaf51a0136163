//! The xDS client's families of the Prometheus exposition (only when the
//! config has `[xds]`).

use std::sync::atomic::Ordering::Relaxed;

use super::Prom;
use crate::snapshot::Snapshot;
use crate::xds::{Kind, XdsStatus};

pub(super) fn xds_metrics(p: &mut Prom, s: &Snapshot, st: &XdsStatus) {
    if s.xds.is_none() {
        return;
    }
    p.family(
        "outrigger_xds_connected",
        "gauge",
        "1 while the ADS stream to the management server is open.",
    );
    p.sample(
        "outrigger_xds_connected",
        &[],
        u64::from(st.connected.load(Relaxed)),
    );
    p.family(
        "outrigger_xds_streams_total",
        "counter",
        "ADS streams opened to the management server.",
    );
    p.sample(
        "outrigger_xds_streams_total",
        &[],
        st.connects.load(Relaxed),
    );
    p.family(
        "outrigger_xds_stream_failures_total",
        "counter",
        "Connection attempts and ADS streams that failed (each followed by a back-off and a reconnect).",
    );
    p.sample(
        "outrigger_xds_stream_failures_total",
        &[],
        st.failures.load(Relaxed),
    );
    p.family(
        "outrigger_xds_updates_total",
        "counter",
        "xDS responses handled, by type and answer (ack: all applied; nack: some resources rejected).",
    );
    for k in Kind::ALL {
        let t = &st.types[k.index()];
        p.sample(
            "outrigger_xds_updates_total",
            &[("type", k.name()), ("result", "ack")],
            t.acks.load(Relaxed),
        );
        p.sample(
            "outrigger_xds_updates_total",
            &[("type", k.name()), ("result", "nack")],
            t.nacks.load(Relaxed),
        );
    }
    p.family(
        "outrigger_xds_resources",
        "gauge",
        "xDS resources held, by type.",
    );
    for k in Kind::ALL {
        p.sample(
            "outrigger_xds_resources",
            &[("type", k.name())],
            st.types[k.index()].resources.load(Relaxed),
        );
    }
}
