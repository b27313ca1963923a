//! What a guarded workload would try to get out from under its guard:
//! move to another cgroup, reach the pinned maps, stop or trace the agent.
//! Each prints "ok" or "err ERRNO"; the tests run them as `nobody`.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _};

use crate::sock::check;

fn c_path(path: &str) -> CString {
    CString::new(std::ffi::OsStr::new(path).as_bytes()).expect("path without NUL")
}

/// open(O_WRONLY) and one write of `text` (e.g. "0" to a cgroup.procs).
pub(crate) fn write_file(path: &str, text: &str) -> io::Result<String> {
    let p = c_path(path);
    // SAFETY: a NUL-terminated path; the fd is closed below.
    let fd = check(unsafe { libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) })?;
    // SAFETY: writing our own buffer to our own fd.
    let rc = unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
    let result = if rc < 0 { Err(io::Error::last_os_error()) } else { Ok("ok".to_owned()) };
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    result
}

/// open(O_RDONLY) and one read (bpffs shows a pinned map's entries to
/// whoever can open it).
pub(crate) fn read_file(path: &str) -> io::Result<String> {
    let p = c_path(path);
    // SAFETY: a NUL-terminated path; the fd is closed below.
    let fd = check(unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    let mut buf = [0u8; 256];
    // SAFETY: reading into our own buffer from our own fd.
    let rc = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    let result = if rc < 0 { Err(io::Error::last_os_error()) } else { Ok("ok".to_owned()) };
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    result
}

/// BPF_OBJ_GET on a pinned object, read-write (what changing a map needs).
pub(crate) fn obj_get(path: &str) -> io::Result<String> {
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        // Named so it is zeroed: the kernel refuses (EINVAL) an attr whose
        // bytes past path_fd are not zero, and padding copied by
        // write_unaligned is whatever was on the stack.
        _pad: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let p = c_path(path);
    let mut attr = [0u8; 128];
    let obj = ObjAttr { pathname: p.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: 0 };
    // SAFETY: `attr` is larger than ObjAttr, which is plain data; the
    // kernel reads size_of(ObjAttr) bytes and the rest stays zero.
    unsafe { std::ptr::write_unaligned(attr.as_mut_ptr().cast::<ObjAttr>(), obj) };
    // SAFETY: bpf(2) with a zero-padded attr and its size.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_ptr(), attr.len() as u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd the kernel just gave us.
    unsafe { libc::close(fd as i32) };
    Ok("ok".to_owned())
}

/// kill(pid, sig).
pub(crate) fn kill(pid: &str, sig: &str) -> io::Result<String> {
    let pid: libc::pid_t = pid.parse().expect("pid");
    let sig: libc::c_int = sig.parse().expect("signal number");
    // SAFETY: kill(2) takes plain integers.
    check(unsafe { libc::kill(pid, sig) })?;
    Ok("ok".to_owned())
}

/// PTRACE_ATTACH (detached again at once if it worked).
pub(crate) fn ptrace_attach(pid: &str) -> io::Result<String> {
    let pid: libc::pid_t = pid.parse().expect("pid");
    // SAFETY: ptrace(2) with integer arguments and null pointers.
    let rc = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, std::ptr::null_mut::<libc::c_void>(), 0) };
    check(rc as libc::c_int)?;
    // SAFETY: as above.
    unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, std::ptr::null_mut::<libc::c_void>(), 0) };
    Ok("ok".to_owned())
}
