//! The TCP generator: echo ping-pong, fixed-size echo transfers, one-way bulk.
//! Thread-per-core on monoio like the proxy; connections spread over threads.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;

use crate::parse_size;
use crate::report::{Report, ThreadResult};

/// `outrigger-load tcp`.
#[derive(Args, Debug, Clone)]
pub struct TcpArgs {
    /// Target address (ip:port).
    pub addr: SocketAddr,
    /// echo: write SIZE bytes, read them back, repeat (latency).
    /// transfer: same with both directions streaming (for large SIZE).
    /// bulk: write only, as fast as possible (use against `serve sink`).
    #[arg(long, value_enum, default_value = "echo")]
    pub mode: TcpMode,
    /// Message or transfer size: 64, 64KiB, 16MiB.
    #[arg(long, default_value = "64", value_parser = parse_size)]
    pub size: usize,
    #[command(flatten)]
    pub load: crate::LoadArgs,
    #[command(flatten)]
    pub output: crate::OutputArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum TcpMode {
    Echo,
    Transfer,
    Bulk,
}

/// Run the load and build the report.
pub fn run(args: TcpArgs) -> anyhow::Result<Report> {
    let driver = args.load.io.driver()?;
    let threads = args.load.threads.max(1).min(args.load.connections.max(1));
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + args.load.warmup;
    let end = measure_from + args.load.duration;
    let mut handles = Vec::new();
    for t in 0..threads {
        let conns =
            args.load.connections / threads + usize::from(t < args.load.connections % threads);
        let thread_args = args.clone();
        handles.push(args.load.spawn(t, driver, move || {
            thread_main(thread_args, conns, start, measure_from, end)
        })?);
    }
    let mut results = Vec::new();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
        results.push(r);
    }
    let mode = format!("{:?}", args.mode).to_lowercase();
    Ok(Report::build(
        args.addr.to_string(),
        format!("tcp-{mode}"),
        args.size,
        args.load.connections,
        results,
        args.load.duration.as_secs_f64(),
    ))
}

pub(crate) fn thread_cpu_seconds() -> f64 {
    let mut ts = libc_timespec();
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn libc_timespec() -> libc::timespec {
    libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    }
}

async fn thread_main(
    args: TcpArgs,
    conns: usize,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> ThreadResult {
    let mut fresh = ThreadResult::new();
    fresh.origin = measure_from;
    fresh.window_end = Some(end);
    let result = Rc::new(RefCell::new(fresh));
    let wait = start.saturating_duration_since(Instant::now());
    monoio::time::sleep(wait).await;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let r = result.clone();
        let args = args.clone();
        tasks.push(monoio::spawn(async move {
            connection(args, r, measure_from, end).await;
        }));
    }
    monoio::time::sleep(measure_from.saturating_duration_since(Instant::now())).await;
    let cpu_at_measure = thread_cpu_seconds();
    for t in tasks {
        t.await;
    }
    let cpu = thread_cpu_seconds() - cpu_at_measure;
    let mut r = std::mem::replace(&mut *result.borrow_mut(), ThreadResult::new());
    r.cpu_seconds = cpu;
    r
}

/// One connection's loop; reconnects after an error until `end`.
async fn connection(
    args: TcpArgs,
    result: Rc<RefCell<ThreadResult>>,
    measure_from: Instant,
    end: Instant,
) {
    while Instant::now() < end {
        let stream = match TcpStream::connect_addr(args.addr).await {
            Ok(s) => s,
            Err(_) => {
                result.borrow_mut().error("connect");
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let outcome = match args.mode {
            TcpMode::Echo => echo(stream, &args, &result, measure_from, end).await,
            TcpMode::Transfer => transfer(stream, &args, &result, measure_from, end).await,
            TcpMode::Bulk => bulk(stream, &args, &result, measure_from, end).await,
        };
        if let Err(kind) = outcome {
            result.borrow_mut().error(kind);
        }
    }
}

fn record(result: &RefCell<ThreadResult>, started: Instant, measure_from: Instant, bytes: usize) {
    if started < measure_from {
        return;
    }
    let now = Instant::now();
    let _ = result.borrow_mut().record(started, started, now, bytes);
}

fn io_kind(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => "reset",
        std::io::ErrorKind::UnexpectedEof => "eof",
        _ => "io",
    }
}

/// Read exactly `n` bytes, reusing `buf`.
async fn read_n(
    stream: &mut impl AsyncReadRent,
    mut buf: Vec<u8>,
    n: usize,
) -> (Result<(), &'static str>, Vec<u8>) {
    let mut got = 0;
    while got < n {
        buf.clear();
        let (res, b) = stream.read(buf).await;
        buf = b;
        match res {
            Ok(0) => return (Err("eof"), buf),
            Ok(k) => got += k,
            Err(e) => return (Err(io_kind(&e)), buf),
        }
    }
    (Ok(()), buf)
}

async fn echo(
    mut s: TcpStream,
    args: &TcpArgs,
    result: &RefCell<ThreadResult>,
    measure_from: Instant,
    end: Instant,
) -> Result<(), &'static str> {
    let mut msg = vec![b'x'; args.size];
    let mut rbuf = Vec::with_capacity(args.size.clamp(64, 256 * 1024));
    while Instant::now() < end {
        let t0 = Instant::now();
        let (res, m) = s.write_all(msg).await;
        msg = m;
        res.map_err(|e| io_kind(&e))?;
        let (res, b) = read_n(&mut s, rbuf, args.size).await;
        rbuf = b;
        res?;
        record(result, t0, measure_from, args.size);
    }
    Ok(())
}

async fn transfer(
    s: TcpStream,
    args: &TcpArgs,
    result: &RefCell<ThreadResult>,
    measure_from: Instant,
    end: Instant,
) -> Result<(), &'static str> {
    let (mut r, mut w) = s.into_split();
    let chunk = args.size.min(256 * 1024);
    let mut wbuf = vec![b'x'; chunk];
    let mut rbuf = Vec::with_capacity(256 * 1024);
    while Instant::now() < end {
        let t0 = Instant::now();
        let size = args.size;
        let writer = async {
            let mut left = size;
            while left > 0 {
                let n = left.min(chunk);
                wbuf.truncate(n);
                let (res, b) = w.write_all(std::mem::take(&mut wbuf)).await;
                wbuf = b;
                res.map_err(|e| io_kind(&e))?;
                left -= n;
            }
            Ok::<(), &'static str>(())
        };
        let reader = async {
            let (res, b) = read_n(&mut r, std::mem::take(&mut rbuf), size).await;
            rbuf = b;
            res
        };
        let (wr, rr) = monoio::join!(writer, reader);
        wr?;
        rr?;
        wbuf.resize(chunk, b'x');
        record(result, t0, measure_from, size);
    }
    Ok(())
}

async fn bulk(
    mut s: TcpStream,
    args: &TcpArgs,
    result: &RefCell<ThreadResult>,
    measure_from: Instant,
    end: Instant,
) -> Result<(), &'static str> {
    let mut buf = vec![b'x'; args.size.max(1)];
    while Instant::now() < end {
        let t0 = Instant::now();
        let (res, b) = s.write_all(buf).await;
        buf = b;
        res.map_err(|e| io_kind(&e))?;
        record(result, t0, measure_from, buf.len());
    }
    Ok(())
}
