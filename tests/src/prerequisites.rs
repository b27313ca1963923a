//! What a test needs from the machine (root, a tool, a kernel feature), and
//! what happens when it is missing: under `CI=true` the test fails, because
//! a skipped test there would pass without having checked anything;
//! elsewhere it is skipped with a one-line reason.

/// Ends the calling test unless it runs as root; see the module doc.
///
/// ```ignore
/// #[test]
/// fn bind_is_allowed_only_for_listed_ports() {
///     require_root!();
///     ...
/// }
/// ```
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::prerequisites::is_root() {
            $crate::prerequisites::missing(
                $crate::test_name!(),
                "needs root (run `cargo xtask test` as root)",
            );
            return;
        }
    };
}

/// Ends the calling test because something it needs is missing (the
/// arguments are `format!`'s); see the module doc.
#[macro_export]
macro_rules! skip_test {
    ($($why:tt)+) => {{
        $crate::prerequisites::missing($crate::test_name!(), &format!($($why)+));
        return;
    }};
}

/// The name of the function it is used in: a function item's type name is
/// its path, and an item declared in a function has that function's path
/// as its prefix.
#[doc(hidden)]
#[macro_export]
macro_rules! test_name {
    () => {{
        fn here() {}
        let path = ::std::any::type_name_of_val(&here);
        let path = path.strip_suffix("::here").unwrap_or(path);
        path.rsplit("::").next().unwrap_or(path)
    }};
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Fails `test` under `CI=true`, else says on stderr why it is skipped; the
/// caller returns.
#[track_caller]
pub fn missing(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}, and CI=true forbids skipping");
    }
    eprintln!("skipping {test}: {why}");
}
