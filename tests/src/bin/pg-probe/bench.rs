//! Timed workloads for `cargo xtask bench`: each runs ITERATIONS operations
//! and prints "ns_per_op=F refused=R".
//!
//!   w1 PORT   connect() a reused UDP socket to 127.0.0.1:PORT (no packet)
//!   w2 PORT   sendto() on an unconnected UDP socket to 127.0.0.1:PORT
//!             (a receiver is bound on RECEIVER_PORT, which drops what fills)
//!   w3 PORT   TCP connect to 127.0.0.1:PORT, accept, close both (SO_LINGER
//!             0 on the client: no TIME_WAIT); the listener is on
//!             LISTENER_PORT
//!   w4 PORT   bind() a UDP socket to 127.0.0.1:PORT and close it
//!
//! A refused operation counts as done: the denied variants time exactly
//! that. Refused means EPERM (a cgroup hook or a dropped packet), or for
//! TCP ECONNREFUSED (a firewall's reset).

use std::{io, mem::size_of, net::IpAddr, time::Instant};

use crate::{
    connect::connect_on,
    sock::{bind_on, check, sockaddr, socket},
};

pub(crate) const LISTENER_PORT: u16 = 41000;
pub(crate) const RECEIVER_PORT: u16 = 41001;

fn refused(r: io::Result<()>) -> io::Result<bool> {
    match r {
        Ok(()) => Ok(false),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ECONNREFUSED)) => Ok(true),
        Err(e) => Err(e),
    }
}

fn bind_to(fd: libc::c_int, port: u16) -> io::Result<()> {
    bind_on(fd, IpAddr::from([127, 0, 0, 1]), port)
}

pub(crate) fn run(workload: &str, port: u16, iterations: u64) -> io::Result<String> {
    let lo = IpAddr::from([127, 0, 0, 1]);
    let mut refusals = 0u64;
    let started;
    match workload {
        "w1" => {
            let s = socket(libc::AF_INET, "udp")?;
            started = Instant::now();
            for _ in 0..iterations {
                refusals += u64::from(refused(connect_on(&s, lo, port).map(drop))?);
            }
        }
        "w2" => {
            let rx = socket(libc::AF_INET, "udp")?;
            bind_to(rx.0, RECEIVER_PORT)?;
            let tx = socket(libc::AF_INET, "udp")?;
            let (sa, len, _) = sockaddr(lo, port);
            let msg = [0u8; 16];
            started = Instant::now();
            for _ in 0..iterations {
                // SAFETY: buffers valid for their lengths.
                let rc = unsafe {
                    libc::sendto(
                        tx.0,
                        msg.as_ptr().cast(),
                        msg.len(),
                        0,
                        &sa as *const _ as *const libc::sockaddr,
                        len,
                    )
                };
                let r = if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
                // A full receive buffer drops silently; ECONNREFUSED cannot
                // happen on an unconnected socket.
                refusals += u64::from(refused(r)?);
            }
        }
        "w3" => {
            let listener = socket(libc::AF_INET, "tcp")?;
            let one: libc::c_int = 1;
            // SAFETY: setsockopt with a valid int.
            unsafe {
                libc::setsockopt(
                    listener.0,
                    libc::SOL_SOCKET,
                    libc::SO_REUSEADDR,
                    (&one as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as u32,
                )
            };
            bind_to(listener.0, LISTENER_PORT)?;
            // SAFETY: listen on our own socket.
            check(unsafe { libc::listen(listener.0, 128) })?;
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            started = Instant::now();
            for _ in 0..iterations {
                let c = socket(libc::AF_INET, "tcp")?;
                // SAFETY: setsockopt with a valid linger.
                unsafe {
                    libc::setsockopt(
                        c.0,
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&linger as *const libc::linger).cast(),
                        size_of::<libc::linger>() as u32,
                    )
                };
                if refused(connect_on(&c, lo, port).map(drop))? {
                    refusals += 1;
                    continue;
                }
                // SAFETY: accept on our listener; the fd is closed at once.
                let a =
                    check(unsafe { libc::accept(listener.0, std::ptr::null_mut(), std::ptr::null_mut()) })?;
                // SAFETY: the fd accept just returned.
                unsafe { libc::close(a) };
            }
        }
        "w4" => {
            started = Instant::now();
            for _ in 0..iterations {
                let s = socket(libc::AF_INET, "udp")?;
                let bound = bind_to(s.0, port).map_err(|e| {
                    // Say who holds the port (read once, after the fact:
                    // reading fds while measuring is what can cause this).
                    if e.raw_os_error() == Some(libc::EADDRINUSE) {
                        io::Error::other(format!("EADDRINUSE: {}", crate::holders::describe("udp", port)))
                    } else {
                        e
                    }
                });
                refusals += u64::from(refused(bound)?);
            }
        }
        other => panic!("unknown workload {other}"),
    }
    let ns = started.elapsed().as_nanos() as f64 / iterations as f64;
    Ok(format!("ns_per_op={ns:.1} refused={refusals}"))
}
