//! Sockets that are neither TCP nor UDP (raw, SCTP, packet, ICMP ping):
//! creating one is the operation judged.

use std::{io, net::IpAddr};

use crate::sock::{Sock, check, family_of, send_to};

pub(crate) fn create_socket(kind: &str) -> io::Result<String> {
    let (family, ty, proto) = match kind {
        "raw" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        "sctp" => (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP),
        "packet" => (libc::AF_PACKET, libc::SOCK_RAW, 0),
        other => panic!("unknown socket kind {other}"),
    };
    // SAFETY: plain socket(2).
    let fd = check(unsafe { libc::socket(family, ty, proto) })?;
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    Ok("ok".into())
}

/// An ICMP "ping" socket (`SOCK_DGRAM`, `IPPROTO_ICMP`/`IPPROTO_ICMPV6`,
/// open to the groups in `net.ipv4.ping_group_range`) sending one echo
/// request to `ip`: "ok" when both the socket and the send succeed.
pub(crate) fn ping(ip: IpAddr) -> io::Result<String> {
    let (proto, echo_request) = match ip {
        IpAddr::V4(_) => (libc::IPPROTO_ICMP, 8u8),
        IpAddr::V6(_) => (libc::IPPROTO_ICMPV6, 128u8),
    };
    // SAFETY: plain socket(2).
    let s = Sock(check(unsafe { libc::socket(family_of(ip), libc::SOCK_DGRAM, proto) })?);
    // type, code, checksum (the kernel fills it), identifier (the kernel
    // sets it to the socket's), sequence 1.
    let request = [echo_request, 0, 0, 0, 0, 0, 0, 1];
    send_to(s.0, &request, 0, ip, 0)?;
    Ok("ok".into())
}
