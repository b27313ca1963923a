//! One operation repeated many times, with the verdicts counted: `hammer`
//! (an allowed and a denied port, alternately, for a while) and `flood`
//! (connect() on one socket, as fast as it can).

use std::{io, net::IpAddr};

use crate::{
    bind::bind,
    connect::{connect, connect_on},
    holders,
    sock::{family_of, socket},
};

/// Counts verdicts of a repeated operation; see the usage in main.rs.
pub(crate) fn hammer(
    op: &str,
    proto: &str,
    ip: IpAddr,
    allowed: u16,
    denied: u16,
    millis: u64,
) -> io::Result<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(millis);
    let attempt = |port: u16| -> io::Result<bool> {
        let r = match op {
            "bind" => bind(proto, ip, port),
            "connect" => connect(proto, ip, port),
            other => panic!("hammer: unknown op {other}"),
        };
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(false),
            // Name what holds the port, now, for whoever reads the failure.
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Err(io::Error::other(format!(
                "EADDRINUSE {op} {proto} {ip}:{port}: {}",
                holders::describe(proto, port)
            ))),
            Err(e) => Err(e),
        }
    };
    let (mut a_ok, mut a_ref, mut d_ok, mut d_ref) = (0u64, 0u64, 0u64, 0u64);
    while std::time::Instant::now() < deadline {
        if attempt(allowed)? {
            a_ok += 1
        } else {
            a_ref += 1
        }
        if attempt(denied)? { d_ok += 1 } else { d_ref += 1 }
    }
    Ok(format!("allowed_ok={a_ok} allowed_refused={a_ref} denied_ok={d_ok} denied_refused={d_ref}"))
}

/// Repeated connect() on one socket: the cheapest way to hit a hook.
pub(crate) fn flood(proto: &str, ip: IpAddr, port: u16, count: u64) -> io::Result<String> {
    let s = socket(family_of(ip), proto)?;
    let mut refused = 0u64;
    for _ in 0..count {
        if let Err(e) = connect_on(&s, ip, port) {
            if e.raw_os_error() != Some(libc::EPERM) {
                return Err(e);
            }
            refused += 1;
        }
    }
    Ok(format!("attempted={count} refused={refused}"))
}
