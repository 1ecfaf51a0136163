//! The retry state of one request: attempts left, the `max_retries`
//! breaker, the cluster's retry budget, what may be sent again, and the
//! back-off between tries.

use std::cell::Cell;
use std::time::Instant;

use super::error::HttpError;
use crate::metrics::{ClusterCells, Counter};
use crate::resilience::worker_share;
use crate::resilience::{Overflow, RetryOn, RetryPolicy};
use crate::upstream::Cluster;
use crate::worker::ctx::WorkerCtx;

/// Holds one unit of a gauge until dropped.
pub(super) struct Held<'a>(&'a Counter);

impl<'a> Held<'a> {
    pub(super) fn new(c: &'a Counter) -> Self {
        c.inc();
        Held(c)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The retry state of one request.
pub(super) struct Retries<'a> {
    pub(super) policy: Option<&'a RetryPolicy>,
    pub(super) cluster: &'a Cluster,
    pub(super) cells: &'a ClusterCells,
    pub(super) ctx: &'a WorkerCtx,
    /// Retries granted so far.
    pub(super) done: Cell<u32>,
    /// Why a wanted retry was not sent (access log flag).
    pub(super) refused: Cell<Option<&'static str>>,
    /// The request can be sent again after its bytes reached an upstream:
    /// idempotent, with no body or a buffered one.
    pub(super) resendable: bool,
    /// The request has no body or it was kept: it can be sent again (gRPC
    /// status retries, which the route asked for by name, need no more).
    pub(super) body_kept: bool,
}

impl<'a> Retries<'a> {
    /// The retry state of a request to `cluster` under `policy`; `idempotent`
    /// its method, `body_kept`: it has no body, or the body is held here.
    pub(super) fn new(
        ctx: &'a WorkerCtx,
        cluster: &'a Cluster,
        policy: Option<&'a RetryPolicy>,
        idempotent: bool,
        body_kept: bool,
    ) -> Self {
        Retries {
            policy,
            cluster,
            cells: cluster.stats.worker(ctx.index),
            ctx,
            done: Cell::new(0),
            refused: Cell::new(None),
            resendable: idempotent && body_kept,
            body_kept,
        }
    }

    /// Whether a response with this status should be retried (if granted).
    pub(super) fn wants_status(&self, status: u16) -> bool {
        self.resendable && self.policy.is_some_and(|p| p.retries_status(status))
    }

    /// A gRPC status in a response head that the route retries.
    pub(super) fn wants_grpc(&self, code: u8) -> bool {
        self.body_kept && self.policy.is_some_and(|p| p.retries_grpc(code))
    }

    /// Ask for one more try: attempts left, the `max_retries` breaker and
    /// the retry budget. Counts the retry when granted, the refusal when not.
    pub(super) fn grant(&self) -> bool {
        let Some(p) = self.policy else { return false };
        if self.done.get() >= p.attempts {
            self.refused.set(Some("URX"));
            return false;
        }
        let ctx = self.ctx;
        let share = |max| worker_share(max, ctx.workers, ctx.index);
        // This request's own retry, if one is running, ends before the next
        // starts: it is not another retry in flight.
        let own = u64::from(self.done.get() > 0);
        let others = self.cells.breaker_retries.get().saturating_sub(own);
        if others >= share(self.cluster.breaker.max_retries) {
            self.cells.overflow[Overflow::Retries.index()].inc();
            self.refused.set(Some("RO"));
            return false;
        }
        let budget = &self.cluster.retry_budget;
        let floor = worker_share(
            u64::from(budget.min_retries_per_second) * crate::resilience::budget::WINDOW_SECS,
            ctx.workers,
            ctx.index,
        );
        if !self
            .cells
            .budget
            .withdraw(budget, floor, crate::resilience::now_ms())
        {
            self.cells.retries_budget_refused.inc();
            self.refused.set(Some("RB"));
            return false;
        }
        self.done.set(self.done.get() + 1);
        self.cells.retries.inc();
        true
    }

    /// Whether the answer a retry ended in is one the route retries (the
    /// retry did not succeed, it only got another retryable answer).
    pub(super) fn still_failing(&self, status: u16, grpc: Option<u8>) -> bool {
        self.policy
            .is_some_and(|p| p.retries_status(status) || grpc.is_some_and(|g| p.retries_grpc(g)))
    }

    /// Whether a failure after the request was sent may be retried.
    pub(super) fn retriable_failure(&self, error: &HttpError, proven_unprocessed: bool) -> bool {
        let Some(p) = self.policy else { return false };
        let reset = matches!(error, HttpError::UpstreamIo(_));
        let status = error.status().unwrap_or(502);
        if proven_unprocessed {
            return reset && p.on.contains(RetryOn::RESET);
        }
        self.resendable && p.retries_failure(reset, status)
    }
}

/// Wait the policy's back-off before the next try (cut short by the
/// route's deadline, which then fails the request).
pub(super) async fn backoff(ctx: &WorkerCtx, retries: &Retries<'_>, deadline: Option<Instant>) {
    let Some(p) = retries.policy else { return };
    let wait = p.backoff(retries.done.get());
    if wait.is_zero() {
        return;
    }
    let mut until = Instant::now() + wait;
    if let Some(d) = deadline {
        until = until.min(d);
    }
    let _ = ctx
        .deadlines
        .within(until, std::future::pending::<()>())
        .await;
}
