//! `pg-probe bpf-fault`: runs a program as if the kernel lacked one cgroup hook.
//!
//! The machine's kernel has every hook, so a missing one is simulated where
//! the agent meets the kernel: a seccomp filter sends every bpf(2) call of
//! the program to this supervisor (SECCOMP_RET_USER_NOTIF). The supervisor
//! reads the call's `union bpf_attr` from the program's memory and answers
//! EINVAL when it loads (or links) a program for the chosen attach type,
//! which is what a kernel that predates that attach type answers. Every
//! other call runs in the kernel unchanged (SECCOMP_USER_NOTIF_FLAG_CONTINUE).
//!
//! `link-update` refuses BPF_LINK_UPDATE on a link of that attach type: a
//! restarted agent swapping its programs into the pinned links meets a
//! failure midway (the kernel's attach type is read from the link itself).
//!
//! Prints "calls=N refused=M" once the program has exited, and exits with
//! the program's status.

use std::{ffi::CString, io, mem::size_of, process::ExitCode};

use crate::{
    scm_rights::{recv_fd, send_fd},
    sock::check,
};

const BPF_PROG_LOAD: u64 = 5;
const BPF_LINK_CREATE: u64 = 28;
const BPF_LINK_UPDATE: u64 = 29;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// Offsets of the attach type in `union bpf_attr` (include/uapi/linux/bpf.h):
/// BPF_PROG_LOAD's `expected_attach_type` follows prog_type, insn_cnt,
/// insns, license, log_level, log_size, log_buf, kern_version, prog_flags,
/// `prog_name[16]` and prog_ifindex; BPF_LINK_CREATE's `attach_type` follows
/// prog_fd and target_fd.
const PROG_LOAD_ATTACH_TYPE_AT: u64 = 68;
const LINK_CREATE_ATTACH_TYPE_AT: u64 = 8;
/// BPF_LINK_UPDATE names the link by fd (the first field); its attach type
/// is at offset 24 of `struct bpf_link_info` (type, id, prog_id, then the
/// 8-aligned union whose cgroup member is cgroup_id, attach_type).
const LINK_INFO_CGROUP_ATTACH_TYPE_AT: usize = 24;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

/// `step` is `prog-load` or `link-create`; `hook` an attach type's name.
pub(crate) fn run(step: &str, hook: &str, argv: &[&str]) -> ExitCode {
    let (cmd, offset) = match step {
        "prog-load" => (BPF_PROG_LOAD, PROG_LOAD_ATTACH_TYPE_AT),
        "link-create" => (BPF_LINK_CREATE, LINK_CREATE_ATTACH_TYPE_AT),
        "link-update" => (BPF_LINK_UPDATE, 0),
        other => return usage(&format!("unknown step {other}")),
    };
    let Some(wanted) = portguard_common::attach_type_number(hook) else {
        return usage(&format!("unknown attach type {hook}"));
    };
    if argv.is_empty() {
        return usage("no program to run");
    }
    match supervise(cmd, offset, wanted, argv) {
        Ok((calls, refused, status)) => {
            println!("calls={calls} refused={refused}");
            ExitCode::from(status)
        }
        Err(e) => {
            eprintln!("pg-probe bpf-fault: {e}");
            ExitCode::from(125)
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!(
        "pg-probe bpf-fault: {why}; usage: bpf-fault prog-load|link-create|link-update BPF_CGROUP_... -- PROGRAM ARGS..."
    );
    ExitCode::from(125)
}

/// Forks the program under the filter and answers its bpf() calls until it
/// exits; returns (bpf calls seen, calls refused, exit status).
fn supervise(cmd: u64, offset: u64, wanted: u32, argv: &[&str]) -> io::Result<(u64, u64, u8)> {
    // Everything the child needs is allocated before fork: between fork and
    // exec it makes raw syscalls only.
    let args: Vec<CString> = argv.iter().map(|a| CString::new(*a).expect("argument with NUL")).collect();
    let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let filter = filter();
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
    let mut pair = [0; 2];
    // SAFETY: socketpair into a two-element array.
    check(unsafe {
        libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, pair.as_mut_ptr())
    })?;

    // SAFETY: pg-probe is single-threaded here; the child only makes raw
    // syscalls before exec.
    let pid = check(unsafe { libc::fork() })?;
    if pid == 0 {
        // SAFETY: raw syscalls on data prepared before the fork.
        unsafe {
            libc::close(pair[0]);
            // Lets the filter be installed without CAP_SYS_ADMIN; nothing
            // in the agent needs to gain privileges through exec.
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            let listener = libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &prog as *const libc::sock_fprog,
            );
            if listener < 0 || send_fd(pair[1], listener as libc::c_int).is_err() {
                libc::_exit(126);
            }
            // The program must not hold its own listener: the supervisor
            // alone answers.
            libc::close(listener as libc::c_int);
            libc::execvp(arg_ptrs[0], arg_ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    // SAFETY: closing our copy of the child's end.
    unsafe { libc::close(pair[1]) };
    let listener = recv_fd(pair[0]);
    // SAFETY: our own fd.
    unsafe { libc::close(pair[0]) };
    let listener = match listener {
        Ok(fd) => fd,
        Err(e) => {
            let status = wait_exit(pid, 0)?;
            return Err(io::Error::other(format!(
                "no seccomp listener from the child ({e}), which exited {status:?}"
            )));
        }
    };

    let (mut calls, mut refused) = (0u64, 0u64);
    let status = loop {
        let mut pfd = libc::pollfd { fd: listener, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Err(io::Error::last_os_error());
        }
        if n > 0 && pfd.revents & libc::POLLIN != 0 {
            if let Some(was_refused) = answer_one(listener, cmd, offset, wanted)? {
                calls += 1;
                refused += u64::from(was_refused);
            }
            continue;
        }
        // POLLHUP: no task uses the filter any more. Either way, check
        // whether the program is done.
        if let Some(status) = wait_exit(pid, libc::WNOHANG)? {
            break status;
        }
    };
    // SAFETY: our own fd.
    unsafe { libc::close(listener) };
    Ok((calls, refused, status))
}

/// Traps bpf(2) to the listener, lets every other syscall through.
fn filter() -> [libc::sock_filter; 6] {
    let stmt = |code: u32, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf: 0, k };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    // struct seccomp_data: int nr at 0, __u32 arch at 4.
    [
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4),
        jeq(AUDIT_ARCH, 0, 3),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        jeq(libc::SYS_bpf as u32, 0, 1),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_USER_NOTIF),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Receives one notification and answers it; returns whether it refused
/// the call, or None when the caller died before it could be answered.
fn answer_one(listener: libc::c_int, cmd: u64, offset: u64, wanted: u32) -> io::Result<Option<bool>> {
    // SAFETY: the kernel wants a zeroed seccomp_notif (EINVAL otherwise).
    let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: RECV fills req.
    if unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        // ENOENT: the caller was killed between poll and RECV.
        return if e.raw_os_error() == Some(libc::ENOENT) { Ok(None) } else { Err(e) };
    }
    let [bpf_cmd, attr, size, ..] = req.data.args;
    let mut refuse = false;
    if bpf_cmd == cmd && size >= offset + 4 {
        let attach_type = read_u32(req.pid, attr + offset).and_then(|v| {
            if cmd == BPF_LINK_UPDATE { link_attach_type(req.pid, v as libc::c_int) } else { Ok(v) }
        });
        // The pid may have exited and been reused between RECV and the
        // read: only what was read while the request is still pending
        // belongs to the caller (seccomp_unotify(2)).
        // SAFETY: ID_VALID reads one u64.
        let valid = unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &req.id) } == 0;
        if !valid {
            return Ok(None);
        }
        refuse = attach_type.is_ok_and(|t| t == wanted);
    }
    let resp = libc::seccomp_notif_resp {
        id: req.id,
        val: 0,
        error: if refuse { -libc::EINVAL } else { 0 },
        flags: if refuse { 0 } else { libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32 },
    };
    // SAFETY: SEND reads resp.
    if unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_SEND, &resp) } < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOENT) { Ok(None) } else { Err(e) };
    }
    Ok(Some(refuse))
}

/// The attach type of the cgroup link that `pid` holds as `fd`: a copy of
/// the fd (pidfd_getfd), then BPF_OBJ_GET_INFO_BY_FD on it.
fn link_attach_type(pid: u32, fd: libc::c_int) -> io::Result<u32> {
    // SAFETY: pidfd_open returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_getfd returns a new fd or -1.
    let link = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd as libc::c_int, fd, 0) };
    let err = io::Error::last_os_error();
    // SAFETY: our own fd.
    unsafe { libc::close(pidfd as libc::c_int) };
    if link < 0 {
        return Err(err);
    }
    let mut info = [0u8; 128];
    // union bpf_attr's info member: bpf_fd, info_len, info (a pointer).
    let mut attr = [0u64; 2];
    attr[0] = u64::from(link as u32) | ((info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: attr and info are valid for the sizes given.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.as_mut_ptr(), size_of::<[u64; 2]>())
    };
    let err = io::Error::last_os_error();
    // SAFETY: our own fd.
    unsafe { libc::close(link as libc::c_int) };
    if rc < 0 {
        return Err(err);
    }
    let at = LINK_INFO_CGROUP_ATTACH_TYPE_AT;
    Ok(u32::from_ne_bytes(info[at..at + 4].try_into().expect("4 bytes")))
}

fn read_u32(pid: u32, addr: u64) -> io::Result<u32> {
    let mut value = 0u32;
    let local = libc::iovec { iov_base: (&mut value as *mut u32).cast(), iov_len: size_of::<u32>() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: size_of::<u32>() };
    // SAFETY: one local iovec over `value`; the remote one is only read.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n != size_of::<u32>() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// The child's exit status (128 + signal when killed), or None if it is
/// still running and `flags` has WNOHANG.
fn wait_exit(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<u8>> {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let rc = check(unsafe { libc::waitpid(pid, &mut status, flags) })?;
    if rc == 0 {
        return Ok(None);
    }
    Ok(Some(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else {
        128u8.wrapping_add(libc::WTERMSIG(status) as u8)
    }))
}
