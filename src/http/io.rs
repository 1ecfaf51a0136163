//! Small I/O helpers over monoio's rent-style API.

use std::io;

use bytes::BytesMut;
use monoio::buf::SliceMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// Read more bytes, appending to `buf` (growing it by at least `spare`).
pub async fn read_more(
    stream: &mut TcpStream,
    mut buf: BytesMut,
    spare: usize,
) -> (io::Result<usize>, BytesMut) {
    if buf.capacity() - buf.len() < spare {
        buf.reserve(spare);
    }
    let len = buf.len();
    let cap = buf.capacity();
    let (res, slice) = stream.read(SliceMut::new(buf, len, cap)).await;
    (res, slice.into_inner())
}

/// Write all of a `Bytes`.
pub async fn write_bytes(stream: &mut TcpStream, data: bytes::Bytes) -> io::Result<()> {
    let (res, _) = stream.write_all(data).await;
    res.map(|_| ())
}
