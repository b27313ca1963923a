//! UDP datagrams to a destination on an unconnected socket: sendto(2),
//! sendmsg(2) and sendmmsg(2).

use std::{io, net::IpAddr};

use crate::sock::{Sock, family_of, local_port, send_to, sockaddr, socket};

pub(crate) fn sendto(ip: IpAddr, port: u16) -> io::Result<String> {
    sendto_on(ip, port).map(|_| "ok".into())
}

/// Sends from a socket that was never bound; reports the source port the
/// kernel picked.
pub(crate) fn sendto_autobind(ip: IpAddr, port: u16) -> io::Result<String> {
    let s = sendto_on(ip, port)?;
    Ok(format!("ok port={}", local_port(s.0)))
}

fn sendto_on(ip: IpAddr, port: u16) -> io::Result<Sock> {
    let s = socket(family_of(ip), "udp")?;
    send_to(s.0, b"portguard-probe", 0, ip, port)?;
    Ok(s)
}

/// sendmsg(2) with a destination, or with `many` two such messages in one
/// sendmmsg(2).
pub(crate) fn sendmsg_to(ip: IpAddr, port: u16, many: bool) -> io::Result<String> {
    let (mut sa, len, family) = sockaddr(ip, port);
    let s = socket(family, "udp")?;
    let mut payload = *b"portguard-probe";
    let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
    // SAFETY: all-zero is a valid msghdr; the pointers set below outlive the call.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_name = (&mut sa as *mut libc::sockaddr_in6).cast();
    hdr.msg_namelen = len;
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if many {
        let mut msgs =
            [libc::mmsghdr { msg_hdr: hdr, msg_len: 0 }, libc::mmsghdr { msg_hdr: hdr, msg_len: 0 }];
        // SAFETY: two valid mmsghdrs.
        let n = unsafe { libc::sendmmsg(s.0, msgs.as_mut_ptr(), 2, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(format!("ok sent={n}"));
    }
    // SAFETY: a valid msghdr.
    if unsafe { libc::sendmsg(s.0, &hdr, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok("ok".into())
}
