//! End-to-end tests of the L4 proxy through real sockets on 127.0.0.1,
//! under both io_uring and epoll.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use outrigger::worker::Driver;
use sha2::{Digest, Sha256};

both_drivers!(
    echo_small_and_large,
    bulk_64_mib_by_hash,
    splice_modes_are_byte_exact,
    spliced_and_buffered_directions_side_by_side,
    two_hundred_concurrent_connections,
    half_close_delivers_whole_reply,
    failover_to_second_endpoint,
    all_endpoints_refuse_closes_client,
    connect_timeout_moves_on,
    max_connections_enforced,
    idle_timeout_closes,
    workers_report_driver_and_pinning,
    idle_relays_hold_no_buffer,
    idle_relay_parks_and_resumes,
    parked_relay_idles_out,
    parked_relay_outlives_drain,
    relays_park_and_resume_under_load,
);

/// Forty connections talk in bursts with pauses on both sides of the park
/// window (0.2-1.6 s): relays park and resume while others are busy, and
/// every byte comes back in order.
fn relays_park_and_resume_under_load(driver: Driver) {
    let up = echo(driver);
    let server = start(&tcp_config(driver, 1, &[up.addr.to_string()], "", ""));
    let addr = server.local_addr("l").unwrap();
    let workers: Vec<_> = (0..40u64)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = connect(addr);
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                for round in 0..4u64 {
                    let len = 1 + ((i * 7919 + round * 104_729) % 200_000) as usize;
                    let msg: Vec<u8> = (0..len)
                        .map(|k| (k as u64 * 31 + i + round) as u8)
                        .collect();
                    let mut w = s.try_clone().unwrap();
                    let sent = msg.clone();
                    let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
                    let mut got = vec![0u8; len];
                    s.read_exact(&mut got).unwrap();
                    writer.join().unwrap();
                    assert!(got == msg, "connection {i} round {round}: bytes differ");
                    let pause = 200 + (i * 37 + round * 411) % 1400;
                    std::thread::sleep(Duration::from_millis(pause));
                }
            })
        })
        .collect();
    // Watch the gauge while they run.
    let mut parked_seen = 0;
    while workers.iter().any(|w| !w.is_finished()) {
        parked_seen = parked_seen.max(server.parked_connections());
        std::thread::sleep(Duration::from_millis(20));
    }
    for w in workers {
        w.join().unwrap();
    }
    assert!(parked_seen > 0, "no relay parked");
    assert!(eventually(|| server.active_connections() == 0));
    let totals = server.listener_totals("l").unwrap();
    assert_eq!(totals.bytes_in, totals.bytes_out);
}

/// An upstream for parking tests: "ping" -> "pong"; "later" -> "late"
/// after 1.8 s (time for the relay to park); EOF -> "bye", then closes.
fn slow_talker() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = s.write_all(b"bye");
                            return;
                        }
                        Ok(n) if &buf[..n] == b"later" => {
                            std::thread::sleep(Duration::from_millis(1800));
                            let _ = s.write_all(b"late");
                        }
                        Ok(_) => {
                            let _ = s.write_all(b"pong");
                        }
                    }
                }
            });
        }
    });
    addr
}

fn read_exact_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_exact(&mut got).unwrap();
    got
}

/// A proxy in front of [`slow_talker`] (listener keys `extra`) and a client
/// whose relay has exchanged one message and is parked.
fn parked_relay(driver: Driver, extra: &str) -> (outrigger::Server, TcpStream) {
    let up = slow_talker();
    let server = start(&tcp_config(driver, 1, &[up.to_string()], extra, ""));
    let mut s = connect(server.local_addr("l").unwrap());
    assert_eq!(round_trip(&mut s, b"ping"), b"pong");
    assert!(
        eventually(|| server.parked_connections() == 1),
        "not parked"
    );
    (server, s)
}

/// A relay idle in both directions for a second leaves its task for the
/// worker's lot (issue 9: an idle relay holds no task, buffer or timer);
/// either side's next bytes bring it back: the client's, then the
/// upstream's, then a half-close. Every byte is counted once.
fn idle_relay_parks_and_resumes(driver: Driver) {
    let (server, mut s) = parked_relay(driver, "");
    assert_eq!(
        server.active_connections(),
        1,
        "parked still counts as active"
    );
    // The client speaks first.
    assert_eq!(round_trip(&mut s, b"ping"), b"pong");
    assert!(eventually(|| server.parked_connections() == 1));
    // The upstream speaks first: asked now, it answers after the relay parked.
    s.write_all(b"later").unwrap();
    assert!(eventually(|| server.parked_connections() == 1));
    assert_eq!(read_exact_n(&mut s, 4), b"late");
    // A half-close of a parked relay reaches the upstream, whose answer
    // and FIN come back.
    assert!(eventually(|| server.parked_connections() == 1));
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut s).unwrap(), b"bye");
    assert!(eventually(
        || server.active_connections() == 0 && server.parked_connections() == 0
    ));
    let totals = server.listener_totals("l").unwrap();
    assert_eq!((totals.bytes_in, totals.bytes_out), (13, 15));
    assert_eq!(totals.idle_timeouts, 0);
}

/// A parked relay still ends at its idle_timeout, counted and closed.
fn parked_relay_idles_out(driver: Driver) {
    let up = slow_talker();
    let server = start(&tcp_config(
        driver,
        1,
        &[up.to_string()],
        "idle_timeout = \"1800ms\"",
        "",
    ));
    let mut s = connect(server.local_addr("l").unwrap());
    assert_eq!(round_trip(&mut s, b"ping"), b"pong");
    let quiet = Instant::now();
    assert!(
        eventually(|| server.parked_connections() == 1),
        "not parked"
    );
    // The upstream is closed too: its "bye" comes back only if it saw EOF
    // while the client was still connected; idle_timeout closes both.
    assert!(read_to_eof(&mut s)
        .expect("closed by idle_timeout")
        .is_empty());
    assert!(
        quiet.elapsed() >= Duration::from_millis(1700),
        "{:?}",
        quiet.elapsed()
    );
    assert!(eventually(|| server
        .listener_totals("l")
        .unwrap()
        .idle_timeouts
        == 1));
    // The connection's gauges drop just after its counters are written.
    assert!(eventually(
        || server.parked_connections() == 0 && server.active_connections() == 0
    ));
}

/// A drain closes idle HTTP connections but lets TCP connections run to
/// their end, parked ones included.
fn parked_relay_outlives_drain(driver: Driver) {
    let (server, mut s) = parked_relay(driver, "");
    server.drain();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(round_trip(&mut s, b"ping"), b"pong", "cut by the drain");
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut s).unwrap(), b"bye");
    assert!(eventually(|| server.finished()), "workers did not finish");
}

/// After a short exchange, an idle relayed connection holds no buffer in
/// either direction (epoll once needed a strict readiness check for this:
/// a relaxed one reported stale readiness and posted a read with a buffer).
fn idle_relays_hold_no_buffer(driver: Driver) {
    let up = echo(driver);
    let server = start(&tcp_config(driver, 1, &[up.addr.to_string()], "", ""));
    let addr = server.local_addr("l").unwrap();
    let mut conns: Vec<_> = (0..50).map(|_| connect(addr)).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        let msg = format!("short {i}");
        assert_eq!(round_trip(s, msg.as_bytes()), msg.as_bytes());
    }
    assert_eq!(server.active_connections(), 50);
    if driver == Driver::IoUring {
        // A warm read (and its buffer) stays posted for 250 ms: the gauge
        // sees the buffers before they are released.
        assert!(server.buffers_rented() > 0);
    }
    // Then none.
    assert!(
        eventually(|| server.buffers_rented() == 0),
        "{} buffers held by 50 idle connections",
        server.buffers_rented()
    );
    // And they still work.
    for s in conns.iter_mut() {
        assert_eq!(round_trip(s, b"again"), b"again");
    }
}

fn echo_small_and_large(driver: Driver) {
    let up = echo(driver);
    let server = start(&tcp_config(driver, 2, &[up.addr.to_string()], "", ""));
    let addr = server.local_addr("l").unwrap();
    let mut s = connect(addr);
    assert_eq!(round_trip(&mut s, b"x"), b"x");
    let big: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(round_trip(&mut s, &big), big);
    drop(s);
    assert!(server.shutdown(Duration::from_secs(5)));
}

/// Stream `len` pseudo-random bytes through an echo path; compare hashes.
fn echo_hash(addr: SocketAddr, len: usize) -> ([u8; 32], [u8; 32]) {
    let s = connect(addr);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut h = Sha256::new();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut chunk = vec![0u8; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            for b in chunk[..n].iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            w.write_all(&chunk[..n]).unwrap();
            h.update(&chunk[..n]);
            left -= n;
        }
        w.shutdown(Shutdown::Write).unwrap();
        <[u8; 32]>::from(h.finalize())
    });
    let mut r = s;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        // The proxy shares this process; io_uring's task work can interrupt
        // a blocking read here with EINTR, which std does not retry.
        let n = match r.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => other.unwrap(),
        };
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n;
    }
    assert_eq!(total, len);
    (writer.join().unwrap(), <[u8; 32]>::from(h.finalize()))
}

fn bulk_64_mib_by_hash(driver: Driver) {
    let up = echo(driver);
    let server = start(&tcp_config(driver, 1, &[up.addr.to_string()], "", ""));
    let (sent, got) = echo_hash(server.local_addr("l").unwrap(), 64 * 1024 * 1024);
    assert_eq!(sent, got);
    assert!(eventually(
        || server.listener_totals("l").unwrap().active == 0
    ));
    let t = server.listener_totals("l").unwrap();
    assert_eq!(t.bytes_in, 64 * 1024 * 1024);
    assert_eq!(t.bytes_out, 64 * 1024 * 1024);
}

/// Every mode relays byte-exact, and the splice counters show which ran:
/// `always` moves every byte by splice, `never` none, `auto` none for
/// small exchanges and the bulk of a large one after its threshold.
fn splice_modes_are_byte_exact(driver: Driver) {
    let spliced = |server: &outrigger::Server| {
        let text = server.shared().export(outrigger::metrics::prometheus);
        let m = common::admin::parse_prometheus(&text);
        let v = |n: &str| m.value(n, &[("listener", "l")]).unwrap_or(-1.0) as i64;
        (
            v("outrigger_listener_spliced_directions_total"),
            v("outrigger_listener_spliced_bytes_total"),
        )
    };
    // The smallest pipe too: every chunk is a page, partial splices abound.
    for (mode, pipe) in [
        ("always", 262_144),
        ("always", 4096),
        ("never", 262_144),
        ("auto", 262_144),
    ] {
        let up = echo(driver);
        let extra = format!("splice = \"{mode}\"\nsplice_pipe_size = {pipe}");
        let server = start(&tcp_config(driver, 1, &[up.addr.to_string()], &extra, ""));
        let addr = server.local_addr("l").unwrap();
        let mut moved = 0i64;
        for len in [1, 4096, 3 * 1024 * 1024 + 17] {
            let (sent, got) = echo_hash(addr, len);
            assert_eq!(sent, got, "mode {mode}, {len} bytes");
            moved += 2 * len as i64;
            assert!(eventually(
                || server.listener_totals("l").unwrap().active == 0
            ));
            let (dirs, bytes) = spliced(&server);
            match (mode, len) {
                ("always", _) => assert_eq!(bytes, moved, "always: {dirs} directions"),
                ("never", _) => assert_eq!((dirs, bytes), (0, 0), "never"),
                ("auto", 1 | 4096) => assert_eq!((dirs, bytes), (0, 0), "auto, {len} bytes"),
                _ => assert!(
                    dirs >= 1 && bytes > 0 && bytes < moved,
                    "auto, bulk: {dirs} directions, {bytes} of {moved} bytes"
                ),
            }
        }
    }
}

/// Bytes a test upstream sends: position-dependent, so a byte lost,
/// repeated or moved is seen.
fn pattern(at: usize) -> u8 {
    (at.wrapping_mul(31) % 251) as u8
}

/// An upstream that takes an upload of `upload` bytes, answers with its
/// size, sends five small messages 20 ms apart, then `reply` bytes at once,
/// then echoes lines until the client's FIN.
fn upload_then_talk_upstream(upload: usize, reply: usize) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut got = vec![0u8; upload];
        s.read_exact(&mut got).unwrap();
        assert!(got.iter().enumerate().all(|(i, b)| *b == pattern(i)));
        s.write_all(format!("got {upload}\n").as_bytes()).unwrap();
        for i in 0..5 {
            std::thread::sleep(Duration::from_millis(20));
            s.write_all(format!("msg {i}\n").as_bytes()).unwrap();
        }
        let big: Vec<u8> = (0..reply).map(pattern).collect();
        s.write_all(&big).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        s.write_all(&rest).unwrap();
    });
    addr
}

/// `splice = "auto"`: the upload moves to splice (which makes both sockets
/// non-blocking), while the other direction, still buffered, reads small
/// messages that arrive apart and writes a large reply to a client that
/// is not reading yet (reads and writes that would block on those
/// sockets wait for readiness instead of failing). Every byte arrives, in
/// order, and the counters show one direction spliced.
fn spliced_and_buffered_directions_side_by_side(driver: Driver) {
    const UPLOAD: usize = 4 << 20;
    const REPLY: usize = 8 << 20;
    let up = upload_then_talk_upstream(UPLOAD, REPLY);
    let server = start(&tcp_config(driver, 1, &[up.to_string()], "", ""));
    let mut s = connect(server.local_addr("l").unwrap());
    let upload: Vec<u8> = (0..UPLOAD).map(pattern).collect();
    s.write_all(&upload).unwrap();
    let mut line = [0u8; 12];
    s.read_exact(&mut line).unwrap();
    assert_eq!(&line, format!("got {UPLOAD}\n").as_bytes());
    let mut msgs = [0u8; 30];
    s.read_exact(&mut msgs).unwrap();
    assert_eq!(&msgs, b"msg 0\nmsg 1\nmsg 2\nmsg 3\nmsg 4\n");
    // Let the proxy meet a full client socket before reading the reply.
    std::thread::sleep(Duration::from_millis(300));
    let mut reply = vec![0u8; REPLY];
    s.read_exact(&mut reply).unwrap();
    assert!(reply.iter().enumerate().all(|(i, b)| *b == pattern(i)));
    s.write_all(b"last words\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut s).unwrap(), b"last words\n");
    assert!(eventually(
        || server.listener_totals("l").unwrap().active == 0
    ));
    let text = server.shared().export(outrigger::metrics::prometheus);
    let m = common::admin::parse_prometheus(&text);
    let dirs = m
        .value(
            "outrigger_listener_spliced_directions_total",
            &[("listener", "l")],
        )
        .unwrap();
    assert!(dirs >= 1.0, "{dirs} directions spliced");
    let t = server.listener_totals("l").unwrap();
    assert_eq!(t.bytes_in, (UPLOAD + 11) as u64);
    assert_eq!(t.bytes_out, (12 + 30 + REPLY + 11) as u64);
}

fn two_hundred_concurrent_connections(driver: Driver) {
    let up = echo(driver);
    let server = start(&tcp_config(driver, 2, &[up.addr.to_string()], "", ""));
    let addr = server.local_addr("l").unwrap();
    let mut conns: Vec<TcpStream> = (0..200).map(|_| connect(addr)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(format!("conn {i:04}\n").as_bytes()).unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let mut got = [0u8; 10];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, format!("conn {i:04}\n").as_bytes());
    }
    // All 200 are open at once, through the proxy, to the upstream.
    assert_eq!(server.listener_totals("l").unwrap().active, 200);
    assert_eq!(up.connections(), 200);
    drop(conns);
}

/// An upstream that reads its request to EOF, then answers and closes.
fn reply_after_eof_upstream(reply_len: usize) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut req = Vec::new();
        s.read_to_end(&mut req).unwrap();
        let mut reply = format!("got {} bytes\n", req.len()).into_bytes();
        reply.resize(reply_len, b'.');
        s.write_all(&reply).unwrap();
    });
    addr
}

fn half_close_delivers_whole_reply(driver: Driver) {
    let up = reply_after_eof_upstream(1_000_000);
    let server = start(&tcp_config(driver, 1, &[up.to_string()], "", ""));
    let mut s = connect(server.local_addr("l").unwrap());
    s.write_all(&[b'q'; 5000]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let reply = read_to_eof(&mut s).unwrap();
    assert_eq!(reply.len(), 1_000_000);
    assert!(reply.starts_with(b"got 5000 bytes\n"));
}

fn failover_to_second_endpoint(driver: Driver) {
    let up = echo(driver);
    let dead = closed_port();
    let server = start(&tcp_config(
        driver,
        1,
        &[dead.to_string(), up.addr.to_string()],
        "",
        "",
    ));
    let addr = server.local_addr("l").unwrap();
    for i in 0..4 {
        let mut s = connect(addr);
        let msg = format!("hello {i}");
        assert_eq!(round_trip(&mut s, msg.as_bytes()), msg.as_bytes());
    }
    let t = server.listener_totals("l").unwrap();
    // Round robin starts at the dead endpoint for every other connection.
    assert_eq!(t.upstream_connect_failures, 2);
    assert_eq!(t.no_upstream, 0);
    assert_eq!(up.connections(), 4);
}

fn all_endpoints_refuse_closes_client(driver: Driver) {
    let server = start(&tcp_config(
        driver,
        1,
        &[closed_port().to_string(), closed_port().to_string()],
        "",
        "",
    ));
    let mut s = connect(server.local_addr("l").unwrap());
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let got =
        read_to_eof(&mut s).expect("the proxy closes the client instead of leaving it hanging");
    assert!(got.is_empty());
    assert!(eventually(|| server
        .listener_totals("l")
        .unwrap()
        .no_upstream
        == 1));
    let t = server.listener_totals("l").unwrap();
    assert_eq!(
        t.upstream_connect_failures, 2,
        "each endpoint is tried exactly once"
    );
}

/// A loopback listener whose accept queue is full, so new SYNs are dropped
/// and connects hang. Returns the address and what keeps the queue full.
fn blackhole() -> (SocketAddr, Vec<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut keep = vec![l];
    for _ in 0..8 {
        let c = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        c.set_nonblocking(true).unwrap();
        let _ = c.connect(&addr.into());
        keep.push(c);
    }
    std::thread::sleep(Duration::from_millis(50));
    (addr, keep)
}

fn connect_timeout_moves_on(driver: Driver) {
    let (hole, _keep) = blackhole();
    let up = echo(driver);
    let server = start(&tcp_config(
        driver,
        1,
        &[hole.to_string(), up.addr.to_string()],
        "",
        "connect_timeout = \"200ms\"",
    ));
    let addr = server.local_addr("l").unwrap();
    let started = Instant::now();
    let mut s = connect(addr);
    assert_eq!(round_trip(&mut s, b"after timeout"), b"after timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "the first try waited for the timeout"
    );
    let t = server.listener_totals("l").unwrap();
    assert_eq!(t.upstream_connect_failures, 1);

    // With only the black hole, the client is closed after the timeout.
    let server = start(&tcp_config(
        driver,
        1,
        &[hole.to_string()],
        "",
        "connect_timeout = \"200ms\"",
    ));
    let mut s = connect(server.local_addr("l").unwrap());
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert!(read_to_eof(&mut s)
        .expect("closed, not left hanging")
        .is_empty());
}

fn max_connections_enforced(driver: Driver) {
    let up = echo(driver);
    let server = start(&tcp_config(
        driver,
        1,
        &[up.addr.to_string()],
        "max_connections = 2",
        "",
    ));
    let addr = server.local_addr("l").unwrap();
    let mut a = connect(addr);
    let mut b = connect(addr);
    assert_eq!(round_trip(&mut a, b"a"), b"a");
    assert_eq!(round_trip(&mut b, b"b"), b"b");
    let mut c = connect(addr);
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = c.write_all(b"c");
    assert!(read_to_eof(&mut c).expect("closed at once").is_empty());
    assert!(eventually(
        || server.listener_totals("l").unwrap().rejected == 1
    ));
    // Closing one makes room again.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.listener_totals("l").unwrap().active > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut d = connect(addr);
    assert_eq!(round_trip(&mut d, b"d"), b"d");
    assert_eq!(up.connections(), 3);
}

fn idle_timeout_closes(driver: Driver) {
    let up = echo(driver);
    let server = start(&tcp_config(
        driver,
        1,
        &[up.addr.to_string()],
        "idle_timeout = \"300ms\"",
        "",
    ));
    let mut s = connect(server.local_addr("l").unwrap());
    // Traffic keeps it open past the timeout.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(round_trip(&mut s, b"ping"), b"ping");
    }
    let quiet = Instant::now();
    assert!(read_to_eof(&mut s)
        .expect("closed by idle_timeout")
        .is_empty());
    assert!(quiet.elapsed() >= Duration::from_millis(250));
    assert!(eventually(|| server
        .listener_totals("l")
        .unwrap()
        .idle_timeouts
        == 1));
}

/// Workers report their name, driver and core: none by default on CPUs
/// this process shares (`pin_workers = "auto"`), the n-th allowed core
/// with `pin_workers = true`.
fn workers_report_driver_and_pinning(driver: Driver) {
    let up = echo(driver);
    let cores = core_affinity::get_core_ids().unwrap();
    let exclusive = outrigger::worker::cpus::Cpus::get().exclusive();
    for pin in [false, true] {
        let cfg = tcp_config(driver, 2, &[up.addr.to_string()], "", "").replace(
            "[runtime]\n",
            if pin {
                "[runtime]\npin_workers = true\n"
            } else {
                "[runtime]\n"
            },
        );
        let server = start(&cfg);
        let workers = server.workers();
        assert_eq!(workers.len(), 2);
        for (i, w) in workers.iter().enumerate() {
            assert_eq!(w.name, format!("outrigger-worker-{i}"));
            assert_eq!(w.driver, driver);
            if pin && cores.len() >= 2 {
                assert_eq!(w.core, Some(cores[i].id));
            } else if !pin && !exclusive {
                assert_eq!(w.core, None, "unpinned on shared CPUs");
            }
        }
    }
}
