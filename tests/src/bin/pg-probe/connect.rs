//! Reaching a peer: connect(2), after the process changed cgroup, after a
//! wait, after an IP_BIND_ADDRESS_NO_PORT bind, and TCP Fast Open's
//! connecting sendto(2).

use std::{io, mem::size_of, net::IpAddr};

use crate::sock::{Sock, bind_on, check, errno_name, family_of, send_to, sockaddr, socket};

pub(crate) fn connect_on(s: &Sock, ip: IpAddr, port: u16) -> io::Result<String> {
    let (sa, len, _) = sockaddr(ip, port);
    // SAFETY: sa is valid for len bytes.
    check(unsafe { libc::connect(s.0, &sa as *const _ as *const libc::sockaddr, len) })?;
    Ok("ok".into())
}

pub(crate) fn connect(proto: &str, ip: IpAddr, port: u16) -> io::Result<String> {
    let s = socket(family_of(ip), proto)?;
    connect_on(&s, ip, port)
}

/// Like [`connect`], but a TCP connect whose SYN gets no answer gives up
/// after `millis` and says "timeout" (the connect hook let it through; a
/// refusal is EPERM at once). A dropped SYN would otherwise be retried for
/// about two minutes.
pub(crate) fn connect_within(proto: &str, ip: IpAddr, port: u16, millis: u64) -> io::Result<String> {
    let s = socket(family_of(ip), proto)?;
    crate::reach::timeout(s.0, libc::SO_SNDTIMEO, millis)?;
    match connect_on(&s, ip, port) {
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok("timeout".into()),
        other => other,
    }
}

/// Moves this process into the cgroup whose `cgroup.procs` is `procs`.
pub(crate) fn join_cgroup(procs: &str) -> io::Result<()> {
    std::fs::write(procs, std::process::id().to_string())
}

pub(crate) fn move_then_connect(proto: &str, ip: IpAddr, port: u16, procs: &str) -> io::Result<String> {
    let s = socket(family_of(ip), proto)?;
    join_cgroup(procs).map_err(|e| io::Error::new(e.kind(), format!("join {procs}: {e}")))?;
    connect_on(&s, ip, port)
}

pub(crate) fn wait_then_connect(
    proto: &str,
    ip: IpAddr,
    port: u16,
    file: &str,
    procs: Option<&str>,
) -> io::Result<String> {
    let s = socket(family_of(ip), proto)?;
    println!("ready");
    use std::io::Write as _;
    let _ = io::stdout().flush();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::path::Path::new(file).exists() {
        if std::time::Instant::now() > deadline {
            return Err(io::Error::other("timed out waiting for the go file"));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if let Some(procs) = procs {
        join_cgroup(procs).map_err(|e| io::Error::new(e.kind(), format!("join {procs}: {e}")))?;
    }
    connect_on(&s, ip, port)
}

pub(crate) fn bind_no_port_connect(ip: IpAddr, port: u16) -> io::Result<String> {
    let s = socket(family_of(ip), "tcp")?;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a valid int (IP_BIND_ADDRESS_NO_PORT = 24).
    check(unsafe {
        libc::setsockopt(
            s.0,
            libc::IPPROTO_IP,
            24,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as u32,
        )
    })?;
    if let Err(e) = bind_on(s.0, ip, 0) {
        return Ok(format!("bind: err {}", errno_name(&e)));
    }
    connect_on(&s, ip, port)
}

pub(crate) fn fastopen(ip: IpAddr, port: u16) -> io::Result<String> {
    let s = socket(family_of(ip), "tcp")?;
    send_to(s.0, b"GET / HTTP/1.0\r\n\r\n", libc::MSG_FASTOPEN, ip, port)?;
    Ok("ok".into())
}
