//! One HTTP/2 stream as the request path's client side: its request body
//! read into the exchange's buffer (re-framed as chunked when the client
//! declared no length), and its response sent as HEADERS, DATA within the
//! flow-control window the client grants, and trailers.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};

use super::convert;

/// The client side of one HTTP/2 request.
pub struct H2Stream {
    recv: RecvStream,
    /// Shared with the stream's task, which watches it for the client's
    /// RST_STREAM until the response head is sent (`h2::serve_stream`).
    respond: Rc<RefCell<SendResponse<Bytes>>>,
    send: Option<SendStream<Bytes>>,
    /// The request body goes to the exchange chunk-encoded (no
    /// content-length was declared).
    chunked: bool,
    /// The request body was read to its end.
    recv_done: bool,
    /// The response ended (END_STREAM sent) or the stream was reset.
    finished: bool,
    /// The connection is TLS.
    tls: bool,
    /// The connection's SNI server name.
    sni: Option<Rc<str>>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream", &self.respond.borrow().stream_id())
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

/// Send `data` on a stream as the peer's window allows (`end`: then end
/// the stream). Waits while the peer grants no window.
pub async fn send_flow(send: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> io::Result<()> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(stream_error(e)),
            None => return Err(io::ErrorKind::ConnectionReset.into()),
        };
        let piece = data.split_to(granted.min(data.len()));
        let last = end && data.is_empty();
        send.send_data(piece, last).map_err(stream_error)?;
        if last {
            return Ok(());
        }
    }
    if end {
        send.send_data(Bytes::new(), true).map_err(stream_error)?;
    }
    Ok(())
}

pub(super) fn stream_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"));
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

impl H2Stream {
    pub fn new(
        recv: RecvStream,
        respond: Rc<RefCell<SendResponse<Bytes>>>,
        chunked: bool,
        tls: bool,
        sni: Option<Rc<str>>,
    ) -> Self {
        let recv_done = recv.is_end_stream();
        H2Stream {
            recv,
            respond,
            send: None,
            chunked,
            recv_done,
            finished: false,
            tls,
            sni,
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// Append the next DATA frame to `buf` (chunk-encoded when the body has
    /// no declared length; its end then appends the last chunk and the
    /// trailers). 0 at the end of the body. The window is given back as
    /// soon as the bytes are in `buf`: the exchange reads again only when
    /// it has forwarded them, so the window still paces the client.
    pub async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        while !self.recv_done {
            match poll_fn(|cx| self.recv.poll_data(cx)).await {
                Some(Ok(data)) => {
                    let n = data.len();
                    let _ = self.recv.flow_control().release_capacity(n);
                    if n == 0 {
                        continue;
                    }
                    if self.chunked {
                        let before = buf.len();
                        convert::push_chunk(buf, &data);
                        return Ok(buf.len() - before);
                    }
                    buf.extend_from_slice(&data);
                    return Ok(n);
                }
                Some(Err(e)) => return Err(stream_error(e)),
                None => {
                    self.recv_done = true;
                    if self.chunked {
                        let trailers = poll_fn(|cx| self.recv.poll_trailers(cx))
                            .await
                            .map_err(stream_error)?;
                        let before = buf.len();
                        convert::push_last_chunk(buf, trailers.as_ref());
                        return Ok(buf.len() - before);
                    }
                }
            }
        }
        Ok(0)
    }

    /// Send the response head; `end`: it has no body.
    pub fn send_head(&mut self, head: http::Response<()>, end: bool) -> io::Result<()> {
        let send = self
            .respond
            .borrow_mut()
            .send_response(head, end)
            .map_err(stream_error)?;
        if end {
            self.finished = true;
        } else {
            self.send = Some(send);
        }
        Ok(())
    }

    /// Whether a response head was sent.
    pub fn head_sent(&self) -> bool {
        self.send.is_some() || self.finished
    }

    /// Send body bytes as the client's window allows (a client that stops
    /// granting window stops this; the caller bounds it with `send_timeout`).
    pub async fn send_data(&mut self, data: Bytes, end: bool) -> io::Result<()> {
        let Some(send) = self.send.as_mut() else {
            return Err(io::Error::other("HTTP/2 body before its head"));
        };
        send_flow(send, data, end).await?;
        if end {
            self.finished = true;
        }
        Ok(())
    }

    /// End the response, with trailers when there are any.
    pub fn finish(&mut self, trailers: Option<http::HeaderMap>) -> io::Result<()> {
        if self.finished {
            return Ok(());
        }
        let Some(send) = self.send.as_mut() else {
            return Err(io::Error::other("HTTP/2 stream ended before its head"));
        };
        match trailers {
            Some(t) if !t.is_empty() => send.send_trailers(t).map_err(stream_error)?,
            _ => send.send_data(Bytes::new(), true).map_err(stream_error)?,
        }
        self.finished = true;
        Ok(())
    }

    /// After the exchange: a stream whose response did not end (the
    /// upstream failed mid-body, the route timed out) is reset, never ended
    /// as if complete.
    pub fn reset_unless_finished(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        match self.send.as_mut() {
            Some(s) => s.send_reset(h2::Reason::INTERNAL_ERROR),
            None => self
                .respond
                .borrow_mut()
                .send_reset(h2::Reason::INTERNAL_ERROR),
        }
    }
}
