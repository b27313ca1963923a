//! Raw bpf() calls on links that aya 0.14 lacks: in-place program
//! replacement for links pinned by an earlier agent, and link ids, to wait
//! until an unpinned link is really gone.
//!
//! bpffs does not allow renaming a pinned link, and unpinning the old one
//! before pinning a new one would leave the hook empty for a moment. The
//! kernel's BPF_LINK_UPDATE swaps the program inside an existing link
//! atomically, which is exactly an upgrade without a gap. aya 0.14 does not
//! expose it for cgroup links, so it is called directly.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

pub(super) use super::syscall::open_pinned;
use super::syscall::{bpf, info_by_fd};

const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

/// The head of `struct bpf_link_info`; the kernel fills what fits.
#[repr(C)]
#[derive(Default)]
struct LinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _rest: [u32; 13],
}

#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    link_id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Makes the link at `link` run `program` from now on.
pub(super) fn replace_program(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// The kernel's id of the link behind `link`.
pub(super) fn link_id(link: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = LinkInfo::default();
    info_by_fd(link, &mut info)?;
    Ok(info.id)
}

/// Whether a link with this id still exists. Dropping a link's last
/// reference (unpinning it) frees it, and detaches its program, from a
/// kernel work queue a moment later, not in the unlink itself.
pub(super) fn link_exists(id: u32) -> bool {
    let mut attr = GetFdByIdAttr { link_id: id, ..Default::default() };
    match bpf(BPF_LINK_GET_FD_BY_ID, &mut attr) {
        Ok(fd) => {
            // SAFETY: the kernel just returned this new fd to us.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            true
        }
        Err(e) => e.raw_os_error() != Some(libc::ENOENT),
    }
}
