//! Relaying between a TLS peer and a plaintext one: a TLS client and a
//! plain upstream (tcp listeners with `tls`, HTTP upgrades over TLS), or a
//! plain client and a TLS upstream (tcp listeners whose cluster has `tls`). One task serves both
//! directions: it waits for whichever side is readable (or has decrypted
//! bytes waiting), moves what is there, and repeats. A side's end is passed
//! on: the client's close_notify or EOF half-closes the upstream; the
//! upstream's EOF sends close_notify. Bytes are copied through user space
//! (TLS cannot be spliced without kernel TLS).

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;

use rustls::{ConnectionCommon, SideData};

use super::TlsStream;
use crate::deadline::Deadlines;

/// What a relay moved, and whether it idled out.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub tls_to_plain: u64,
    pub plain_to_tls: u64,
    pub idle_timeout: bool,
}

/// Largest read per turn, each way.
const CHUNK: usize = 64 * 1024;

enum Turn {
    Client,
    Upstream,
    Idle,
}

/// Relay until both directions end, one fails, or nothing moves for
/// `idle_timeout`; a write that makes no progress for `send_timeout` ends
/// the relay too.
pub async fn relay<C, S>(
    mut tls: TlsStream<C>,
    mut up: TcpStream,
    idle_timeout: Duration,
    send_timeout: Duration,
    deadlines: &Deadlines,
) -> Moved
where
    C: std::ops::DerefMut + std::ops::Deref<Target = ConnectionCommon<S>>,
    S: SideData,
{
    let mut out = Moved::default();
    let (mut client_open, mut up_open) = (true, true);
    let mut buf = BytesMut::new();
    let mut last = Instant::now();
    while client_open || up_open {
        let turn = if client_open && tls.has_buffered() {
            Turn::Client
        } else {
            let mut c = std::pin::pin!(tls.tcp.readable(false));
            let mut u = std::pin::pin!(up.readable(false));
            let mut idle = deadlines.arm(last + idle_timeout);
            std::future::poll_fn(|cx| {
                if client_open && c.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Turn::Client);
                }
                if up_open && u.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Turn::Upstream);
                }
                if idle.poll_expired(cx).is_ready() {
                    return Poll::Ready(Turn::Idle);
                }
                Poll::Pending
            })
            .await
        };
        last = Instant::now();
        match turn {
            Turn::Idle => {
                out.idle_timeout = true;
                break;
            }
            Turn::Client => {
                buf.clear();
                match tls.read_ready(&mut buf, CHUNK).await {
                    // Only protocol records (a ticket): back to waiting.
                    Ok(None) => {}
                    Ok(Some(0)) | Err(_) => {
                        client_open = false;
                        // SAFETY: shutdown(2) on the upstream's open fd.
                        unsafe {
                            libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&up), libc::SHUT_WR)
                        };
                    }
                    Ok(Some(n)) => {
                        let data = std::mem::take(&mut buf).freeze();
                        let sent =
                            crate::sockio::write_all_within(&mut up, data, deadlines, send_timeout)
                                .await;
                        if sent.is_err() {
                            break;
                        }
                        out.tls_to_plain += n as u64;
                    }
                }
            }
            Turn::Upstream => {
                let mut raw = std::mem::take(&mut buf);
                raw.clear();
                raw.reserve(CHUNK);
                let (res, b) = up.read(raw).await;
                buf = b;
                match res {
                    Ok(0) | Err(_) => {
                        up_open = false;
                        tls.close_notify(deadlines, send_timeout).await;
                    }
                    Ok(n) => {
                        if tls
                            .write_all(&buf[..n], deadlines, send_timeout)
                            .await
                            .is_err()
                        {
                            break;
                        }
                        out.plain_to_tls += n as u64;
                    }
                }
            }
        }
    }
    let _ = up.shutdown().await;
    out
}
