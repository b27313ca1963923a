//! BPF run statistics read straight from the kernel by program id, and
//! the one link operation the benchmark needs (detaching a pinned link).
//!
//! `bpftool prog show` also lists which processes hold each program, and
//! finds them with a task-file iterator that takes a reference on every
//! open file of every process for a moment. A socket closed at that moment
//! is released late, and the benchmark's bind loop then hits EADDRINUSE on
//! its next bind. These two syscalls touch no other process.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Offsets in `struct bpf_prog_info` (stable uapi, append-only).
const RUN_TIME_NS: usize = 192;
const RUN_CNT: usize = 200;
/// Offset of `prog_id` in `struct bpf_link_info`.
const LINK_PROG_ID: usize = 8;

fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a zeroed prefix of `union bpf_attr` with the fields
    // this command reads filled in; the kernel reads at most its size.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr().cast::<libc::c_void>(), size_of_val(attr) as u32)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: these commands return a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// Fills `info` with the object's `bpf_*_info`.
fn info(fd: &OwnedFd, info: &mut [u8; 256]) -> io::Result<()> {
    // bpf_fd: u32, info_len: u32, info: u64.
    let mut attr = [u64::from(fd.as_raw_fd() as u32) | (256u64 << 32), info.as_mut_ptr() as u64, 0];
    // SAFETY: as in `bpf`; `info` outlives the call and is 256 bytes long.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr().cast::<libc::c_void>(),
            size_of_val(&attr) as u32,
        )
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn u64_at(b: &[u8; 256], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// (run_time_ns, run_cnt) of program `id` (needs kernel.bpf_stats_enabled).
pub(super) fn run_stats(id: u32) -> Option<(u64, u64)> {
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut [u64::from(id), 0, 0]).ok()?;
    let mut buf = [0u8; 256];
    info(&fd, &mut buf).ok()?;
    Some((u64_at(&buf, RUN_TIME_NS), u64_at(&buf, RUN_CNT)))
}

/// Detaches the link pinned at `path` from its hook (the pin stays, its
/// program no longer runs).
pub(super) fn detach_pinned_link(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())?;
    // pathname: u64, bpf_fd: u32, file_flags: u32.
    let link = bpf(BPF_OBJ_GET, &mut [c.as_ptr() as u64, 0, 0])?;
    let mut attr = [u64::from(link.as_raw_fd() as u32)];
    // SAFETY: as in `bpf`: link_detach.link_fd is the attr's first u32.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_mut_ptr().cast::<libc::c_void>(),
            size_of_val(&attr) as u32,
        )
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The program behind the link pinned at `path`.
pub(super) fn linked_program(path: &Path) -> Option<u32> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // pathname: u64, bpf_fd: u32, file_flags: u32.
    let fd = bpf(BPF_OBJ_GET, &mut [c.as_ptr() as u64, 0, 0]).ok()?;
    let mut buf = [0u8; 256];
    info(&fd, &mut buf).ok()?;
    Some(u32::from_ne_bytes(buf[LINK_PROG_ID..LINK_PROG_ID + 4].try_into().expect("4 bytes")))
}
