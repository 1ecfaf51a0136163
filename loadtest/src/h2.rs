//! The HTTP/2 generator (`outrigger-load http --h2`): prior knowledge on
//! http://, ALPN `h2` on https://; `--streams` concurrent streams on each
//! of `-c` connections, each stream a closed loop (or paced at its share of
//! `-R`). The `h2` crate runs on the generator's own monoio runtime, as in
//! the proxy. Also `serve http --h2`: an HTTP/2 test upstream (optionally
//! answering like a gRPC server, with trailers).

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use monoio::net::TcpStream;
use outrigger::http::h2::io::ConnIo;

use crate::http::{collect, prepare, window, HttpArgs, Target, Window};
use crate::pacer::{Pace, PacerKind, Schedule};
use crate::report::{Report, ThreadResult};

/// What every stream task of a thread reads.
struct Plan {
    target: Target,
    request: http::Request<()>,
    body: Option<Bytes>,
    timeout: Duration,
    streams: usize,
    /// Open loop: interval between one stream's intended sends.
    interval: Option<Duration>,
    pacer: PacerKind,
    measure_from: Instant,
    end: Instant,
}

/// Run the load and build the report.
pub fn run(args: HttpArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.streams >= 1, "--streams must be at least 1");
    let driver = args.load.io.driver()?;
    let conns = args.load.connections.max(1);
    let threads = args.load.threads.max(1).min(conns);
    let Window {
        start,
        measure_from,
        end,
    } = window(&args);
    let total_streams = conns * args.streams;
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(total_streams as f64 / r.max(1e-3)));
    let request_len = prepare(&args)?.request.len();
    let mut handles = Vec::new();
    for t in 0..threads {
        let n_conns = conns / threads + usize::from(t < conns % threads);
        // Each stream's share of -n.
        let budgets: Vec<Vec<Option<u64>>> = (0..n_conns)
            .map(|i| {
                (0..args.streams)
                    .map(|s| {
                        let global = (t + i * threads) * args.streams + s;
                        args.requests.map(|n| {
                            n / total_streams as u64
                                + u64::from((global as u64) < n % total_streams as u64)
                        })
                    })
                    .collect()
            })
            .collect();
        let target = prepare(&args)?;
        let scheme = if target.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut builder = http::Request::builder()
            .method(args.method.as_str())
            .uri(format!("{scheme}://{}{}", target.authority, target.path));
        for h in &args.headers {
            let (n, v) = h.split_once(':').unwrap_or((h, ""));
            builder = builder.header(n.trim(), v.trim());
        }
        let request = builder
            .body(())
            .map_err(|e| anyhow::anyhow!("invalid request: {e}"))?;
        let body = target.body.clone().map(Bytes::from);
        let plan = Plan {
            target,
            request,
            body,
            timeout: args.timeout,
            streams: args.streams,
            interval,
            pacer: args.pacer,
            measure_from,
            end,
        };
        handles.push(
            args.load
                .spawn(t, driver, move || thread_main(plan, budgets, start))?,
        );
    }
    let mode = format!("http2 ({} streams per connection)", args.streams);
    collect(&args, handles, start, mode, request_len, conns)
}

async fn thread_main(plan: Plan, budgets: Vec<Vec<Option<u64>>>, start: Instant) -> ThreadResult {
    if plan.interval.is_some() {
        crate::pacer::precise_timers_for_this_thread();
    }
    let plan = Rc::new(plan);
    let mut fresh = ThreadResult::new();
    fresh.origin = plan.measure_from;
    if budgets.iter().flatten().all(Option::is_none) {
        fresh.window_end = Some(plan.end);
    }
    let result = Rc::new(RefCell::new(fresh));
    monoio::time::sleep(start.saturating_duration_since(Instant::now())).await;
    let mut tasks = Vec::new();
    let all = (budgets.len() * plan.streams).max(1);
    // Open loop: every stream of the thread shares one schedule (pacer.rs).
    let Ok(schedule) = Schedule::open_loop(plan.pacer, start, plan.interval, all) else {
        result.borrow_mut().error("pacer");
        return std::mem::replace(&mut *result.borrow_mut(), ThreadResult::new());
    };
    for (i, streams) in budgets.into_iter().enumerate() {
        let (plan, result, schedule) = (plan.clone(), result.clone(), schedule.clone());
        tasks.push(monoio::spawn(async move {
            connection(&plan, &result, streams, schedule, i).await
        }));
    }
    monoio::time::sleep(plan.measure_from.saturating_duration_since(Instant::now())).await;
    let cpu0 = crate::tcp::thread_cpu_seconds();
    for t in tasks {
        t.await;
    }
    let mut r = std::mem::replace(&mut *result.borrow_mut(), ThreadResult::new());
    r.cpu_seconds = crate::tcp::thread_cpu_seconds() - cpu0;
    r
}

/// Open an HTTP/2 connection (TLS with ALPN `h2` on https://).
async fn open(plan: &Plan) -> Result<SendRequest<Bytes>, &'static str> {
    let tcp = TcpStream::connect_addr(plan.target.addr)
        .await
        .map_err(|_| "connect")?;
    let _ = tcp.set_nodelay(true);
    let io = match &plan.target.tls {
        None => {
            let poll = tcp.try_into_poll_io().map_err(|_| "connect")?;
            ConnIo::plain(poll, BytesMut::new())
        }
        Some((config, name)) => {
            let t = crate::tls::TlsConn::connect(tcp, config.clone(), name.clone())
                .await
                .map_err(|_| "tls")?;
            let (tcp, session) = t.into_parts();
            if session.alpn_protocol() != Some(b"h2") {
                return Err("no-h2-alpn");
            }
            let poll = tcp.try_into_poll_io().map_err(|_| "connect")?;
            ConnIo::tls(poll, session, BytesMut::new())
        }
    };
    let (send, conn) = h2::client::Builder::new()
        .initial_max_send_streams(plan.streams)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|_| "h2-handshake")?;
    monoio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// One connection and its streams; reconnects when it fails.
async fn connection(
    plan: &Plan,
    result: &RefCell<ThreadResult>,
    mut budgets: Vec<Option<u64>>,
    schedule: Option<Schedule>,
    index: usize,
) {
    while Instant::now() < plan.end && budgets.iter().any(|b| *b != Some(0)) {
        let send = match monoio::time::timeout(plan.timeout, open(plan)).await {
            Ok(Ok(s)) => s,
            Ok(Err(kind)) => {
                result.borrow_mut().error(kind);
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(_) => {
                result.borrow_mut().error("connect");
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = RefCell::new(std::mem::take(&mut budgets));
        // The streams run together inside this task (no spawn: they
        // borrow the plan and the results).
        let mut streams: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>> =
            Vec::new();
        for s in 0..plan.streams {
            // The thread's streams share one schedule, spread over one
            // interval; a reconnected stream starts it again.
            let pace = match schedule
                .as_ref()
                .map(|sc| sc.pace(index * plan.streams + s))
                .transpose()
            {
                Ok(p) => p,
                Err(_) => {
                    result.borrow_mut().error("pacer");
                    continue;
                }
            };
            streams.push(Box::pin(stream(
                plan,
                result,
                send.clone(),
                &shared,
                s,
                pace,
            )));
        }
        join_all(streams).await;
        budgets = shared.into_inner();
    }
}

/// Poll every future until all are done.
async fn join_all(mut futures: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>>) {
    poll_fn(|cx| {
        futures.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futures.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

/// One stream slot: requests one after another (or paced) until the end,
/// its budget, or a connection failure.
async fn stream(
    plan: &Plan,
    result: &RefCell<ThreadResult>,
    mut send: SendRequest<Bytes>,
    budgets: &RefCell<Vec<Option<u64>>>,
    slot: usize,
    mut pace: Option<Pace>,
) {
    while Instant::now() < plan.end && budgets.borrow()[slot] != Some(0) {
        let intended = match &mut pace {
            Some(p) => {
                let (at, behind) = p.next().await;
                result.borrow_mut().behind_schedule += u64::from(behind);
                at
            }
            None => Instant::now(),
        };
        let sent = Instant::now();
        let outcome = monoio::time::timeout(plan.timeout, exchange(plan, &mut send)).await;
        let done = Instant::now();
        if let Some(b) = budgets.borrow_mut()[slot].as_mut() {
            *b -= 1;
        }
        let mut r = result.borrow_mut();
        match outcome {
            Ok(Ok((status, len))) => {
                if sent >= plan.measure_from && r.record(intended, sent, done, len) {
                    r.status(status);
                    if plan.interval.is_some() {
                        r.lateness(intended, sent);
                    }
                }
                r.last_done = r.last_done.max(done);
            }
            Ok(Err(kind)) => {
                r.error(kind);
                // The connection failed: reconnect (the caller).
                if kind != "reset" {
                    return;
                }
            }
            Err(_) => r.error("timeout"),
        }
    }
}

/// One request on a new stream; the response read to its end.
/// One request on a new stream and its whole response: the status and the
/// response body's length.
async fn exchange(
    plan: &Plan,
    send: &mut SendRequest<Bytes>,
) -> Result<(u16, usize), &'static str> {
    poll_fn(|cx| send.poll_ready(cx))
        .await
        .map_err(|_| "connection")?;
    let mut req = http::Request::new(());
    *req.method_mut() = plan.request.method().clone();
    *req.uri_mut() = plan.request.uri().clone();
    *req.headers_mut() = plan.request.headers().clone();
    let end = plan.body.is_none();
    let (response, mut tx) = send.send_request(req, end).map_err(|_| "connection")?;
    if let Some(b) = &plan.body {
        outrigger::http::h2::stream::send_flow(&mut tx, b.clone(), true)
            .await
            .map_err(|_| "reset")?;
    }
    let resp = response.await.map_err(|_| "reset")?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut len = 0;
    while let Some(chunk) = poll_fn(|cx| body.poll_data(cx)).await {
        let chunk = chunk.map_err(|_| "reset")?;
        len += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let _ = poll_fn(|cx| body.poll_trailers(cx)).await;
    Ok((status, len))
}

/// `serve http --h2`: an HTTP/2 (prior knowledge) upstream answering every
/// request with `body` (after reading its body); `grpc` adds
/// `content-type: application/grpc` and `grpc-status: 0` trailers.
pub fn serve(
    addr: SocketAddr,
    threads: usize,
    driver: outrigger::worker::Driver,
    body: Bytes,
    grpc: bool,
) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    listener.set_nonblocking(driver == outrigger::worker::Driver::Epoll)?;
    for t in 0..threads.max(1) {
        let l = listener.try_clone()?;
        let body = body.clone();
        std::thread::Builder::new()
            .name(format!("serve-h2-{t}"))
            .spawn(move || {
                let _ = outrigger::worker::driver::block_on(driver, 1024, move || async move {
                    let Ok(l) = monoio::net::TcpListener::from_std(l) else {
                        return;
                    };
                    while let Ok((s, _)) = l.accept().await {
                        let body = body.clone();
                        monoio::spawn(serve_conn(s, body, grpc));
                    }
                });
            })?;
    }
    Ok(bound)
}

async fn serve_conn(s: TcpStream, body: Bytes, grpc: bool) {
    let _ = s.set_nodelay(true);
    let Ok(poll) = s.try_into_poll_io() else {
        return;
    };
    let Ok(mut conn) = h2::server::handshake(ConnIo::plain(poll, BytesMut::new())).await else {
        return;
    };
    while let Some(Ok((req, respond))) = poll_fn(|cx| conn.poll_accept(cx)).await {
        monoio::spawn(answer(req, respond, body.clone(), grpc));
    }
}

async fn answer(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    body: Bytes,
    grpc: bool,
) {
    let mut recv = req.into_body();
    let mut got = 0usize;
    while let Some(Ok(chunk)) = poll_fn(|cx| recv.poll_data(cx)).await {
        got += chunk.len();
        let _ = recv.flow_control().release_capacity(chunk.len());
    }
    let mut head = http::Response::builder()
        .status(200)
        .header("x-body-bytes", got.to_string());
    if grpc {
        head = head.header("content-type", "application/grpc");
    }
    let Ok(head) = head.body(()) else { return };
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    if outrigger::http::h2::stream::send_flow(&mut send, body, !grpc)
        .await
        .is_err()
    {
        return;
    }
    if grpc {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        let _ = send.send_trailers(t);
    }
}
