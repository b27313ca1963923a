//! The permission rule on real files. These tests chown files to other
//! users, so they need root, as the rest of the suite does.

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, chown, symlink},
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use super::{Entry, Problem, check_for};

const OTHER: u32 = 4242;

/// A scratch directory below the system's temp dir (root-owned and
/// sticky), itself root-owned 0755, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pg-perm-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o755);
        Scratch(dir)
    }

    fn dir(&self, rel: &str, mode: u32) -> PathBuf {
        let p = self.0.join(rel);
        fs::create_dir_all(&p).unwrap();
        chmod(&p, mode);
        p
    }

    fn file(&self, rel: &str, mode: u32) -> PathBuf {
        let p = self.0.join(rel);
        fs::write(&p, "").unwrap();
        chmod(&p, mode);
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// The refusal as (path, entry, problem), or `None` when accepted by an
/// agent running as root.
fn refusal(policy: &Path) -> Option<(PathBuf, Entry, Problem)> {
    check_for(policy, 0).err().map(|e| (e.path, e.what, e.problem))
}

#[test]
fn a_root_owned_file_in_root_owned_directories_is_accepted() {
    let s = Scratch::new();
    s.dir("etc/portguard", 0o755);
    let p = s.file("etc/portguard/policy.toml", 0o644);
    assert_eq!(refusal(&p), None);
    // Read-only, and owner-writable only, are fine too.
    chmod(&p, 0o400);
    assert_eq!(refusal(&p), None);
}

#[test]
fn a_world_writable_file_is_refused_naming_it_and_its_mode() {
    let s = Scratch::new();
    let p = s.file("policy.toml", 0o666);
    assert_eq!(refusal(&p), Some((p.clone(), Entry::File, Problem::WorldWritable { mode: 0o666 })));
    let e = check_for(&p, 0).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{0}: refusing the policy file: file {0} is world-writable (mode 0666); \
             only root may be able to change what portguard enforces",
            p.display()
        )
    );
}

#[test]
fn a_group_writable_file_is_refused() {
    let s = Scratch::new();
    let p = s.file("policy.toml", 0o664);
    assert_eq!(refusal(&p), Some((p.clone(), Entry::File, Problem::GroupWritable { mode: 0o664, gid: 0 })));
}

#[test]
fn a_group_writable_parent_directory_is_refused() {
    let s = Scratch::new();
    let d = s.dir("conf", 0o775);
    let p = s.file("conf/policy.toml", 0o644);
    assert_eq!(
        refusal(&p),
        Some((d.clone(), Entry::Directory, Problem::GroupWritable { mode: 0o775, gid: 0 }))
    );
    assert!(check_for(&p, 0).unwrap_err().to_string().contains("without the sticky bit"));
}

#[test]
fn a_writable_directory_higher_up_is_refused() {
    let s = Scratch::new();
    let top = s.dir("a", 0o777);
    s.dir("a/b/c", 0o755);
    chmod(&top, 0o777);
    let p = s.file("a/b/c/policy.toml", 0o644);
    assert_eq!(refusal(&p), Some((top, Entry::Directory, Problem::WorldWritable { mode: 0o777 })));
}

#[test]
fn a_file_owned_by_another_user_is_refused_unless_it_is_the_agents_user() {
    let s = Scratch::new();
    let p = s.file("policy.toml", 0o644);
    chown(&p, Some(OTHER), None).unwrap();
    assert_eq!(refusal(&p), Some((p.clone(), Entry::File, Problem::Owner { uid: OTHER })));
    // An agent running as that user trusts its own files.
    assert_eq!(check_for(&p, OTHER), Ok(()));
    let e = check_for(&p, 1000).unwrap_err().to_string();
    assert!(e.contains("not root or uid 1000 (the agent's user)"), "{e}");
}

#[test]
fn a_directory_owned_by_another_user_is_refused() {
    let s = Scratch::new();
    let d = s.dir("home", 0o755);
    chown(&d, Some(OTHER), None).unwrap();
    let p = s.file("home/policy.toml", 0o644);
    assert_eq!(refusal(&p), Some((d, Entry::Directory, Problem::Owner { uid: OTHER })));
}

#[test]
fn a_sticky_directory_passes_but_another_users_file_in_it_does_not() {
    let s = Scratch::new();
    s.dir("tmp", 0o1777);
    let mine = s.file("tmp/policy.toml", 0o644);
    assert_eq!(refusal(&mine), None);
    let theirs = s.file("tmp/theirs.toml", 0o644);
    chown(&theirs, Some(OTHER), None).unwrap();
    assert_eq!(refusal(&theirs), Some((theirs.clone(), Entry::File, Problem::Owner { uid: OTHER })));
}

#[test]
fn a_symlink_is_judged_by_its_own_path_and_by_its_targets() {
    let s = Scratch::new();
    s.dir("safe", 0o755);
    let target = s.file("safe/policy.toml", 0o644);
    // A good link in an unsafe directory: the directory is named.
    let open = s.dir("open", 0o777);
    symlink(&target, open.join("policy.toml")).unwrap();
    assert_eq!(
        refusal(&open.join("policy.toml")),
        Some((open.clone(), Entry::Directory, Problem::WorldWritable { mode: 0o777 }))
    );
    // A link in a safe directory to a file in an unsafe one: likewise.
    let unsafe_target = s.file("open/real.toml", 0o644);
    symlink(&unsafe_target, s.0.join("safe/to-open.toml")).unwrap();
    assert_eq!(
        refusal(&s.0.join("safe/to-open.toml")),
        Some((open.clone(), Entry::Directory, Problem::WorldWritable { mode: 0o777 }))
    );
    // A link owned by another user (who could replace it): named.
    let link = s.0.join("safe/theirs.toml");
    symlink("policy.toml", &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(OTHER), None).unwrap();
    assert_eq!(refusal(&link), Some((link.clone(), Entry::Symlink, Problem::Owner { uid: OTHER })));
    // Relative links with `..` resolve as the kernel resolves them.
    symlink("../safe/policy.toml", s.0.join("safe/up-and-back.toml")).unwrap();
    assert_eq!(refusal(&s.0.join("safe/up-and-back.toml")), None);
}

#[test]
fn a_configmap_layout_with_safe_modes_is_accepted() {
    // kubelet's layout: policy.toml -> ..data/policy.toml, ..data -> ..<timestamp>/.
    let s = Scratch::new();
    let vol = s.dir("vol", 0o755);
    s.dir("vol/..2026_12_03_10_00_00.1", 0o755);
    s.file("vol/..2026_12_03_10_00_00.1/policy.toml", 0o644);
    symlink("..2026_12_03_10_00_00.1", vol.join("..data")).unwrap();
    symlink("..data/policy.toml", vol.join("policy.toml")).unwrap();
    assert_eq!(refusal(&vol.join("policy.toml")), None);
    // The volume directory writable (as kubelet makes it) on a writable
    // mount: refused. (The read-only mount that makes it safe is in
    // tests/tests/trust.rs, which can mount.)
    chmod(&vol, 0o777);
    assert_eq!(
        refusal(&vol.join("policy.toml")),
        Some((vol.clone(), Entry::Directory, Problem::WorldWritable { mode: 0o777 }))
    );
}

#[test]
fn a_directory_a_loop_or_a_missing_file_is_refused() {
    let s = Scratch::new();
    let d = s.dir("d", 0o755);
    assert_eq!(refusal(&d), Some((d.clone(), Entry::Directory, Problem::NotRegularFile)));
    symlink("loop-b", s.0.join("loop-a")).unwrap();
    symlink("loop-a", s.0.join("loop-b")).unwrap();
    assert!(matches!(refusal(&s.0.join("loop-a")), Some((_, Entry::Symlink, Problem::TooManySymlinks))));
    assert!(matches!(refusal(&s.0.join("missing.toml")), Some((_, _, Problem::Unexaminable(_)))));
}
