//! Sockets that are neither TCP nor UDP (raw, SCTP, packet): creating one
//! is the operation judged.

use std::io;

use crate::sock::check;

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
