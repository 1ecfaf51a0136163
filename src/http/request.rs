//! One request, on HTTP/1.1 or HTTP/2 alike: its path normalised, its
//! route found on the current snapshot, the route's policies admitted
//! (authorization, rate limits, faults), then answered directly or
//! forwarded (`forward`), recorded and traced. `server` (HTTP/1.1) and
//! `h2` (one task per stream) both call [`handle_request`].

use std::rc::Rc;
use std::sync::Arc;

use super::admit::{admit, request_timeout, start_trace};
use super::answer::{direct, fail};
use super::codec::{Framing, RequestHead};
use super::downstream::Downstream;
use super::error::HttpError;
use super::exchange::{Forward, Next, UpstreamRecord};
use super::grpc_answer::{self, Web};
use super::record::{Mark, RequestRecord};
use crate::route::RouteAction;
use crate::snapshot::{Listener, Snapshot};
use crate::worker::ctx::{ListenerHandle, WorkerCtx};

/// The snapshot and listener a connection was accepted with.
#[derive(Clone, Copy)]
pub(super) struct AcceptedOn<'a> {
    pub(super) snapshot: &'a Arc<Snapshot>,
    pub(super) listener: &'a Listener,
}

/// Route and answer one request. The listener's newest settings are used
/// when it still exists; a request on a listener a reload removed is
/// answered with the snapshot of its accept, and the connection closes.
pub(super) async fn handle_request(
    ctx: &Rc<WorkerCtx>,
    handle: &ListenerHandle,
    accepted: AcceptedOn<'_>,
    conn: &mut Downstream,
    head: RequestHead,
    mark: Mark,
) -> Next {
    // Each request sees the snapshot current when it arrives.
    let current = ctx.current();
    // Removed by a reload, or no longer http: answer on the snapshot of the
    // accept (its routes and clusters), then close.
    let now = current
        .listener(&handle.name)
        .filter(|l| l.protocol.routes().is_some());
    let http_now = now.is_some();
    let (snapshot, listener): (&Snapshot, &Listener) = match now {
        Some(l) => (&current, l),
        None => (accepted.snapshot, accepted.listener),
    };
    let mut up = UpstreamRecord::default();
    conn.responded = false;
    conn.body_complete = matches!(head.framing, Framing::None | Framing::Length(0));
    let mut rec = RequestRecord::new(listener, mark);
    // One reading of the path for routing, authorization and the upstream
    // (docs/security.md, "One path"): the head carries the normalised
    // target from here on.
    let mut head = head;
    let next = match super::normalize::normalized(&head.target, listener.http.paths) {
        Ok(normal) => {
            if let Some(t) = normal {
                head.target = t;
            }
            route_and_answer(ctx, snapshot, &mut rec, conn, &head, &mut up).await
        }
        Err(e) => fail(ctx, &mut rec, conn, &head, HttpError::BadRequest(e.text())).await,
    };
    if let Some(trace) = up.trace.as_ref().filter(|t| t.sampled) {
        ctx.export_span(super::spans::server_span(trace, &rec, conn, &head, &up));
    }
    rec.finish(ctx, snapshot, conn, Some((&head, &up)));
    match next {
        Next::KeepAlive if !http_now => Next::Close,
        other => other,
    }
}

async fn route_and_answer<'a>(
    ctx: &Rc<WorkerCtx>,
    snapshot: &'a Snapshot,
    rec: &mut RequestRecord<'a>,
    conn: &mut Downstream,
    head: &RequestHead,
    up: &mut UpstreamRecord,
) -> Next {
    let http = &rec.listener.http;
    let route = match admit(ctx, snapshot, rec, conn, head) {
        Ok(route) => route,
        Err(e) => return fail(ctx, rec, conn, head, e).await,
    };
    if let Some(t) = &snapshot.tracing {
        up.trace = Some(start_trace(t, rec, conn, head, route));
    }
    if let Some(limit) = &route.rate_limit {
        if let Err(wait) = limit.acquire() {
            route.stats.worker(ctx.index).rate_limited.inc();
            return fail(ctx, rec, conn, head, HttpError::RateLimited(wait)).await;
        }
    }
    let grpc = grpc_answer::is_grpc(head);
    let timeout = request_timeout(route, head, grpc);
    // Injected faults (route `fault`): a delay counts against the timeout.
    if let Some(fault) = &route.fault {
        let deadline = timeout.map(|t| rec.mark.at + t);
        let injected = (route, fault);
        if let Some(next) = super::fault::inject(ctx, rec, conn, head, injected, deadline).await {
            return next;
        }
    }
    // gRPC-Web: CORS preflights are answered here, calls become gRPC.
    let mut web = None;
    let mut preset = None;
    let translated;
    // Errors are answered in the client's form (gRPC-Web included).
    let original = head;
    let mut head = head;
    if let Some(origins) = &route.grpc_web {
        match grpc_answer::web_request(head, conn, http, origins).await {
            Ok(Web::Preflight) => {
                rec.status = 204;
                return grpc_answer::preflight(conn, head, origins).await;
            }
            Ok(Web::Call(h, body, call)) => {
                translated = h;
                head = &translated;
                preset = body;
                web = Some(call);
            }
            Ok(Web::Plain) => {}
            Err(e) => return fail(ctx, rec, conn, head, e).await,
        }
    }
    let result = match &route.action {
        RouteAction::Direct { status, body } => {
            rec.status = *status;
            let closing = ctx.closing(&conn.handle);
            direct(conn, head, *status, body, closing).await
        }
        action => {
            let name = action.pick_cluster().unwrap_or_default();
            rec.cluster = Some(name);
            // Copies to the route's mirrors, started before the primary
            // (which then sends the body a mirror made them read).
            if !route.mirrors.is_empty() {
                if let Err(e) =
                    super::mirror::start(ctx, snapshot, route, head, conn, &mut preset).await
                {
                    return fail(ctx, rec, conn, original, e).await;
                }
            }
            let req = Forward {
                ctx,
                http,
                snapshot,
                route,
                head,
                started: rec.mark.at,
                timeout,
                grpc,
                web: web.as_ref(),
                body: preset.as_ref(),
            };
            // The route timeout covers the whole exchange: connecting,
            // reading the client's body, the upstream's answer and sending
            // it back. Upstream reads honour it exactly (`Exchange::remaining`);
            // this coarse deadline (up to ~100 ms late) catches the rest.
            // The forward future (several KiB) is built where it is awaited:
            // bound to a local first, it was copied once more per request.
            match timeout {
                Some(t) => ctx
                    .deadlines
                    .within(
                        rec.mark.at + t,
                        super::forward::forward(req, name, conn, up),
                    )
                    .await
                    .unwrap_or(Err(HttpError::UpstreamTimeout)),
                None => super::forward::forward(req, name, conn, up).await,
            }
        }
    };
    if up.status.get() != 0 {
        rec.status = up.status.get();
    }
    rec.retry_flag = up.retry_flag.get();
    match result {
        Ok(Next::KeepAlive) if head.keep_alive => Next::KeepAlive,
        Ok(Next::KeepAlive) => Next::Close,
        Ok(next) => next,
        Err(e) => {
            tracing::debug!(route = %route.name, error = %e, "request failed");
            fail(ctx, rec, conn, original, e).await
        }
    }
}
