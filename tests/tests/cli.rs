//! The command line as a user meets it: `--version`, every command's help,
//! completion scripts that their shells accept, manual pages that `man`
//! renders.

use std::process::Command;

use portguard_tests::{agent_bin, portguard, skip_test};

fn stdout(args: &[&str]) -> String {
    let (code, out, err) = portguard(args);
    assert_eq!(code, 0, "portguard {args:?}: {err}");
    out
}

/// The visible commands, as the top-level help lists them.
fn commands() -> Vec<String> {
    let help = stdout(&["--help"]);
    let list = help.split("Commands:\n").nth(1).expect("a command list").split("\n\n").next().unwrap();
    list.lines()
        .map(|l| l.split_whitespace().next().expect("a name").to_owned())
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn version_names_the_map_abi() {
    let v = stdout(&["--version"]);
    assert!(v.starts_with("portguard ") && v.contains("(map ABI "), "{v}");
}

#[test]
fn top_level_help_gives_each_command_one_line_and_each_command_help_an_example() {
    let cmds = commands();
    for expected in ["run", "check", "scan", "diff", "replay", "suggest", "reload", "status", "unload"] {
        assert!(cmds.iter().any(|c| c == expected), "{expected} missing from --help: {cmds:?}");
    }
    for cmd in &cmds {
        let help = stdout(&[cmd, "--help"]);
        let example = help.split("Example:\n").nth(1).unwrap_or_else(|| panic!("{cmd} --help: no example"));
        assert!(example.trim_start().contains("portguard"), "{cmd}: {example}");
    }
}

#[test]
fn bash_accepts_the_completion_script_and_it_completes_commands() {
    let script = stdout(&["completions", "bash"]);
    let dir = std::env::temp_dir().join(format!("pg-compl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("portguard.bash");
    std::fs::write(&path, &script).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&path).output().expect("bash");
    assert!(syntax.status.success(), "bash -n: {}", String::from_utf8_lossy(&syntax.stderr));
    // Load it and ask for the completions of `portguard st`.
    let complete = format!(
        "source {}; COMP_WORDS=(portguard st); COMP_CWORD=1; COMP_LINE='portguard st'; COMP_POINT=12; \
         _portguard portguard st portguard; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let out = Command::new("bash").arg("-c").arg(complete).output().expect("bash");
    let _ = std::fs::remove_dir_all(&dir);
    let words = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(words.split_whitespace().collect::<Vec<_>>(), ["status"], "{words}");
}

#[test]
fn zsh_and_fish_accept_their_completion_scripts() {
    for (shell, arg) in [("zsh", "zsh"), ("fish", "fish")] {
        let script = stdout(&["completions", arg]);
        assert!(script.contains("portguard"), "{shell}: {script}");
        let Ok(out) = Command::new(shell).arg("-n").arg("-c").arg(&script).output() else {
            eprintln!("{shell} not installed: its script was generated but not parsed");
            continue;
        };
        assert!(out.status.success(), "{shell} -n: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn man_writes_a_page_per_command_and_man_renders_each() {
    if Command::new("man").arg("--version").output().is_err() {
        skip_test!("man (man-db) not installed");
    }
    let dir = std::env::temp_dir().join(format!("pg-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(agent_bin()).arg("man").arg("--out").arg(&dir).output().expect("portguard man");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut pages = vec!["portguard.1".to_owned()];
    pages.extend(commands().iter().map(|c| format!("portguard-{c}.1")));
    for page in &pages {
        let out =
            Command::new("man").arg("-l").arg(dir.join(page)).env("MANWIDTH", "80").output().expect("man");
        let text = plain(&String::from_utf8_lossy(&out.stdout));
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("SYNOPSIS") && text.contains("Example:"), "{page}: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `man`'s output without its overstrike bold (`S\bS`) and underline (`_\bS`).
fn plain(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn a_bpffs_path_with_a_dot_is_refused_before_the_kernel_is_asked() {
    let path = format!("/sys/fs/bpf/pgtest.dots.{}", std::process::id());
    let (code, out, err) = portguard(&["run", "--bpffs", &path, "--policy", "/nonexistent/policy.toml"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(&format!("--bpffs {path}: bpffs refuses names that contain a dot"))
            && err.lines().count() == 1,
        "{err}"
    );
    assert!(!std::path::Path::new(&path).exists(), "{path} was created");
}

#[test]
fn scan_without_a_policy_lists_every_port_as_unguarded() {
    portguard_tests::require_root!();
    // A port of this process, in the host's namespace (port chosen by the kernel).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // No /etc/portguard/policy.toml: an empty /etc in a private mount namespace.
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs tmpfs /etc && exec \"$0\" scan",
        ])
        .arg(agent_bin())
        .output()
        .expect("unshare");
    let (text, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}{err}");
    assert_eq!(
        err.trim(),
        "portguard: no policy given and /etc/portguard/policy.toml does not exist: every port is listed as unguarded"
    );
    let row = text
        .lines()
        .find(|l| l.contains(&format!(":{port} ")) || l.contains(&format!(" {port} ")))
        .unwrap_or_else(|| panic!("port {port} not listed:\n{text}"));
    assert!(row.contains("unguarded"), "{row}");
    let rows: Vec<&str> =
        text.lines().skip(1).take_while(|l| !l.trim().is_empty() && !l.contains("live ports")).collect();
    assert!(rows.iter().all(|r| r.starts_with("unguarded ")), "{text}");
    assert!(
        text.contains(&format!("{} live ports: 0 approved, 0 unapproved, {0} unguarded", rows.len())),
        "{text}"
    );
    drop(listener);
}
