//! Sidecar mode: interception rules (`iptables`), the original destination
//! of an intercepted connection, and the lifecycle helpers (`wait-ready`,
//! `run -- APP`). docs/sidecar.md.

pub mod detect;
pub mod iptables;
pub mod lifecycle;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST` (both 80).
const SO_ORIGINAL_DST: libc::c_int = 80;

/// The address an intercepted (REDIRECTed) connection was originally sent
/// to, from the connection tracking entry. `local` is the socket's own
/// address, to pick the family.
pub fn original_dst(fd: RawFd, local: SocketAddr) -> io::Result<SocketAddr> {
    // An IPv4 connection on a dual-stack socket has a v4-mapped address:
    // its conntrack entry is IPv4.
    if canonical(local).is_ipv4() {
        // SAFETY: all-zero is a valid sockaddr_in.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `sa`, which we own.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                SO_ORIGINAL_DST,
                std::ptr::addr_of_mut!(sa).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
        Ok(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(sa.sin_port),
        )))
    } else {
        // SAFETY: all-zero is a valid sockaddr_in6.
        let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: as above, with sockaddr_in6.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                SO_ORIGINAL_DST,
                std::ptr::addr_of_mut!(sa).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
        Ok(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(sa.sin6_port),
            0,
            0,
        )))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => a,
        },
        v4 => v4,
    }
}
