//! Other hosts on a sandbox's network: each a network namespace of its
//! own, joined to the sandbox's by a veth pair, with its own IPv4 and IPv6
//! addresses. Clients run there unguarded, as on another machine.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    process::{Child, Command, Output, Stdio},
};

use crate::sandbox::{Sandbox, ip};

pub struct Host {
    pub netns: String,
    /// This host's addresses.
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The sandbox's addresses on the link to this host.
    pub server_v4: Ipv4Addr,
    pub server_v6: Ipv6Addr,
}

impl Sandbox {
    /// Host number `n` (1..=254): 10.200.n.2 and fd00:200:n::2, facing the
    /// sandbox's 10.200.n.1 and fd00:200:n::1. The names and addresses
    /// live only in the sandbox's namespaces, so parallel tests never
    /// meet.
    pub fn add_host(&self, n: u8) -> Host {
        let netns = format!("{}-h{n}", self.netns);
        ip(&["netns", "add", &netns]);
        let host = Host {
            netns: netns.clone(),
            v4: Ipv4Addr::new(10, 200, n, 2),
            v6: format!("fd00:200:{n}::2").parse().expect("v6"),
            server_v4: Ipv4Addr::new(10, 200, n, 1),
            server_v6: format!("fd00:200:{n}::1").parse().expect("v6"),
        };
        let link = format!("h{n}");
        // Created inside the sandbox's namespace with its peer moved at
        // once: no interface name ever exists in the root namespace.
        ip(&[
            "-n",
            &self.netns,
            "link",
            "add",
            &link,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns,
        ]);
        let (sv4, sv6) = (format!("{}/24", host.server_v4), format!("{}/64", host.server_v6));
        ip(&["-n", &self.netns, "addr", "add", &sv4, "dev", &link]);
        ip(&["-n", &self.netns, "addr", "add", &sv6, "dev", &link, "nodad"]);
        ip(&["-n", &self.netns, "link", "set", &link, "up"]);
        let (hv4, hv6) = (format!("{}/24", host.v4), format!("{}/64", host.v6));
        ip(&["-n", &netns, "addr", "add", &hv4, "dev", "eth0"]);
        ip(&["-n", &netns, "addr", "add", &hv6, "dev", "eth0", "nodad"]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        host
    }
}

impl Host {
    /// Runs `program` in this host's namespace (in the test's own,
    /// unguarded cgroup) and returns its output, whatever its exit status.
    pub fn run(&self, program: &Path, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {}: {e}", self.netns, program.display()))
    }

    /// `run`, with stdout and stderr as one trimmed text.
    pub fn run_text(&self, program: &Path, args: &[&str]) -> String {
        let out = self.run(program, args);
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text.trim().to_owned()
    }

    /// Starts `program` in this host's namespace (in the test's own,
    /// unguarded cgroup), stdout and stderr piped.
    pub fn spawn(&self, program: &Path, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} {args:?} in {}: {e}", program.display(), self.netns))
    }

    /// Starts pg-probe in this host's namespace, stdout piped.
    pub fn spawn_probe(&self, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(crate::probe_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("pg-probe {args:?} in {}: {e}", self.netns))
    }

    /// pg-probe in this host's namespace: its one-line verdict.
    pub fn probe(&self, args: &[&str]) -> String {
        let out = self.run(&crate::probe_bin(), args);
        assert!(out.status.success(), "pg-probe {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth pair, and so
        // the pair.
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
    }
}
