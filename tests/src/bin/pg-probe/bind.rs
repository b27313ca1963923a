//! Taking a local port: bind(2) in its forms, and listen(2) after a bind or
//! without one.

use std::{io, mem::size_of, net::IpAddr};

use crate::sock::{bind_on, check, family_of, local_port, socket};

pub(crate) fn bind(proto: &str, ip: IpAddr, port: u16) -> io::Result<String> {
    let s = socket(family_of(ip), proto)?;
    bind_on(s.0, ip, port)?;
    Ok(format!("ok port={}", local_port(s.0)))
}

pub(crate) fn bind_unspec(proto: &str, port: u16) -> io::Result<String> {
    let s = socket(libc::AF_INET, proto)?;
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    // AF_UNSPEC with INADDR_ANY: the one AF_UNSPEC form inet_bind accepts,
    // for compatibility.
    sin.sin_family = libc::AF_UNSPEC as libc::sa_family_t;
    sin.sin_port = port.to_be();
    // SAFETY: sin is valid for its size.
    check(unsafe {
        libc::bind(s.0, &sin as *const _ as *const libc::sockaddr, size_of::<libc::sockaddr_in>() as u32)
    })?;
    Ok(format!("ok port={}", local_port(s.0)))
}

pub(crate) fn serve(proto: &str, ip: IpAddr, port: u16) -> io::Result<String> {
    let s = socket(family_of(ip), proto)?;
    bind_on(s.0, ip, port)?;
    // SAFETY: listen on our own socket.
    check(unsafe { libc::listen(s.0, 1) })?;
    Ok(format!("ok port={}", local_port(s.0)))
}

/// Binds (and for TCP listens), reports, and keeps the port live until
/// killed: a long-lived server for the port-inventory tests.
pub(crate) fn hold(proto: &str, ip: IpAddr, port: u16) -> io::Result<String> {
    let s = socket(family_of(ip), proto)?;
    bind_on(s.0, ip, port)?;
    if proto != "udp" {
        // SAFETY: listen on our own socket.
        check(unsafe { libc::listen(s.0, 1) })?;
    }
    println!("ok port={}", local_port(s.0));
    io::Write::flush(&mut io::stdout())?;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

pub(crate) fn listen_unbound() -> io::Result<String> {
    let s = socket(libc::AF_INET, "tcp")?;
    // SAFETY: listen on our own socket.
    check(unsafe { libc::listen(s.0, 1) })?;
    Ok(format!("ok port={}", local_port(s.0)))
}
