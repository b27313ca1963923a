//! The raw-libc socket toolkit every command uses: sockets that close on
//! drop, sockaddrs for either family, and errno names for the verdicts.

use std::{io, mem::size_of, net::IpAddr};

/// How a failed operation is printed: "err EPERM", never a localised text.
pub(crate) fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::EADDRINUSE) => "EADDRINUSE".into(),
        Some(libc::EINVAL) => "EINVAL".into(),
        Some(libc::ESRCH) => "ESRCH".into(),
        Some(libc::EAFNOSUPPORT) => "EAFNOSUPPORT".into(),
        Some(libc::ENETUNREACH) => "ENETUNREACH".into(),
        Some(n) => format!("errno{n}"),
        None => e.to_string(),
    }
}

pub(crate) fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

pub(crate) struct Sock(pub(crate) libc::c_int);

impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.0) };
    }
}

pub(crate) fn socket(family: libc::c_int, proto: &str) -> io::Result<Sock> {
    let (ty, protocol) = match proto {
        "tcp" => (libc::SOCK_STREAM, 0),
        "udp" => (libc::SOCK_DGRAM, 0),
        // Multipath TCP: a stream socket of its own protocol, judged as TCP.
        "mptcp" => (libc::SOCK_STREAM, libc::IPPROTO_MPTCP),
        other => panic!("unknown protocol {other}"),
    };
    // SAFETY: plain socket(2).
    check(unsafe { libc::socket(family, ty, protocol) }).map(Sock)
}

/// A sockaddr for `ip:port`, sized for sockaddr_in6.
pub(crate) fn sockaddr(ip: IpAddr, port: u16) -> (libc::sockaddr_in6, libc::socklen_t, libc::c_int) {
    // SAFETY: all-zero is a valid sockaddr_in6.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    match ip {
        IpAddr::V4(v4) => {
            // SAFETY: sockaddr_in fits in sockaddr_in6.
            let sin = unsafe { &mut *(&mut sa as *mut libc::sockaddr_in6 as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = port.to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
            (sa, size_of::<libc::sockaddr_in>() as libc::socklen_t, libc::AF_INET)
        }
        IpAddr::V6(v6) => {
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = port.to_be();
            sa.sin6_addr.s6_addr = v6.octets();
            (sa, size_of::<libc::sockaddr_in6>() as libc::socklen_t, libc::AF_INET6)
        }
    }
}

pub(crate) fn parse_ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("bad IP {s}"))
}

pub(crate) fn family_of(ip: IpAddr) -> libc::c_int {
    if ip.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 }
}

pub(crate) fn local_port(fd: libc::c_int) -> u16 {
    // SAFETY: all-zero is a valid sockaddr_in6.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: getsockname writes at most len bytes into sa.
    unsafe { libc::getsockname(fd, &mut sa as *mut _ as *mut libc::sockaddr, &mut len) };
    // sin_port and sin6_port sit at the same offset.
    u16::from_be(sa.sin6_port)
}

/// bind(2) of `fd` to `ip:port`.
pub(crate) fn bind_on(fd: libc::c_int, ip: IpAddr, port: u16) -> io::Result<()> {
    let (sa, len, _) = sockaddr(ip, port);
    // SAFETY: sa is valid for len bytes.
    check(unsafe { libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) }).map(drop)
}

/// sendto(2) of `msg` on `fd` to `ip:port`.
pub(crate) fn send_to(
    fd: libc::c_int,
    msg: &[u8],
    flags: libc::c_int,
    ip: IpAddr,
    port: u16,
) -> io::Result<()> {
    let (sa, len, _) = sockaddr(ip, port);
    // SAFETY: buffers valid for their lengths.
    let rc = unsafe {
        libc::sendto(fd, msg.as_ptr().cast(), msg.len(), flags, &sa as *const _ as *const libc::sockaddr, len)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
