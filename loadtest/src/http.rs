//! The HTTP/1.1 generator: keep-alive connections, closed loop by default,
//! open loop at a fixed rate with `-R` (latency measured from the intended
//! send time, correcting for coordinated omission, with the uncorrected
//! service time recorded alongside).

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use clap::Args;
use monoio::net::TcpStream;
use outrigger::http::chunked::{Chunk, ChunkedDecoder};
use outrigger::http::codec::{parse_response, Framing, HeadLimits};

use crate::pacer::{Pace, PacerKind, Schedule};
use crate::parse_duration;
use crate::report::{Report, ThreadResult};
use crate::tls::{Conn, TlsConn};

/// `outrigger-load http`.
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// http://host:port/path
    pub url: String,
    /// Stop after this many requests in total (no warm-up).
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,
    /// Open loop: send this many requests per second in total.
    #[arg(short = 'R', long)]
    pub rate: Option<f64>,
    /// Open loop: how sends are timed. `own`: a timer per connection;
    /// `shared`: one periodic timer per thread; `auto`: shared from 25,000
    /// sends/s per thread.
    #[arg(long, value_enum, default_value = "auto")]
    pub pacer: PacerKind,
    /// The request method (`-X` as in curl; `-m` is the HTTP/2 stream
    /// count, as in h2load).
    #[arg(short = 'X', long, default_value = "GET")]
    pub method: String,
    /// Extra request header, "Name: value" (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Request body.
    #[arg(long)]
    pub body: Option<String>,
    /// Request body from a file.
    #[arg(long)]
    pub body_file: Option<PathBuf>,
    /// Give up on one request after this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// https: trust only the certificates in this PEM file (default: the
    /// system's roots).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// https: accept any server certificate (handshake signatures are still
    /// checked). For test targets only.
    #[arg(long)]
    pub insecure: bool,
    /// Start a sampled W3C trace (a `traceparent` header) on this share of
    /// the requests, 0 to 1, so they can be followed in a tracing backend.
    #[arg(long, default_value_t = 0.0)]
    pub trace_ratio: f64,
    /// HTTP/2: prior knowledge on http://, ALPN `h2` on https://.
    #[arg(long)]
    pub h2: bool,
    /// HTTP/2: concurrent streams per connection (as h2load's -m).
    #[arg(short = 'm', long, default_value_t = 1)]
    pub streams: usize,
    #[command(flatten)]
    pub load: crate::LoadArgs,
    #[command(flatten)]
    pub output: crate::OutputArgs,
}

/// Everything a connection task needs, shared read-only within a thread.
struct Plan {
    addr: SocketAddr,
    /// Shared, so that each send is a reference-count bump, not a copy.
    request: bytes::Bytes,
    head_request: bool,
    timeout: Duration,
    /// `--trace-ratio`.
    trace_ratio: f64,
    /// https: the client config and the server name to verify.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// Per-connection interval between intended sends (open loop).
    interval: Option<Duration>,
    pacer: PacerKind,
    measure_from: Instant,
    end: Instant,
}

/// The parsed target.
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) request: Vec<u8>,
    /// For HTTP/2: the pieces of the request.
    pub(crate) authority: String,
    pub(crate) path: String,
    pub(crate) body: Option<Vec<u8>>,
    pub(crate) tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

/// Build the request bytes, target address and TLS settings from the arguments.
pub(crate) fn prepare(args: &HttpArgs) -> anyhow::Result<Target> {
    let (https, rest) = if let Some(r) = args.url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = args.url.strip_prefix("https://") {
        (true, r)
    } else {
        anyhow::bail!("the URL must start with http:// or https://");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let with_port = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{}", if https { 443 } else { 80 })
    };
    let host = with_port
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .to_string();
    let tls = if https {
        let mut config = crate::tls::client_config(args.insecure, args.ca.as_deref())?;
        if args.h2 {
            let mut c = (*config).clone();
            c.alpn_protocols = vec![b"h2".to_vec()];
            config = Arc::new(c);
        }
        Some((config, crate::tls::server_name(&host)?))
    } else {
        anyhow::ensure!(
            !args.insecure && args.ca.is_none(),
            "--insecure and --ca need an https:// URL"
        );
        None
    };
    let addr = with_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {authority}"))?
        .next()
        .context("no address")?;
    let body = match (&args.body, &args.body_file) {
        (Some(b), _) => Some(b.clone().into_bytes()),
        (None, Some(f)) => {
            Some(std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?)
        }
        (None, None) => None,
    };
    let mut req = format!("{} {path} HTTP/1.1\r\nHost: {authority}\r\n", args.method).into_bytes();
    for h in &args.headers {
        anyhow::ensure!(h.contains(':'), "header {h:?} must be \"Name: value\"");
        req.extend_from_slice(h.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    if let Some(b) = &body {
        req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
        req.extend_from_slice(b);
    } else {
        req.extend_from_slice(b"\r\n");
    }
    Ok(Target {
        addr,
        request: req,
        authority: authority.to_string(),
        path: path.to_string(),
        body,
        tls,
    })
}

/// Run the HTTP/1.1 load and build the report (`--h2` runs `h2::run`;
/// [`crate::http_load`] chooses).
pub fn run(args: HttpArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(!args.h2, "HTTP/2 load runs in h2::run");
    anyhow::ensure!(args.streams <= 1, "--streams needs --h2");
    let driver = args.load.io.driver()?;
    let Target {
        addr, request, tls, ..
    } = prepare(&args)?;
    let conns = args.load.connections.max(1);
    let threads = args.load.threads.max(1).min(conns);
    let Window {
        start,
        measure_from,
        end,
    } = window(&args);
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(conns as f64 / r.max(1e-3)));
    let mut handles = Vec::new();
    for t in 0..threads {
        let n_conns = conns / threads + usize::from(t < conns % threads);
        let budget: Vec<Option<u64>> = (0..n_conns)
            .map(|i| {
                let global = t + i * threads;
                args.requests
                    .map(|n| n / conns as u64 + u64::from((global as u64) < n % conns as u64))
            })
            .collect();
        let plan = Plan {
            addr,
            request: bytes::Bytes::from(request.clone()),
            head_request: args.method.eq_ignore_ascii_case("HEAD"),
            trace_ratio: args.trace_ratio,
            timeout: args.timeout,
            tls: tls.clone(),
            interval,
            pacer: args.pacer,
            measure_from,
            end,
        };
        handles.push(
            args.load
                .spawn(t, driver, move || thread_main(plan, budget, start))?,
        );
    }
    collect(&args, handles, start, "http".into(), request.len(), conns)
}

/// When a run starts, starts measuring (after the warm-up; none with -n)
/// and ends.
pub(crate) struct Window {
    pub(crate) start: Instant,
    pub(crate) measure_from: Instant,
    pub(crate) end: Instant,
}

pub(crate) fn window(args: &HttpArgs) -> Window {
    let start = Instant::now() + Duration::from_millis(50);
    let warmup = if args.requests.is_some() {
        Duration::ZERO
    } else {
        args.load.warmup
    };
    let measure_from = start + warmup;
    let end = match args.requests {
        Some(_) => start + Duration::from_secs(24 * 3600),
        None => measure_from + args.load.duration,
    };
    Window {
        start,
        measure_from,
        end,
    }
}

/// Join the generator threads and build the report.
pub(crate) fn collect(
    args: &HttpArgs,
    handles: Vec<std::thread::JoinHandle<std::io::Result<ThreadResult>>>,
    start: Instant,
    mode: String,
    request_len: usize,
    conns: usize,
) -> anyhow::Result<Report> {
    let mut results = Vec::new();
    for h in handles {
        results.push(
            h.join()
                .map_err(|_| anyhow::anyhow!("generator thread panicked"))??,
        );
    }
    let measured = match args.requests {
        Some(_) => results
            .iter()
            .map(|r| r.last_done)
            .max()
            .map_or(0.0, |t| t.saturating_duration_since(start).as_secs_f64()),
        None => args.load.duration.as_secs_f64(),
    };
    let mut report = Report::build(
        args.url.clone(),
        mode,
        request_len,
        conns,
        results,
        measured,
    );
    report.target_rate = args.rate;
    Ok(report)
}

async fn thread_main(plan: Plan, budget: Vec<Option<u64>>, start: Instant) -> ThreadResult {
    if plan.interval.is_some() {
        crate::pacer::precise_timers_for_this_thread();
    }
    let plan = Rc::new(plan);
    let mut fresh = ThreadResult::new();
    fresh.origin = plan.measure_from;
    // A duration run counts what completed within it (a --requests run
    // counts every request).
    if budget.iter().all(Option::is_none) {
        fresh.window_end = Some(plan.end);
    }
    let result = Rc::new(RefCell::new(fresh));
    monoio::time::sleep(start.saturating_duration_since(Instant::now())).await;
    let n = budget.len().max(1);
    // Open loop: the thread's connections share one schedule, spread over
    // one interval (see pacer.rs).
    let Ok(schedule) = Schedule::open_loop(plan.pacer, start, plan.interval, n) else {
        result.borrow_mut().error("pacer");
        return std::mem::replace(&mut *result.borrow_mut(), ThreadResult::new());
    };
    let mut tasks = Vec::new();
    for (i, b) in budget.into_iter().enumerate() {
        let (plan, result) = (plan.clone(), result.clone());
        let pace = match schedule.as_ref().map(|s| s.pace(i)).transpose() {
            Ok(p) => p,
            Err(_) => {
                result.borrow_mut().error("pacer");
                continue;
            }
        };
        tasks.push(monoio::spawn(async move {
            connection(&plan, &result, b, pace).await
        }));
    }
    // CPU is counted over the measured window only (after the warm-up).
    monoio::time::sleep(plan.measure_from.saturating_duration_since(Instant::now())).await;
    let cpu0 = crate::tcp::thread_cpu_seconds();
    for t in tasks {
        t.await;
    }
    let mut r = std::mem::replace(&mut *result.borrow_mut(), ThreadResult::new());
    r.cpu_seconds = crate::tcp::thread_cpu_seconds() - cpu0;
    r
}

/// One keep-alive connection; reconnects after errors. Open loop when
/// `pace` is given.
async fn connection(
    plan: &Plan,
    result: &RefCell<ThreadResult>,
    mut budget: Option<u64>,
    mut pace: Option<Pace>,
) {
    let mut stream: Option<Conn> = None;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    while Instant::now() < plan.end && budget != Some(0) {
        let intended = match &mut pace {
            Some(p) => {
                let (at, behind) = p.next().await;
                result.borrow_mut().behind_schedule += u64::from(behind);
                at
            }
            None => Instant::now(),
        };
        let mut s = match stream.take() {
            Some(s) => s,
            None => match monoio::time::timeout(plan.timeout, open(plan)).await {
                Ok(Ok(s)) => {
                    buf.clear();
                    s
                }
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
            },
        };
        let sent = Instant::now();
        let outcome = monoio::time::timeout(plan.timeout, exchange(&mut s, plan, &mut buf)).await;
        let done = Instant::now();
        if let Some(b) = budget.as_mut() {
            *b -= 1;
        }
        let mut r = result.borrow_mut();
        match outcome {
            Ok(Ok((status, keep, body))) => {
                if sent >= plan.measure_from && r.record(intended, sent, done, body) {
                    r.status(status);
                    if plan.interval.is_some() {
                        r.lateness(intended, sent);
                    }
                }
                r.last_done = r.last_done.max(done);
                if keep {
                    stream = Some(s);
                }
            }
            Ok(Err(kind)) => r.error(kind),
            Err(_) => r.error("timeout"),
        }
    }
}

/// Connect (and for https, complete the TLS handshake).
async fn open(plan: &Plan) -> Result<Conn, &'static str> {
    let s = TcpStream::connect_addr(plan.addr)
        .await
        .map_err(|_| "connect")?;
    let _ = s.set_nodelay(true);
    match &plan.tls {
        None => Ok(Conn::Plain(s)),
        Some((config, name)) => TlsConn::connect(s, config.clone(), name.clone())
            .await
            .map(|t| Conn::Tls(Box::new(t)))
            .map_err(|_| "tls"),
    }
}

/// The request with a new sampled W3C trace: `traceparent` after the
/// request line.
fn traced(request: &bytes::Bytes) -> bytes::Bytes {
    let line_end = request
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(0, |i| i + 2);
    let mut out = Vec::with_capacity(request.len() + 72);
    out.extend_from_slice(&request[..line_end]);
    let (t, s) = (fastrand::u128(1..), fastrand::u64(1..));
    out.extend_from_slice(format!("traceparent: 00-{t:032x}-{s:016x}-01\r\n").as_bytes());
    out.extend_from_slice(&request[line_end..]);
    bytes::Bytes::from(out)
}

/// Send the request, read one response. Returns (status, keep-alive).
/// One request and its whole response: the status, whether the
/// connection stays open, and the response body's length.
async fn exchange(
    s: &mut Conn,
    plan: &Plan,
    buf: &mut BytesMut,
) -> Result<(u16, bool, usize), &'static str> {
    // (Bytes: the clone shares the buffer.)
    let request = if plan.trace_ratio > 0.0 && fastrand::f64() < plan.trace_ratio {
        traced(&plan.request)
    } else {
        plan.request.clone()
    };
    s.write_all(request).await.map_err(|_| "reset")?;
    let limits = HeadLimits {
        max_head_bytes: 64 * 1024,
        max_headers: 256,
    };
    let head = loop {
        if let Some(h) = parse_response(buf, limits).map_err(|_| "protocol")? {
            if (100..200).contains(&h.status) {
                continue;
            }
            break h;
        }
        read_more(s, buf).await?;
    };
    let mut body = 0usize;
    match head.framing(plan.head_request).map_err(|_| "protocol")? {
        Framing::None => {}
        Framing::Length(n) => {
            body = n as usize;
            let mut left = n;
            while left > 0 {
                if buf.is_empty() {
                    read_more(s, buf).await?;
                }
                let take = (buf.len() as u64).min(left) as usize;
                let _ = buf.split_to(take);
                left -= take as u64;
            }
        }
        Framing::Chunked => {
            let mut dec = ChunkedDecoder::default();
            loop {
                match dec.decode(buf).map_err(|_| "protocol")? {
                    Some(Chunk::Data(d)) => body += d.len(),
                    Some(Chunk::End(_)) => break,
                    None => read_more(s, buf).await?,
                }
            }
        }
        Framing::UntilClose => {
            body += buf.len();
            buf.clear();
            while read_more(s, buf).await.is_ok() {
                body += buf.len();
                buf.clear();
            }
            return Ok((head.status, false, body));
        }
    }
    Ok((head.status, head.keep_alive, body))
}

async fn read_more(s: &mut Conn, buf: &mut BytesMut) -> Result<(), &'static str> {
    match s.read(buf).await {
        Ok(0) => Err("eof"),
        Ok(_) => Ok(()),
        Err(_) => Err("reset"),
    }
}
