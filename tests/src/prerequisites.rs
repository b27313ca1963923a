/// True when the test may run; root-only tests call this first. Under
/// `CI=true` a missing privilege is a failure, not a skip.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root, and CI=true forbids skipping");
    }
    eprintln!("skipping {test}: needs root (run `cargo xtask test` as root)");
    false
}
