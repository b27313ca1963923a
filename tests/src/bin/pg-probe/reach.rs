//! Inbound operations for the differential test: a TCP server that
//! accepts and forgets (so its backlog never fills over hundreds of
//! connections), and clients that reach a server from a chosen source
//! address and give up after a short time (a dropped SYN would otherwise
//! retry for minutes).

use std::{
    io,
    net::{IpAddr, TcpListener},
};

use crate::sock::{bind_on, check, errno_name, family_of, send_to, sockaddr, socket};

/// Binds and listens on TCP `ip:port`, prints "ok port=N", then accepts
/// and closes connections until killed.
pub(crate) fn accept_serve(ip: IpAddr, port: u16) -> io::Result<String> {
    let l = TcpListener::bind((ip, port))?;
    println!("ok port={}", l.local_addr()?.port());
    io::Write::flush(&mut io::stdout())?;
    loop {
        drop(l.accept()?);
    }
}

pub(crate) fn timeout(fd: libc::c_int, option: libc::c_int, millis: u64) -> io::Result<()> {
    let tv =
        libc::timeval { tv_sec: (millis / 1000) as libc::time_t, tv_usec: ((millis % 1000) * 1000) as _ };
    // SAFETY: tv is a valid timeval for the call.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// From a socket bound to `src`, reaches `dst:port`: TCP connects, UDP
/// sends a datagram and waits for the server's answer. "ok", "timeout"
/// (nothing came back within `millis`) or "err ERRNO".
pub(crate) fn reach(proto: &str, src: IpAddr, dst: IpAddr, port: u16, millis: u64) -> io::Result<String> {
    let s = socket(family_of(dst), proto)?;
    bind_on(s.0, src, 0)?;
    if proto == "tcp" {
        // A blocking connect gives up with EINPROGRESS once SO_SNDTIMEO runs out.
        timeout(s.0, libc::SO_SNDTIMEO, millis)?;
        let (sa, len, _) = sockaddr(dst, port);
        // SAFETY: sa is valid for len bytes.
        let rc = unsafe { libc::connect(s.0, &sa as *const _ as *const libc::sockaddr, len) };
        return Ok(match check(rc) {
            Ok(_) => "ok".into(),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => "timeout".into(),
            Err(e) => format!("err {}", errno_name(&e)),
        });
    }
    timeout(s.0, libc::SO_RCVTIMEO, millis)?;
    send_to(s.0, b"hello", 0, dst, port)?;
    let mut buf = [0u8; 64];
    // SAFETY: buf is valid for its length.
    let rc = unsafe { libc::recv(s.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
    Ok(match check(rc as libc::c_int) {
        Ok(_) => "ok".into(),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => "timeout".into(),
        Err(e) => format!("err {}", errno_name(&e)),
    })
}
