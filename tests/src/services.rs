//! Real servers the tests and the benchmark run beside guarded workloads:
//! dnsmasq as a resolver or a stub, and pg-probe's accept-and-close TCP
//! server. Each is a [`Running`] child, killed when the test ends.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::Child,
};

use crate::{Host, Sandbox};

pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// A child process killed and reaped when dropped, however the test ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// dnsmasq's arguments for a plain resolver in the foreground: no config
/// file, no /etc/hosts or /etc/resolv.conf, listening on `listen` (every
/// address when `None`) port `port`, with `extra` (records, `--server`,
/// `--cache-size`...).
fn dnsmasq_args(listen: Option<&str>, port: u16, extra: &[&str]) -> Vec<String> {
    assert!(Path::new(DNSMASQ).exists(), "dnsmasq (dnsmasq-base) is installed by `cargo xtask setup`");
    let mut args: Vec<String> = [
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--user=root",
        "--pid-file",
    ]
    .map(String::from)
    .to_vec();
    if let Some(address) = listen {
        args.push(format!("--listen-address={address}"));
        args.push("--bind-interfaces".into());
    }
    args.push(format!("--port={port}"));
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

impl Sandbox {
    /// dnsmasq in the cgroup `rel` of the sandbox (see [`dnsmasq_args`]).
    pub fn dnsmasq(&self, rel: &str, listen: Option<&str>, port: u16, extra: &[&str]) -> Running {
        let args = dnsmasq_args(listen, port, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Running(self.spawn_in(rel, Path::new(DNSMASQ), &args))
    }

    /// pg-probe's TCP server on `addr`:`port` in the cgroup `rel`, which
    /// accepts and closes every connection; returns once it listens.
    pub fn accept_server(&self, rel: &str, addr: &str, port: &str) -> Running {
        let mut server = Running(self.spawn_probe(rel, &["accept-serve", addr, port]));
        let mut line = String::new();
        BufReader::new(server.0.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("read");
        assert_eq!(line.trim(), format!("ok port={port}"), "accept-serve {addr} {port}");
        server
    }
}

/// dnsmasq in the test's own network namespace (the host's, where the
/// agent runs) and cgroup (unguarded).
pub fn dnsmasq_here(listen: &str, port: u16, extra: &[&str]) -> Running {
    let args = dnsmasq_args(Some(listen), port, extra);
    let child = std::process::Command::new(DNSMASQ)
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{DNSMASQ}: {e}"));
    Running(child)
}

impl Host {
    /// dnsmasq in this host's namespace (see [`dnsmasq_args`]).
    pub fn dnsmasq(&self, listen: Option<&str>, port: u16, extra: &[&str]) -> Running {
        let args = dnsmasq_args(listen, port, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Running(self.spawn(Path::new(DNSMASQ), &args))
    }
}
