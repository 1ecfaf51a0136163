//! The upstream side of an HTTP exchange: a plain TCP connection or a TLS
//! one this proxy originated (a cluster with `tls`).

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use monoio::net::TcpStream;

use super::chunked::ChunkFrame;
use crate::deadline::Deadlines;
use crate::sockio::read_more;
use crate::sockio::{write_all_within, write_vectored_within};

/// A connection to an upstream endpoint.
#[derive(Debug)]
pub enum UpConn {
    Plain(TcpStream),
    Tls(Box<crate::tls::ClientStream>),
}

impl UpConn {
    /// Write all of `data`, failing when the upstream accepts nothing for
    /// `timeout`.
    pub async fn write_all(
        &mut self,
        data: Bytes,
        deadlines: &Deadlines,
        timeout: Duration,
    ) -> io::Result<()> {
        match self {
            UpConn::Plain(s) => write_all_within(s, data, deadlines, timeout)
                .await
                .map(drop),
            UpConn::Tls(t) => t.write_all(&data, deadlines, timeout).await,
        }
    }

    /// Write one chunk frame (payload not copied on a plain connection).
    pub async fn write_frame(
        &mut self,
        frame: ChunkFrame,
        deadlines: &Deadlines,
        timeout: Duration,
    ) -> io::Result<()> {
        match self {
            UpConn::Plain(s) => write_vectored_within(s, frame, deadlines, timeout).await,
            UpConn::Tls(t) => {
                for part in frame.parts() {
                    t.write_all(part, deadlines, timeout).await?;
                }
                Ok(())
            }
        }
    }

    /// Read more bytes, appending to `buf` (with room for `spare`).
    pub async fn read_more(
        &mut self,
        mut buf: BytesMut,
        spare: usize,
    ) -> (io::Result<usize>, BytesMut) {
        match self {
            UpConn::Plain(s) => read_more(s, buf, spare).await,
            UpConn::Tls(t) => {
                let res = t.read_plain(&mut buf, spare).await;
                (res, buf)
            }
        }
    }

    /// An idle pooled connection is clean when nothing is waiting to be
    /// read: no EOF, no reset, no stray bytes. For TLS, records that
    /// arrived while idle (a session ticket, say) are taken into rustls
    /// first; only plaintext or a close makes the connection dirty.
    pub fn is_clean(&mut self) -> bool {
        match self {
            UpConn::Plain(s) => peek_clean(s),
            UpConn::Tls(t) => t.absorb_idle_records(),
        }
    }

    /// The plain TCP stream, for protocol upgrades (not over TLS).
    pub fn into_plain(self) -> Option<TcpStream> {
        match self {
            UpConn::Plain(s) => Some(s),
            UpConn::Tls(_) => None,
        }
    }
}

/// An idle connection is clean when a non-blocking peek finds nothing to
/// read: no EOF, no reset, no stray bytes. One syscall per reuse.
pub fn peek_clean(stream: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv into a one-byte buffer we own, on the stream's open fd;
    // MSG_PEEK leaves the data (if any) in the socket, MSG_DONTWAIT makes
    // it return at once whatever the descriptor's blocking mode.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            std::ptr::addr_of_mut!(byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}
