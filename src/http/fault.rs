//! A route's injected faults, applied before the request is forwarded
//! (route/fault.rs decides; this waits and answers). A delay counts
//! against the route's `timeout`, as in Envoy: a delay longer than what is
//! left of it ends in 504 `upstream_timeout` at the deadline.

use std::time::Instant;

use super::answer::fail;
use super::codec::RequestHead;
use super::downstream::Downstream;
use super::error::HttpError;
use super::exchange::Next;
use super::record::RequestRecord;
use super::retries::Held;
use crate::resilience::worker_share;
use crate::route::fault::{grpc_status_for, Asked, Fault, PER_MILLION};
use crate::route::Route;
use crate::worker::ctx::WorkerCtx;

/// Delay and/or abort this request as the route's `fault` decides; the
/// answer when it was aborted (or timed out while delayed), else `None`
/// (forward it).
pub(super) async fn inject(
    ctx: &WorkerCtx,
    rec: &mut RequestRecord<'_>,
    conn: &mut Downstream,
    head: &RequestHead,
    (route, fault): (&Route, &Fault),
    deadline: Option<Instant>,
) -> Option<Next> {
    let asked = fault
        .header
        .as_ref()
        .and_then(|h| head.header(h))
        .map(|v| Asked::parse(v));
    let decision = fault.decide(asked, || fastrand::u32(..PER_MILLION));
    let cells = route.stats.worker(ctx.index);
    if let Some(delay) = decision.delay {
        if cells.faults_active.get() < worker_share(fault.max_active, ctx.workers, ctx.index) {
            let _held = Held::new(&cells.faults_active);
            cells.faults_delayed.inc();
            rec.delayed = true;
            let until = Instant::now() + delay;
            let (until, timed_out) = match deadline {
                Some(d) if d <= until => (d, true),
                _ => (until, false),
            };
            let _ = ctx
                .deadlines
                .within(until, std::future::pending::<()>())
                .await;
            if timed_out {
                return Some(fail(ctx, rec, conn, head, HttpError::UpstreamTimeout).await);
            }
        } else {
            cells.faults_delay_overflow.inc();
        }
    }
    let abort = decision.abort?;
    cells.faults_aborted.inc();
    let error = HttpError::FaultAbort {
        status: abort.status,
        grpc: abort.grpc_status.unwrap_or(grpc_status_for(abort.status)),
    };
    Some(fail(ctx, rec, conn, head, error).await)
}
