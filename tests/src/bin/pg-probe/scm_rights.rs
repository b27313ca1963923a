//! File descriptors passed over a unix socket (SCM_RIGHTS): a socket made
//! in one cgroup and used from another, and bpf_fault.rs's seccomp
//! listener handed from child to supervisor.

use std::{io, mem::size_of, net::IpAddr};

use crate::{
    connect::{connect_on, join_cgroup},
    sock::{Sock, check, errno_name, family_of, socket},
};

/// Creates the socket in this process's cgroup, passes it over a unix
/// socket to a child that first moves to `procs`; the child connects.
pub(crate) fn scm_pass(proto: &str, ip: IpAddr, port: u16, procs: &str) -> io::Result<String> {
    let mut pair = [0; 2];
    // SAFETY: socketpair into a two-element array.
    check(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) })?;
    // SAFETY: fork in a single-threaded program.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let result = (|| -> io::Result<String> {
            join_cgroup(procs)?;
            let fd = recv_fd(pair[1])?;
            connect_on(&Sock(fd), ip, port)
        })();
        let line = match result {
            Ok(l) => l,
            Err(e) => format!("err {}", errno_name(&e)),
        };
        println!("{line}");
        // SAFETY: ends the child without running the parent's exit handlers
        // twice.
        unsafe { libc::_exit(0) };
    }
    let s = socket(family_of(ip), proto)?;
    send_fd(pair[0], s.0)?;
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    // The child printed the verdict.
    std::process::exit(0);
}

/// Room for one SCM_RIGHTS message of one fd.
type ControlBuf = [u8; 64];

/// A msghdr over one data byte (`iov`) and the first `controllen` bytes of
/// `cbuf`.
fn msghdr(iov: &mut libc::iovec, cbuf: &mut ControlBuf, controllen: usize) -> libc::msghdr {
    // SAFETY: all-zero is a valid msghdr; the caller keeps iov and cbuf
    // alive while it uses the header.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cbuf.as_mut_ptr().cast();
    hdr.msg_controllen = controllen;
    hdr
}

pub(crate) fn send_fd(over: libc::c_int, fd: libc::c_int) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut cbuf: ControlBuf = [0; 64];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) } as usize;
    let hdr = msghdr(&mut iov, &mut cbuf, space);
    // SAFETY: standard SCM_RIGHTS message construction into a large enough
    // buffer (CMSG_SPACE of one int fits in 64 bytes).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&hdr);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        if libc::sendmsg(over, &hdr, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

pub(crate) fn recv_fd(over: libc::c_int) -> io::Result<libc::c_int> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut cbuf: ControlBuf = [0; 64];
    let mut hdr = msghdr(&mut iov, &mut cbuf, size_of::<ControlBuf>());
    // SAFETY: receiving one SCM_RIGHTS fd into a large enough buffer.
    unsafe {
        if libc::recvmsg(over, &mut hdr, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&hdr);
        if cmsg.is_null() {
            return Err(io::Error::other("no fd received"));
        }
        Ok(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()))
    }
}
