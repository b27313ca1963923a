//! Breaking enforcement on purpose, the way a root process could behind
//! the agent's back: raw bpf() calls on the pinned maps and links (the
//! tests of `portguard verify` must see each break caught).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use crate::sandbox::Sandbox;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;

#[repr(C)]
#[derive(Default)]
struct Attr {
    words: [u64; 8],
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: `attr` is as large as every bpf_attr variant used here; the
    // kernel reads and writes within its size.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, size_of::<Attr>() as u32) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this new fd to us.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Opens the pinned object at `path`.
pub fn obj_get(path: &Path) -> OwnedFd {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let mut attr = Attr::default();
    attr.words[0] = c.as_ptr() as u64;
    owned(bpf(BPF_OBJ_GET, &mut attr).unwrap_or_else(|e| panic!("BPF_OBJ_GET {}: {e}", path.display())))
}

fn elem(map: &OwnedFd, key: &[u8], value: u64, flags: u64) -> Attr {
    let mut attr = Attr::default();
    attr.words[0] = map.as_raw_fd() as u64;
    attr.words[1] = key.as_ptr() as u64;
    attr.words[2] = value;
    attr.words[3] = flags;
    attr
}

pub fn map_update(map: &OwnedFd, key: &[u8], value: &[u8]) {
    let mut attr = elem(map, key, value.as_ptr() as u64, 0);
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).unwrap_or_else(|e| panic!("BPF_MAP_UPDATE_ELEM: {e}"));
}

pub fn map_delete(map: &OwnedFd, key: &[u8]) {
    let mut attr = elem(map, key, 0, 0);
    bpf(BPF_MAP_DELETE_ELEM, &mut attr).unwrap_or_else(|e| panic!("BPF_MAP_DELETE_ELEM: {e}"));
}

pub fn map_lookup(map: &OwnedFd, key: &[u8], value_size: usize) -> Option<Vec<u8>> {
    let mut value = vec![0u8; value_size];
    let mut attr = elem(map, key, value.as_mut_ptr() as u64, 0);
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).ok().map(|_| value)
}

/// The id of the program a pinned link runs.
pub fn link_prog_id(link: &OwnedFd) -> u32 {
    let mut info = [0u32; 16];
    let mut attr = Attr::default();
    attr.words[0] = link.as_raw_fd() as u64 | ((size_of_val(&info) as u64) << 32);
    attr.words[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).unwrap_or_else(|e| panic!("link info: {e}"));
    info[2]
}

/// Makes `link` run the program `prog_id` (BPF_LINK_UPDATE).
pub fn link_update(link: &OwnedFd, prog_id: u32) {
    let mut attr = Attr::default();
    attr.words[0] = u64::from(prog_id);
    let prog = owned(bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).unwrap_or_else(|e| panic!("prog {prog_id}: {e}")));
    let mut attr = Attr::default();
    attr.words[0] = link.as_raw_fd() as u64 | ((prog.as_raw_fd() as u64) << 32);
    bpf(BPF_LINK_UPDATE, &mut attr).unwrap_or_else(|e| panic!("BPF_LINK_UPDATE: {e}"));
}

impl Sandbox {
    /// A pinned map of the agent (under `maps-v<ABI>/`).
    pub fn pinned_map(&self, name: &str) -> OwnedFd {
        let dir = std::fs::read_dir(&self.bpffs)
            .expect("bpffs dir")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("maps-v")))
            .expect("a maps directory");
        obj_get(&dir.join(name))
    }

    /// Where the agent pinned the link of `program` at the cgroup `rel`.
    pub fn link_pin(&self, rel: &str, program: &str) -> PathBuf {
        use std::os::unix::fs::MetadataExt as _;
        let id = std::fs::metadata(self.cgroup(rel)).expect("cgroup").ino();
        self.bpffs.join("links").join(id.to_string()).join(program)
    }
}
