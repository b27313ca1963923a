//! Which filesystem a path is on (statfs(2) `f_type`), for the checks that
//! a directory really is cgroup2 or bpffs.

use std::{io, path::Path};

pub(crate) const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
pub(crate) const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub(crate) fn magic(path: &Path) -> io::Result<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: libc::statfs is plain integers and arrays, for which all
    // zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path that outlives the call, and `st`
    // is a valid, writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}
