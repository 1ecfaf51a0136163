//! rustls driven directly over monoio's owned-buffer TCP I/O, for both
//! sides (server on listeners, client toward clusters). The connection
//! object stays reachable (peer certificates, ALPN, SNI), and the two
//! traps of feeding rustls by hand are handled here once:
//!
//! - rustls accepts at most its send-buffer limit of plaintext per call:
//!   [`TlsStream::write_all`] writes what it accepts, flushes the records,
//!   and repeats, so any size goes through;
//! - rustls refuses more ciphertext while 16 KiB of decrypted plaintext
//!   wait: [`TlsStream::read_plain`] drains plaintext first and keeps the
//!   ciphertext it could not feed yet for the next call.

use std::io::{self, Read, Write};
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;
use rustls::{ConnectionCommon, SideData};

use crate::deadline::Deadlines;
use crate::sockio::write_all_within;

/// Ciphertext read from the socket per read.
const RAW_READ: usize = 16 * 1024 + 512;

/// A TLS connection over a TCP stream.
pub struct TlsStream<C> {
    pub tcp: TcpStream,
    pub conn: C,
    /// Ciphertext read from the socket and not yet fed to rustls.
    raw: BytesMut,
    /// The peer sent close_notify or closed the socket.
    eof: bool,
}

impl<C> std::fmt::Debug for TlsStream<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("buffered_ciphertext", &self.raw.len())
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

/// The error rustls reported, as an I/O error of kind `InvalidData`.
pub fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<C, S> TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<S>>,
    S: SideData,
{
    pub fn new(tcp: TcpStream, conn: C) -> Self {
        TlsStream {
            tcp,
            conn,
            raw: BytesMut::new(),
            eof: false,
        }
    }

    /// The socket, the session, and ciphertext read but not yet fed to it
    /// (to drive the session another way: HTTP/2 over poll-style I/O).
    pub fn into_parts(self) -> (TcpStream, C, BytesMut) {
        (self.tcp, self.conn, self.raw)
    }

    /// Ciphertext read before this stream existed (protocol detection).
    pub fn push_ciphertext(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
    }

    /// Run the handshake to its end (the caller bounds it in time).
    pub async fn handshake(&mut self) -> io::Result<()> {
        while self.conn.is_handshaking() {
            self.flush(None).await?;
            if self.conn.is_handshaking() && self.conn.wants_read() && !self.feed().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        self.flush(None).await
    }

    /// Send every record rustls has queued; with `limit`, fail when the
    /// peer accepts nothing for that long (`send_timeout`).
    async fn flush(&mut self, limit: Option<(&Deadlines, Duration)>) -> io::Result<()> {
        while self.conn.wants_write() {
            let mut out = Vec::with_capacity(RAW_READ);
            while self.conn.wants_write() && out.len() < 64 * 1024 {
                self.conn.write_tls(&mut out)?;
            }
            match limit {
                Some((deadlines, timeout)) => {
                    write_all_within(&mut self.tcp, out, deadlines, timeout).await?;
                }
                None => {
                    let (res, _) =
                        monoio::io::AsyncWriteRentExt::write_all(&mut self.tcp, out).await;
                    res?;
                }
            }
        }
        Ok(())
    }

    /// Feed ciphertext to rustls: what is kept from before, else one read
    /// from the socket. False at the end of the stream.
    async fn feed(&mut self) -> io::Result<bool> {
        if self.raw.is_empty() {
            if self.eof {
                return Ok(false);
            }
            let mut raw = std::mem::take(&mut self.raw);
            raw.reserve(RAW_READ);
            let len = raw.len();
            let cap = raw.capacity();
            let (res, slice) = self
                .tcp
                .read(monoio::buf::SliceMut::new(raw, len, cap))
                .await;
            self.raw = slice.into_inner();
            if res? == 0 {
                self.eof = true;
                return Ok(false);
            }
        }
        let mut pending: &[u8] = &self.raw;
        let before = pending.len();
        let fed = self.conn.read_tls(&mut pending)?;
        debug_assert_eq!(before - pending.len(), fed);
        self.raw.advance(fed);
        if let Err(e) = self.conn.process_new_packets() {
            // Send the alert that says why, then fail.
            let _ = self.flush(None).await;
            return Err(tls_error(e));
        }
        Ok(true)
    }

    /// Whether decrypted bytes or unprocessed ciphertext are waiting (a
    /// readiness wait on the socket would not see them).
    pub fn has_buffered(&mut self) -> bool {
        if !self.raw.is_empty() {
            return true;
        }
        matches!(
            self.conn.process_new_packets(),
            Ok(state) if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed()
        )
    }

    /// Append decrypted bytes to `buf` (room for at least `spare`); 0 at the
    /// end of the stream (close_notify or the socket closed).
    pub async fn read_plain(&mut self, buf: &mut BytesMut, spare: usize) -> io::Result<usize> {
        loop {
            let start = buf.len();
            buf.resize(start + spare.max(1), 0);
            let got = self.conn.reader().read(&mut buf[start..]);
            match got {
                Ok(n) => {
                    buf.truncate(start + n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf.truncate(start),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    // The peer closed without close_notify.
                    buf.truncate(start);
                    return Ok(0);
                }
                Err(e) => {
                    buf.truncate(start);
                    return Err(e);
                }
            }
            if !self.feed().await? {
                return Ok(0);
            }
            // Answer what the peer may have asked for (a key update).
            if self.conn.wants_write() {
                self.flush(None).await?;
            }
        }
    }

    /// For relays: after readiness, take in what arrived (one socket read at
    /// most) and return the decrypted bytes now available, without waiting
    /// for more: `Ok(Some(0))` at the end of the stream, `Ok(None)` when
    /// only protocol records came (a session ticket, a key update).
    pub async fn read_ready(
        &mut self,
        buf: &mut BytesMut,
        spare: usize,
    ) -> io::Result<Option<usize>> {
        for fed in [false, true] {
            let start = buf.len();
            buf.resize(start + spare.max(1), 0);
            let got = self.conn.reader().read(&mut buf[start..]);
            match got {
                Ok(n) => {
                    buf.truncate(start + n);
                    return Ok(Some(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf.truncate(start),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    buf.truncate(start);
                    return Ok(Some(0));
                }
                Err(e) => {
                    buf.truncate(start);
                    return Err(e);
                }
            }
            if fed {
                break;
            }
            if !self.feed().await? {
                return Ok(Some(0));
            }
            if self.conn.wants_write() {
                self.flush(None).await?;
            }
        }
        Ok(None)
    }

    /// Encrypt and send all of `data`, failing when the peer accepts
    /// nothing for `timeout`.
    pub async fn write_all(
        &mut self,
        mut data: &[u8],
        deadlines: &Deadlines,
        timeout: Duration,
    ) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.conn.writer().write(data)?;
            data = &data[n..];
            self.flush(Some((deadlines, timeout))).await?;
        }
        Ok(())
    }

    /// For a pooled connection: take in whatever records arrived while it
    /// was idle, without blocking. True when the connection is still clean
    /// (nothing but handshake messages such as session tickets arrived);
    /// false on plaintext, a close, an error, or EOF.
    pub fn absorb_idle_records(&mut self) -> bool {
        use std::os::fd::AsRawFd;
        let fd = self.tcp.as_raw_fd();
        let mut chunk = [0u8; 4096];
        loop {
            // SAFETY: recv into a buffer we own, on the stream's open fd;
            // no monoio operation is outstanding on a pooled connection,
            // and MSG_DONTWAIT makes it return at once.
            let n = unsafe {
                libc::recv(
                    fd,
                    chunk.as_mut_ptr().cast(),
                    chunk.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n == 0 {
                return false;
            }
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock {
                    return false;
                }
                break;
            }
            self.raw.extend_from_slice(&chunk[..n as usize]);
        }
        while !self.raw.is_empty() {
            let mut pending: &[u8] = &self.raw;
            let Ok(fed) = self.conn.read_tls(&mut pending) else {
                return false;
            };
            self.raw.advance(fed);
            match self.conn.process_new_packets() {
                Ok(state) if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() => {
                    return false
                }
                Ok(_) => {}
                Err(_) => return false,
            }
            if fed == 0 {
                break;
            }
        }
        self.raw.is_empty()
    }

    /// Send close_notify (best effort, bounded by `timeout`).
    pub async fn close_notify(&mut self, deadlines: &Deadlines, timeout: Duration) {
        self.conn.send_close_notify();
        let at = Instant::now() + timeout;
        let _ = deadlines.within(at, self.flush(None)).await;
    }
}
