//! The client connection as the poll-style byte stream the `h2` crate
//! drives: monoio's `TcpStreamPoll` (readiness on the worker's own
//! driver, no copy), the bytes read before HTTP/2 was recognised replayed
//! first, and, on TLS listeners, the rustls session driven by hand in
//! poll style (the handshake already ran on the owned-buffer path).
//!
//! A server connection gathers its writes: what the codec writes during
//! one pass of the connection's task (frames of every stream that had
//! something to send) is queued and sent in one write (over TLS, one
//! record of up to 16 KiB) when the pass ends ([`Gather::poll_send`]), as
//! nginx and HAProxy flush once per event-loop pass. The `h2` crate
//! writes each DATA frame of 256 bytes or more with its own flush, which
//! without this is one `writev` (and one TLS record) per response.

use std::cell::{Cell, RefCell};
use std::io::{self, Read as _, Write as _};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Ciphertext read from the socket per read.
const RAW_READ: usize = 16 * 1024 + 512;
/// Ciphertext queued for the socket before a write waits for it to drain.
const MAX_PENDING_OUT: usize = 64 * 1024;

/// An HTTP/2 connection's transport.
pub struct ConnIo {
    wire: Rc<RefCell<Wire>>,
}

/// The connection's task's handle on its transport's gathered writes.
pub struct Gather {
    wire: Rc<RefCell<Wire>>,
}

/// The socket, the TLS session and what is queued for them.
struct Wire {
    tcp: TcpStreamPoll,
    /// Plaintext (cleartext HTTP/2) or ciphertext (TLS) read before this
    /// transport existed, consumed first.
    early: BytesMut,
    tls: Option<Box<PollTls>>,
    /// Since when writes have made no progress (`None`: the last one did).
    /// Shared with the connection's task, which ends a connection whose
    /// peer stops reading for `send_timeout` (`stall_handle`).
    stalled: Rc<Cell<Option<Instant>>>,
    /// Plaintext the codec wrote and the socket (or rustls) has not taken.
    gathered: BytesMut,
    /// Writes are gathered until the pass ends (server connections, once
    /// their handshake is done); otherwise each goes out at once.
    gathering: bool,
}

impl std::fmt::Debug for ConnIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = self.wire.borrow();
        f.debug_struct("ConnIo")
            .field("early", &w.early.len())
            .field("tls", &w.tls.is_some())
            .field("gathered", &w.gathered.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Gather {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gather")
            .field("gathered", &self.wire.borrow().gathered.len())
            .finish()
    }
}

/// A rustls session (either side) driven in poll style.
struct PollTls {
    conn: rustls::Connection,
    /// Ciphertext read and not yet accepted by rustls.
    raw: BytesMut,
    /// Ciphertext produced and not yet written; `out_at` bytes of it are sent.
    out: Vec<u8>,
    out_at: usize,
    eof: bool,
}

impl ConnIo {
    /// Cleartext HTTP/2; `early` holds the bytes already read (the preface).
    pub fn plain(tcp: TcpStreamPoll, early: BytesMut) -> Self {
        ConnIo::over(Wire {
            tcp,
            early,
            tls: None,
            stalled: Rc::default(),
            gathered: BytesMut::new(),
            gathering: false,
        })
    }

    fn over(wire: Wire) -> Self {
        ConnIo {
            wire: Rc::new(RefCell::new(wire)),
        }
    }

    /// Since when writes have been waiting for the peer to read.
    pub fn stall_handle(&self) -> Rc<Cell<Option<Instant>>> {
        self.wire.borrow().stalled.clone()
    }

    /// The handle that sends the gathered writes (see the module's doc).
    pub fn gather(&self) -> Gather {
        Gather {
            wire: self.wire.clone(),
        }
    }
}

impl Gather {
    /// From now on, writes wait for [`Gather::poll_send`].
    pub fn start(&self) {
        self.wire.borrow_mut().gathering = true;
    }

    /// Send what was gathered: `Ready` once the socket took all of it,
    /// `Pending` (the task woken when the socket drains) while it is full.
    pub fn poll_send(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut w = self.wire.borrow_mut();
        let r = w.poll_send(cx);
        w.note(&r);
        r
    }
}

impl Wire {
    /// Hand the gathered bytes to the socket (through rustls, as one
    /// record per 16 KiB), as far as it takes them.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.gathered.is_empty() {
            let n = match &mut self.tls {
                Some(tls) => {
                    // Ciphertext queued before goes first: rustls's buffer
                    // stays bounded.
                    ready!(tls.poll_flush(&mut self.tcp, cx))?;
                    tls.conn.writer().write(&self.gathered)?
                }
                None => ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.gathered))?,
            };
            if n == 0 && self.tls.is_none() {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.gathered.advance(n);
        }
        match &mut self.tls {
            Some(tls) => tls.poll_flush(&mut self.tcp, cx),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Queue a write of the codec's; `Pending` only while what is queued
    /// already passes [`MAX_PENDING_OUT`] and the socket is full.
    fn poll_gather(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.gathered.len() >= MAX_PENDING_OUT {
            let r = self.poll_send(cx);
            self.note(&r);
            if let Poll::Ready(Err(e)) = r {
                return Poll::Ready(Err(e));
            }
            if self.gathered.len() >= MAX_PENDING_OUT {
                return Poll::Pending;
            }
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        self.gathered.reserve(total);
        for b in bufs {
            self.gathered.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    /// Note a write's outcome: waiting starts (or continues) a stall,
    /// progress ends it.
    fn note<T>(&self, r: &Poll<io::Result<T>>) {
        match r {
            Poll::Pending => {
                if self.stalled.get().is_none() {
                    self.stalled.set(Some(Instant::now()));
                }
            }
            Poll::Ready(_) => self.stalled.set(None),
        }
    }
}

impl ConnIo {
    /// HTTP/2 over a TLS session whose handshake is done; `raw` is
    /// ciphertext read and not yet fed to it.
    pub fn tls(tcp: TcpStreamPoll, conn: impl Into<rustls::Connection>, raw: BytesMut) -> Self {
        ConnIo::over(Wire {
            tcp,
            early: BytesMut::new(),
            tls: Some(Box::new(PollTls {
                conn: conn.into(),
                raw,
                out: Vec::new(),
                out_at: 0,
                eof: false,
            })),
            stalled: Rc::default(),
            gathered: BytesMut::new(),
            gathering: false,
        })
    }
}

impl PollTls {
    /// Write the queued ciphertext, then whatever rustls has queued, until
    /// all is sent or the socket is full.
    fn poll_flush(
        &mut self,
        tcp: &mut TcpStreamPoll,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.out_at < self.out.len() {
                let n = ready!(Pin::new(&mut *tcp).poll_write(cx, &self.out[self.out_at..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.out_at += n;
                continue;
            }
            if !self.conn.wants_write() {
                return Poll::Ready(Ok(()));
            }
            self.out.clear();
            self.out_at = 0;
            while self.conn.wants_write() && self.out.len() < MAX_PENDING_OUT {
                self.conn.write_tls(&mut self.out)?;
            }
        }
    }

    fn poll_read(
        &mut self,
        tcp: &mut TcpStreamPoll,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            match self.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: the end of the stream.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
            }
            if self.raw.is_empty() {
                if self.eof {
                    return Poll::Ready(Ok(()));
                }
                self.raw.reserve(RAW_READ);
                let n = {
                    let mut rb = ReadBuf::uninit(self.raw.spare_capacity_mut());
                    ready!(Pin::new(&mut *tcp).poll_read(cx, &mut rb))?;
                    rb.filled().len()
                };
                // SAFETY: the read initialised `n` bytes of the spare capacity.
                unsafe { self.raw.set_len(self.raw.len() + n) };
                if n == 0 {
                    self.eof = true;
                    continue;
                }
            }
            let mut pending: &[u8] = &self.raw;
            let fed = self.conn.read_tls(&mut pending)?;
            self.raw.advance(fed);
            if let Err(e) = self.conn.process_new_packets() {
                // Send the alert that says why (best effort), then fail.
                let _ = self.poll_flush(tcp, cx);
                return Poll::Ready(Err(crate::tls::stream::tls_error(e)));
            }
            // Answer what the peer asked for (a key update) when possible.
            if let Poll::Ready(Err(e)) = self.poll_flush(tcp, cx) {
                return Poll::Ready(Err(e));
            }
        }
    }

    fn poll_write(
        &mut self,
        tcp: &mut TcpStreamPoll,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // What was queued before goes first: rustls's buffer stays bounded
        // and a peer that stops reading stops the writer.
        ready!(self.poll_flush(tcp, cx))?;
        let n = self.conn.writer().write_vectored(bufs)?;
        // Start sending; what the socket does not take now goes with the
        // next write or flush.
        if let Poll::Ready(Err(e)) = self.poll_flush(tcp, cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut w = self.wire.borrow_mut();
        let w = &mut *w;
        match &mut w.tls {
            Some(tls) => tls.poll_read(&mut w.tcp, cx, buf),
            None if !w.early.is_empty() => {
                let n = w.early.len().min(buf.remaining());
                buf.put_slice(&w.early[..n]);
                w.early.advance(n);
                Poll::Ready(Ok(()))
            }
            None => Pin::new(&mut w.tcp).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut w = self.wire.borrow_mut();
        let w = &mut *w;
        if w.gathering {
            return w.poll_gather(cx, bufs);
        }
        let r = match &mut w.tls {
            Some(tls) => tls.poll_write(&mut w.tcp, cx, bufs),
            None => Pin::new(&mut w.tcp).poll_write_vectored(cx, bufs),
        };
        w.note(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// While gathering, a flush leaves the bytes for the end of the pass
    /// (the connection's task sends them then).
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut w = self.wire.borrow_mut();
        let w = &mut *w;
        if w.gathering {
            return Poll::Ready(Ok(()));
        }
        let r = match &mut w.tls {
            Some(tls) => tls.poll_flush(&mut w.tcp, cx),
            None => Pin::new(&mut w.tcp).poll_flush(cx),
        };
        w.note(&r);
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut w = self.wire.borrow_mut();
        let w = &mut *w;
        ready!(w.poll_send(cx))?;
        if let Some(tls) = w.tls.as_mut() {
            if !tls.eof {
                tls.conn.send_close_notify();
            }
            ready!(tls.poll_flush(&mut w.tcp, cx))?;
        }
        Pin::new(&mut w.tcp).poll_shutdown(cx)
    }
}

/// The bytes that open every HTTP/2 connection (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
