//! HTTP/2 limits and abuse defences on http listeners (RFC 9113), with
//! hand-built frames, on both I/O drivers: settings from the listener's
//! keys, floods and resets ending in GOAWAY, stalled readers, GOAWAY on
//! age, reload and drain, `http2 = false`.

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::h2env::*;
use common::h2raw::*;
use common::*;
use outrigger::worker::Driver;

both_drivers!(
    settings_follow_the_listener_keys,
    abuse_ends_in_goaway,
    stalled_reader_is_reset,
    goaway_on_age_reload_and_drain,
    http2_false_turns_it_off,
);

fn settings_follow_the_listener_keys(driver: Driver) {
    let up = app(driver);
    let extra = "http2 = { max_concurrent_streams = 3, initial_stream_window = 32768, max_frame_size = 32768, max_header_list_bytes = 4096 }";
    let server = start(&config(driver, up.addr, scripted_upstream(), extra));
    let addr = server.local_addr("web").unwrap();
    let mut raw = Raw::connect(addr, &[]);
    let settings = raw.server_settings();
    let get = |id: u16| settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
    assert_eq!(get(3), Some(3), "MAX_CONCURRENT_STREAMS in {settings:?}");
    assert_eq!(get(4), Some(32768), "INITIAL_WINDOW_SIZE in {settings:?}");
    assert_eq!(get(5), Some(32768), "MAX_FRAME_SIZE in {settings:?}");
    assert_eq!(get(6), Some(4096), "MAX_HEADER_LIST_SIZE in {settings:?}");
    // Four streams held open (no END_STREAM): the fourth is refused.
    for id in [1u32, 3, 5, 7] {
        let block = request_block("/app/held");
        raw.send(&frame(HEADERS, END_HEADERS, id, &block)).unwrap();
    }
    let refused = raw
        .until(|f| f.kind == RST_STREAM && f.stream == 7)
        .expect("the fourth stream is refused");
    assert_eq!(refused.payload, 7u32.to_be_bytes(), "REFUSED_STREAM");
    // A header list over max_header_list_bytes is answered 431 or reset,
    // never forwarded.
    let mut big = request_block("/app/big-head");
    hpack(&mut big, "x-big", &"b".repeat(6000));
    raw.send(&frame(HEADERS, END_HEADERS | END_STREAM, 9, &big))
        .unwrap();
    let f = raw
        .until(|f| f.stream == 9 && (f.kind == HEADERS || f.kind == RST_STREAM) || f.kind == GOAWAY)
        .expect("an answer to the oversized head");
    if f.kind == HEADERS {
        // :status 431 as a literal or indexed field (static table has none).
        assert!(f.payload.windows(3).any(|w| w == b"431"), "{:?}", f.payload);
    }
    healthy(addr);
    // A frame larger than max_frame_size is a connection error.
    let mut raw = Raw::connect(addr, &[]);
    let _ = raw.server_settings();
    let post = block("POST", "/app/big-frame");
    raw.send(&frame(HEADERS, END_HEADERS, 1, &post)).unwrap();
    let _ = raw.send(&frame(DATA, 0, 1, &vec![b'f'; 40_000]));
    let g = raw
        .until(|f| f.kind == GOAWAY)
        .expect("GOAWAY for a frame over max_frame_size");
    assert_eq!(goaway_code(&g), 6, "FRAME_SIZE_ERROR");
    healthy(addr);
}

/// The GOAWAY code the `h2` crate sends when a header block grows past
/// `max_header_list_bytes` without end (a CONTINUATION flood).
const CONTINUATION_FLOOD_CODE: u32 = 0xb;

fn abuse_ends_in_goaway(driver: Driver) {
    let up = app(driver);
    let server = start(&config(
        driver,
        up.addr,
        scripted_upstream(),
        "http2 = { max_pending_resets = 10 }",
    ));
    let addr = server.local_addr("web").unwrap();
    // Rapid Reset: open and cancel streams at once, many times.
    let mut raw = Raw::connect(addr, &[]);
    let mut id = 1u32;
    let mut burst = Vec::new();
    for _ in 0..500 {
        burst.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &request_block("/app/rr"),
        ));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        id += 2;
    }
    let _ = raw.send(&burst);
    let g = raw
        .until(|f| f.kind == GOAWAY)
        .expect("GOAWAY after a rapid-reset burst");
    assert_eq!(goaway_code(&g), 0xb, "ENHANCE_YOUR_CALM");
    assert!(
        raw.closes_within(Duration::from_secs(5)),
        "then the connection closes"
    );

    // CONTINUATION flood: one header block that never ends.
    let mut raw = Raw::connect(addr, &[]);
    raw.send(&frame(HEADERS, 0, 1, &request_block("/app/flood")))
        .unwrap();
    let mut piece = Vec::new();
    hpack(&mut piece, "x-flood", &"f".repeat(4000));
    let started = Instant::now();
    let mut sent = 0usize;
    while started.elapsed() < Duration::from_secs(5) && sent < 64 * 1024 * 1024 {
        if raw.send(&frame(CONTINUATION, 0, 1, &piece)).is_err() {
            break;
        }
        sent += piece.len();
    }
    assert!(
        sent < 16 * 1024 * 1024,
        "the proxy kept reading an endless header block ({sent} B)"
    );
    let g = raw
        .until(|f| f.kind == GOAWAY)
        .expect("GOAWAY after an endless header block");
    assert_eq!(goaway_code(&g), CONTINUATION_FLOOD_CODE, "GOAWAY code");
    assert!(
        raw.closes_within(Duration::from_secs(5)),
        "then the connection closes"
    );

    // A stream that sends DATA beyond its window is a flow-control error.
    let mut raw = Raw::connect(addr, &[]);
    let _ = raw.server_settings();
    let post = block("POST", "/app/post");
    raw.send(&frame(HEADERS, END_HEADERS, 1, &post)).unwrap();
    let chunk = vec![b'd'; 16384];
    let mut overflow = Vec::new();
    for _ in 0..8 {
        overflow.extend(frame(DATA, 0, 1, &chunk));
    }
    let _ = raw.send(&overflow);
    let f = raw
        .until(|f| (f.kind == RST_STREAM && f.stream == 1) || f.kind == GOAWAY)
        .expect("overflowing the window is an error");
    let code = if f.kind == GOAWAY {
        goaway_code(&f)
    } else {
        u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]])
    };
    assert_eq!(code, 3, "FLOW_CONTROL_ERROR");
    healthy(addr);
    assert!(eventually(|| server.active_connections() <= 1));
}

fn stalled_reader_is_reset(driver: Driver) {
    let up = app(driver);
    let server = start(&config(driver, up.addr, scripted_upstream(), ""));
    let addr = server.local_addr("web").unwrap();
    // The client grants no window (INITIAL_WINDOW_SIZE 0) and asks for a
    // body: after send_timeout (1s) the stream is reset.
    let mut raw = Raw::connect(addr, &[(4, 0)]);
    raw.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("/app/bytes/100000"),
    ))
    .unwrap();
    let started = Instant::now();
    let f = raw
        .until(|f| f.kind == RST_STREAM && f.stream == 1)
        .expect("the stalled stream is reset");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "reset after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "reset after {waited:?}");
    let _ = f;
    healthy(addr);
}

fn goaway_on_age_reload_and_drain(driver: Driver) {
    let up = app(driver);
    let cfg = config(
        driver,
        up.addr,
        scripted_upstream(),
        "max_connection_age = \"300ms\"",
    );
    let server = start(&cfg);
    let addr = server.local_addr("web").unwrap();
    // max_connection_age: GOAWAY (NO_ERROR) even on a busy-free connection.
    let mut raw = Raw::connect(addr, &[]);
    let started = Instant::now();
    let g = raw
        .until(|f| f.kind == GOAWAY)
        .expect("GOAWAY at max_connection_age");
    assert_eq!(goaway_code(&g), 0);
    assert!(started.elapsed() >= Duration::from_millis(250));
    drop(raw);

    // A reload that removes the listener: GOAWAY to its connections.
    let plain = config(driver, up.addr, scripted_upstream(), "");
    let mut server2 = start(&plain);
    drop(server);
    let addr2 = server2.local_addr("web").unwrap();
    let mut raw = Raw::connect(addr2, &[]);
    let _ = raw.server_settings();
    raw.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("/healthz"),
    ))
    .unwrap();
    raw.until(|f| f.kind == DATA && f.flags & END_STREAM != 0)
        .unwrap();
    let without = plain.replace("[listeners.web]", "[listeners.other]");
    let snapshot = outrigger::config::compile(std::path::Path::new("<test>"), &without).unwrap();
    server2.apply(snapshot).unwrap();
    let g = raw
        .until(|f| f.kind == GOAWAY)
        .expect("GOAWAY when the listener is removed");
    assert_eq!(goaway_code(&g), 0);
    drop(raw);

    // Drain: GOAWAY, and the connection ends.
    let server3 = start(&plain);
    let addr3 = server3.local_addr("web").unwrap();
    let mut raw = Raw::connect(addr3, &[]);
    let _ = raw.server_settings();
    server3.drain();
    let g = raw.until(|f| f.kind == GOAWAY).expect("GOAWAY on drain");
    assert_eq!(goaway_code(&g), 0);
    assert!(
        raw.closes_within(Duration::from_secs(5)),
        "the drained connection closes"
    );
    assert!(server3.shutdown(Duration::from_secs(3)));
}

fn http2_false_turns_it_off(driver: Driver) {
    let up = app(driver);
    let server = start(&config(
        driver,
        up.addr,
        scripted_upstream(),
        "http2 = false",
    ));
    let addr = server.local_addr("web").unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    healthy(addr);
}

both_drivers!(floods_and_made_you_reset);

/// PING and SETTINGS floods from a client that does not read, empty DATA
/// frames, and MadeYouReset (frames that make the server reset streams):
/// the proxy stays bounded and ends abusive connections.
fn floods_and_made_you_reset(driver: Driver) {
    let up = app(driver);
    let server = start(&config(
        driver,
        up.addr,
        scripted_upstream(),
        "http2 = { max_error_resets = 10 }",
    ));
    let addr = server.local_addr("web").unwrap();
    let rss = || -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or(0)
    };
    let before = rss();
    // PING and SETTINGS floods, never reading the answers.
    for kind in [6u8, 4] {
        let mut raw = Raw::connect(addr, &[]);
        raw.s
            .set_write_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let one = if kind == 6 {
            frame(PING, 0, 0, &[7u8; 8])
        } else {
            frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0])
        };
        let burst: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * 10_000)
            .collect();
        let mut sent = 0;
        while sent < 200 && raw.send(&burst).is_ok() {
            sent += 1;
        }
        // A client that floods control frames and never reads the
        // answers: once the proxy's writes make no progress for
        // `send_timeout` (1 s here), the proxy ends the connection (its
        // open-connection gauge falls back; the client still holds its
        // socket, unread).
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(
            &server,
            "outrigger_listener_connections_active",
            &[("listener", "web")],
        ) > 0.0
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            metric(
                &server,
                "outrigger_listener_connections_active",
                &[("listener", "web")]
            ),
            0.0,
            "the flooding connection (frame type {kind}) was never closed"
        );
        drop(raw);
    }
    // The proxy is in this process: its memory did not grow with the floods
    // (2,000,000 frames sent at most).
    let grown = rss().saturating_sub(before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} kB");
    healthy(addr);

    // Empty DATA frames on an open stream: the crate's budget of small
    // frames ends the connection.
    let mut raw = Raw::connect(addr, &[]);
    let _ = raw.server_settings();
    let post = block("POST", "/app/empty");
    raw.send(&frame(HEADERS, END_HEADERS, 1, &post)).unwrap();
    let empty: Vec<u8> = frame(DATA, 0, 1, &[]).repeat(20_000);
    let _ = raw.send(&empty);
    let g = raw
        .until(|f| f.kind == GOAWAY)
        .expect("GOAWAY after a flood of empty DATA frames");
    assert_eq!(goaway_code(&g), 0xb, "ENHANCE_YOUR_CALM");

    // MadeYouReset: a malformed request (no :path) makes
    // the server reset its stream; past max_error_resets the connection
    // gets GOAWAY.
    let mut raw = Raw::connect(addr, &[]);
    let _ = raw.server_settings();
    // No :path.
    let mut bad = Vec::new();
    hpack(&mut bad, ":method", "GET");
    hpack(&mut bad, ":scheme", "http");
    hpack(&mut bad, ":authority", "localhost");
    // Under the limit: each malformed stream is reset, the connection lives.
    let mut few = Vec::new();
    for i in 0..5u32 {
        few.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i, &bad));
    }
    raw.send(&few).unwrap();
    for i in 0..5u32 {
        let f = raw
            .until(|f| f.kind == RST_STREAM || f.kind == GOAWAY)
            .expect("a reset");
        assert_eq!((f.kind, f.stream), (RST_STREAM, 1 + 2 * i));
    }
    // Over it: GOAWAY.
    let mut burst = Vec::new();
    for i in 5..60u32 {
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i, &bad));
    }
    let _ = raw.send(&burst);
    let g = raw
        .until(|f| f.kind == GOAWAY)
        .expect("GOAWAY after the server had to reset many streams");
    assert_eq!(goaway_code(&g), 0xb, "ENHANCE_YOUR_CALM");
    healthy(addr);
}
