//! connect(), bind() and listen() submitted through io_uring instead of
//! the syscalls. Each prints "unsupported ..." where the kernel lacks
//! io_uring or the opcode.

use std::{io, net::IpAddr};

use io_uring::{IoUring, opcode, squeue, types::Fd};

use crate::sock::{local_port, sockaddr, socket};

/// connect() submitted through io_uring instead of the syscall.
pub(crate) fn uring_connect(proto: &str, ip: IpAddr, port: u16) -> io::Result<String> {
    let (sa, len, family) = sockaddr(ip, port);
    let s = socket(family, proto)?;
    let mut ring = match IoUring::new(4) {
        Ok(r) => r,
        Err(e) => return Ok(format!("unsupported {e}")),
    };
    let op = opcode::Connect::new(Fd(s.0), (&sa as *const libc::sockaddr_in6).cast(), len).build();
    submit_and_wait(&mut ring, &op)?;
    Ok("ok".into())
}

/// Submits one operation and returns its result, or "unsupported ..." when
/// this kernel has no io_uring or not this opcode.
fn uring_one(opcode: u8, name: &str, op: squeue::Entry) -> io::Result<Result<i32, String>> {
    let mut ring = match IoUring::new(4) {
        Ok(r) => r,
        Err(e) => return Ok(Err(format!("unsupported {e}"))),
    };
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    if !probe.is_supported(opcode) {
        return Ok(Err(format!("unsupported {name}")));
    }
    submit_and_wait(&mut ring, &op).map(Ok)
}

/// Pushes `op` (whose buffers the caller keeps alive across this call),
/// waits for its completion and returns its result.
fn submit_and_wait(ring: &mut IoUring, op: &squeue::Entry) -> io::Result<i32> {
    // SAFETY: everything the entry points to outlives the wait below.
    unsafe { ring.submission().push(op).map_err(io::Error::other)? };
    ring.submit_and_wait(1)?;
    let cqe = ring.completion().next().ok_or_else(|| io::Error::other("no completion"))?;
    if cqe.result() < 0 {
        return Err(io::Error::from_raw_os_error(-cqe.result()));
    }
    Ok(cqe.result())
}

/// bind() submitted through io_uring (Linux 6.11+).
pub(crate) fn uring_bind(proto: &str, ip: IpAddr, port: u16) -> io::Result<String> {
    let (sa, len, family) = sockaddr(ip, port);
    let s = socket(family, proto)?;
    let op = opcode::Bind::new(Fd(s.0), (&sa as *const libc::sockaddr_in6).cast(), len).build();
    Ok(match uring_one(opcode::Bind::CODE, "IORING_OP_BIND", op)? {
        Ok(_) => format!("ok port={}", local_port(s.0)),
        Err(unsupported) => unsupported,
    })
}

/// listen() without bind() submitted through io_uring (Linux 6.11+): the
/// kernel autobinds, as for the syscall.
pub(crate) fn uring_listen_unbound() -> io::Result<String> {
    let s = socket(libc::AF_INET, "tcp")?;
    let op = opcode::Listen::new(Fd(s.0), 1).build();
    Ok(match uring_one(opcode::Listen::CODE, "IORING_OP_LISTEN", op)? {
        Ok(_) => format!("ok port={}", local_port(s.0)),
        Err(unsupported) => unsupported,
    })
}
