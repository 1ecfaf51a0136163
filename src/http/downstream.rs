//! The client side of one HTTP connection: its socket, the bytes read but
//! not yet used, its counters, and every read and write the exchange makes
//! on it, each bounded by the listener's `send_timeout` or
//! `request_body_timeout`.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::net::TcpStream;

use super::chunked::ChunkFrame;
use super::error::HttpError;
use crate::deadline::Deadlines;
use crate::sockio::read_more;
use crate::sockio::{write_all_within, write_vectored_within, Vectored as _};
use crate::worker::ctx::ListenerHandle;

/// The client's socket: plain, or TLS terminated here.
#[derive(Debug)]
pub enum ClientIo {
    Plain(TcpStream),
    Tls(Box<crate::tls::ServerStream>),
    /// One stream of an HTTP/2 connection (its socket belongs to the
    /// connection's task).
    H2(Box<super::h2::stream::H2Stream>),
}

impl ClientIo {
    /// The TCP socket under it (readiness waits); none for an HTTP/2 stream.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            ClientIo::Plain(s) => Some(s),
            ClientIo::Tls(t) => Some(&t.tcp),
            ClientIo::H2(_) => None,
        }
    }

    pub fn is_tls(&self) -> bool {
        match self {
            ClientIo::Plain(_) => false,
            ClientIo::Tls(_) => true,
            ClientIo::H2(s) => s.is_tls(),
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self, ClientIo::H2(_))
    }

    /// The server name the client asked for in its TLS handshake (SNI).
    pub fn sni(&self) -> Option<&str> {
        match self {
            ClientIo::Plain(_) => None,
            ClientIo::Tls(t) => t.conn.server_name(),
            ClientIo::H2(s) => s.sni(),
        }
    }

    /// The client's verified certificate, on a listener that requires one.
    pub fn peer_cert(&self, tls: &crate::tls::ListenerTls) -> Option<crate::tls::spiffe::PeerCert> {
        let ClientIo::Tls(t) = self else { return None };
        t.peer_cert(tls)
    }

    /// Bytes are waiting inside the TLS layer (a readiness wait on the
    /// socket would not see them).
    pub fn has_buffered(&mut self) -> bool {
        match self {
            ClientIo::Plain(_) | ClientIo::H2(_) => false,
            ClientIo::Tls(t) => t.has_buffered(),
        }
    }
}

impl From<crate::tls::Accepted> for ClientIo {
    fn from(a: crate::tls::Accepted) -> Self {
        match a {
            crate::tls::Accepted::Plain(s) => ClientIo::Plain(s),
            crate::tls::Accepted::Tls(t) => ClientIo::Tls(t),
        }
    }
}

/// An accepted connection handed to the HTTP server.
#[derive(Debug)]
pub struct Incoming {
    pub stream: ClientIo,
    pub peer: SocketAddr,
    /// Transparent listeners: where the client meant to go.
    pub original_dst: Option<SocketAddr>,
    /// Bytes already read (protocol detection).
    pub early: BytesMut,
}

/// A client connection and the bytes read from it but not yet used.
#[derive(Debug)]
pub struct Downstream {
    pub stream: ClientIo,
    pub buf: BytesMut,
    pub peer: SocketAddr,
    /// Bytes read from and written to the client so far.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The listener's accept loop on this worker: once it is removed (or
    /// the worker drains), responses carry `Connection: close`.
    pub handle: Rc<ListenerHandle>,
    /// A final response head went out for the current request (an error
    /// can no longer be sent in its place).
    pub responded: bool,
    /// The current request's body was read to its end (or it has none).
    pub body_complete: bool,
    /// `send_timeout` and `request_body_timeout` of the listener, kept on
    /// the worker's coarse deadlines.
    pub send_timeout: Duration,
    pub body_timeout: Duration,
    pub deadlines: Rc<Deadlines>,
    /// The verified client identity (SPIFFE ID or URI SAN), on listeners
    /// that verify client certificates.
    pub peer_identity: Option<Rc<str>>,
    /// `x-forwarded-client-cert` sent upstream for this connection.
    pub xfcc: Option<Rc<str>>,
    /// Where an intercepted connection was originally sent (listeners with
    /// `original_destination`).
    pub original_dst: Option<SocketAddr>,
}

impl Downstream {
    /// Write all of `data` to the client.
    pub async fn write_vec(&mut self, data: Vec<u8>) -> Result<(), HttpError> {
        let n = data.len() as u64;
        self.write(data).await?;
        self.bytes_out += n;
        Ok(())
    }

    /// Write all of `data` to the client.
    pub async fn write_bytes(&mut self, data: bytes::Bytes) -> Result<(), HttpError> {
        let n = data.len() as u64;
        self.write(data).await?;
        self.bytes_out += n;
        Ok(())
    }

    /// Write one chunk of a chunk-encoded body (payload not copied on a
    /// plain connection).
    pub async fn write_frame(&mut self, frame: ChunkFrame) -> Result<(), HttpError> {
        let n = frame.remaining() as u64;
        match &mut self.stream {
            ClientIo::Plain(s) => {
                write_vectored_within(s, frame, &self.deadlines, self.send_timeout)
                    .await
                    .map_err(HttpError::client_write)?;
            }
            ClientIo::Tls(t) => {
                for part in frame.parts() {
                    t.write_all(part, &self.deadlines, self.send_timeout)
                        .await
                        .map_err(HttpError::client_write)?;
                }
            }
            ClientIo::H2(_) => return Err(not_h1()),
        }
        self.bytes_out += n;
        Ok(())
    }

    async fn write<B: monoio::buf::IoBuf + 'static>(&mut self, data: B) -> Result<(), HttpError> {
        match &mut self.stream {
            ClientIo::Plain(s) => write_all_within(s, data, &self.deadlines, self.send_timeout)
                .await
                .map(drop)
                .map_err(HttpError::client_write),
            ClientIo::Tls(t) => {
                // SAFETY: `data` is an initialised buffer of `bytes_init()`
                // bytes at `read_ptr()`, alive for this borrow.
                let bytes =
                    unsafe { std::slice::from_raw_parts(data.read_ptr(), data.bytes_init()) };
                t.write_all(bytes, &self.deadlines, self.send_timeout)
                    .await
                    .map_err(HttpError::client_write)
            }
            ClientIo::H2(_) => Err(not_h1()),
        }
    }

    /// Send response body bytes on an HTTP/2 stream, within `send_timeout`.
    pub async fn send_h2_data(&mut self, data: bytes::Bytes) -> Result<(), HttpError> {
        let n = data.len() as u64;
        let at = self.deadlines.after(self.send_timeout);
        let ClientIo::H2(s) = &mut self.stream else {
            return Err(not_h1());
        };
        self.deadlines
            .within(at, s.send_data(data, false))
            .await
            .map_err(|_| HttpError::SendTimeout)?
            .map_err(HttpError::client_write)?;
        self.bytes_out += n;
        Ok(())
    }

    /// Read more of a request body into `buf`; EOF mid-body is an error, and
    /// so is `request_body_timeout` without a byte (the connection then
    /// closes, so the bytes a cancelled read might hold do not matter).
    pub async fn read_body(&mut self) -> Result<(), HttpError> {
        let at = self.deadlines.after(self.body_timeout);
        let deadlines = self.deadlines.clone();
        let res = deadlines
            .within(at, self.read_more(64 * 1024))
            .await
            .map_err(|_| HttpError::BodyTimeout)?;
        match res {
            Ok(0) => Err(HttpError::DownstreamIo(
                std::io::ErrorKind::UnexpectedEof.into(),
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(HttpError::DownstreamIo(e)),
        }
    }

    /// Read more from the client into `buf`.
    pub async fn read_more(&mut self, spare: usize) -> std::io::Result<usize> {
        let n = match &mut self.stream {
            ClientIo::Plain(s) => {
                let (res, buf) = read_more(s, std::mem::take(&mut self.buf), spare).await;
                self.buf = buf;
                res?
            }
            ClientIo::Tls(t) => t.read_plain(&mut self.buf, spare).await?,
            ClientIo::H2(s) => s.read_into(&mut self.buf).await?,
        };
        self.bytes_in += n as u64;
        Ok(n)
    }
}

/// HTTP/1 bytes written to an HTTP/2 stream: a path that forgot to branch.
fn not_h1() -> HttpError {
    HttpError::DownstreamIo(std::io::Error::other(
        "HTTP/1.1 bytes cannot be written to an HTTP/2 stream",
    ))
}

/// What a parked connection keeps of its `Downstream`: the socket and the
/// facts of the connection; the rest is rebuilt from its listener when it
/// resumes (`http::park`).
#[derive(Debug)]
pub struct Idle {
    pub io: IdleIo,
    peer: SocketAddr,
    bytes_in: u64,
    bytes_out: u64,
    peer_identity: Option<Rc<str>>,
    xfcc: Option<Rc<str>>,
    original_dst: Option<SocketAddr>,
}

/// A parked connection's socket.
#[derive(Debug)]
pub enum IdleIo {
    /// A plain connection keeps only a descriptor (a duplicate: the
    /// runtime's socket object, with its heap state and, on epoll, its
    /// registration, is dropped while parked and rebuilt on resume).
    Fd(std::os::fd::OwnedFd),
    /// TLS keeps its session.
    Stream(ClientIo),
}

impl IdleIo {
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            IdleIo::Fd(fd) => fd.as_raw_fd(),
            IdleIo::Stream(s) => s.tcp().map_or(-1, AsRawFd::as_raw_fd),
        }
    }

    /// Bytes already inside the TLS layer (no readiness will announce them).
    pub fn has_buffered(&mut self) -> bool {
        match self {
            IdleIo::Fd(_) => false,
            IdleIo::Stream(s) => s.has_buffered(),
        }
    }
}

impl Downstream {
    /// The connection between requests (nothing unread in `buf`).
    pub fn into_idle(self) -> Idle {
        use std::os::fd::{AsRawFd, BorrowedFd};
        let io = match self.stream {
            // If dup fails (descriptor limit), keep the stream itself.
            // SAFETY: `s` owns this open descriptor for the whole borrow.
            ClientIo::Plain(s) => {
                match unsafe { BorrowedFd::borrow_raw(s.as_raw_fd()) }.try_clone_to_owned() {
                    Ok(fd) => IdleIo::Fd(fd),
                    Err(_) => IdleIo::Stream(ClientIo::Plain(s)),
                }
            }
            tls => IdleIo::Stream(tls),
        };
        Idle {
            io,
            peer: self.peer,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            peer_identity: self.peer_identity,
            xfcc: self.xfcc,
            original_dst: self.original_dst,
        }
    }
}

impl Idle {
    /// Back to a `Downstream` on `listener` (as accepted); `None` when the
    /// runtime cannot take the socket back (it is then closed).
    pub fn resume(
        self,
        handle: &Rc<ListenerHandle>,
        ctx: &crate::worker::ctx::WorkerCtx,
        listener: &crate::snapshot::Listener,
    ) -> Option<Downstream> {
        let stream = match self.io {
            IdleIo::Fd(fd) => match TcpStream::from_std(std::net::TcpStream::from(fd)) {
                Ok(s) => ClientIo::Plain(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot resume a parked connection; closing it");
                    return None;
                }
            },
            IdleIo::Stream(s) => s,
        };
        Some(Downstream {
            stream,
            buf: BytesMut::new(),
            peer: self.peer,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            handle: handle.clone(),
            responded: false,
            body_complete: true,
            send_timeout: listener.http.send_timeout,
            body_timeout: listener.http.request_body_timeout,
            deadlines: ctx.deadlines.clone(),
            peer_identity: self.peer_identity,
            xfcc: self.xfcc,
            original_dst: self.original_dst,
        })
    }
}
