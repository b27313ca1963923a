//! The configurations a workload runs under, all set up side by side so
//! that trials of different configurations can be interleaved:
//!
//! * C0: nothing attached (the floor);
//! * C1: empty always-allow programs on every hook portguard attaches (all
//!   eleven), at the worker's cgroup: what any cgroup-BPF design pays;
//! * C2: portguard running with a guard on a sibling cgroup, the caller's
//!   cgroup unguarded (portguard attaches only at guarded cgroups);
//! * C3: portguard guarding the caller with N rules, and at 1,000 rules
//!   once more with the port-inventory programs (post_bind, sock_ops,
//!   sock_release) detached: the inventory's kernel cost is the difference;
//! * C4: nftables `socket cgroupv2` rules doing the same job, as a rule list
//!   or as one set lookup (in the sandbox's own network namespace).

use std::{fmt::Write as _, process::Command};

use portguard_tests::{Sandbox, agent_bin};

use crate::bench::workloads::{
    ALLOWED, LISTENER_PORT, RECEIVER_PORT, W4_ALLOWED, filler_connect_rules, filler_peer,
};

pub(super) struct Config {
    pub label: String,
    pub kind: Kind,
    pub rules: usize,
    pub sandbox: Sandbox,
    /// The cgroup the worker runs in, relative to the sandbox root.
    pub cgroup: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    Floor,
    Empty,
    Unguarded,
    Portguard,
    /// Portguard with its port-inventory programs detached.
    PortguardNoInventory,
    NftList,
    NftSet,
}

/// A portguard policy guarding /w with `rules` connect rules, of which the
/// ones the allowed variants need.
fn portguard_policy(rules: usize) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "[[guard]]\nname = \"w\"\ncgroup = \"/w\"\n\
         [[guard.bind]]\nports = [{LISTENER_PORT}, {W4_ALLOWED}]\nproto = \"tcp\"\n\
         [[guard.bind]]\nports = [{RECEIVER_PORT}, {W4_ALLOWED}]\nproto = \"udp\"\n\
         [[guard.connect]]\npeer = \"127.0.0.1\"\nports = [{ALLOWED}, {LISTENER_PORT}, {RECEIVER_PORT}]\nproto = \"both\"\n"
    );
    s.push_str(&filler_connect_rules(rules));
    s
}

/// An nftables ruleset for the sandbox's netns doing portguard's connect
/// job for the worker's cgroup: `rules` accept rules (or one set with that
/// many elements), then a drop for that cgroup.
fn nft_ruleset(cgroup_path: &str, rules: usize, as_set: bool) -> String {
    let m = format!("socket cgroupv2 level 2 \"{cgroup_path}\"");
    let mut s = String::from("table inet pgbench {\n");
    if as_set {
        s.push_str("  set allowed {\n    type ipv4_addr . inet_service\n    elements = { ");
        let _ = write!(s, "127.0.0.1 . {ALLOWED}, 127.0.0.1 . {LISTENER_PORT}, 127.0.0.1 . {RECEIVER_PORT}");
        for i in 1..rules {
            let _ = write!(s, ", {} . 5432", filler_peer(i));
        }
        s.push_str(" }\n  }\n");
    }
    s.push_str("  chain out {\n    type filter hook output priority 0; policy accept;\n");
    // Replies of the accepted connections, and loopback traffic not from the
    // worker's cgroup, pass first.
    s.push_str("    ct state established,related accept\n");
    if as_set {
        let _ = writeln!(s, "    {m} ip daddr . udp dport @allowed accept");
        let _ = writeln!(s, "    {m} ip daddr . tcp dport @allowed accept");
    } else {
        for i in 1..rules {
            let _ = writeln!(s, "    {m} ip daddr {} tcp dport 5432 accept", filler_peer(i));
        }
        for port in [ALLOWED, LISTENER_PORT, RECEIVER_PORT] {
            let _ = writeln!(s, "    {m} ip daddr 127.0.0.1 udp dport {port} accept");
            let _ = writeln!(s, "    {m} ip daddr 127.0.0.1 tcp dport {port} accept");
        }
    }
    // A dropped SYN would leave connect() retrying for minutes; refuse TCP
    // with a reset (the caller sees ECONNREFUSED), drop everything else
    // (the caller sees EPERM).
    let _ = writeln!(s, "    {m} meta l4proto tcp reject with tcp reset");
    let _ = writeln!(s, "    {m} drop\n  }}\n}}");
    s
}

/// The policy size of the inventory-off configuration.
pub(super) const INVENTORY_OFF_RULES: usize = 1000;

/// The programs that only feed the port inventory.
const INVENTORY_PROGRAMS: [&str; 4] = ["pg_post_bind4", "pg_post_bind6", "pg_sock_ops", "pg_sock_release"];

/// Detaches the inventory programs' pinned links at the guarded cgroup, so
/// that the configuration runs the same enforcement without the inventory.
/// The agent keeps running; it only attaches again for a new cgroup.
fn detach_inventory(sb: &Sandbox) -> anyhow::Result<()> {
    let mut detached = 0;
    for dir in std::fs::read_dir(sb.bpffs.join("links"))?.flatten() {
        for program in INVENTORY_PROGRAMS {
            super::prog_stats::detach_pinned_link(&dir.path().join(program))
                .map_err(|e| anyhow::anyhow!("detach {program} in {}: {e}", dir.path().display()))?;
            detached += 1;
        }
    }
    anyhow::ensure!(
        detached == INVENTORY_PROGRAMS.len(),
        "expected one guarded cgroup, detached {detached} links"
    );
    Ok(())
}

fn load_nft(sb: &Sandbox, ruleset: &str) -> anyhow::Result<()> {
    let file = sb.dir.join("rules.nft");
    std::fs::write(&file, ruleset)?;
    // nft resolves cgroup paths under /sys/fs/cgroup; on hybrid hosts that
    // is not cgroup2, so mount the cgroup2 hierarchy there in a private
    // mount namespace just for this command.
    let script = format!(
        "mountpoint -q /sys/fs/cgroup && [ \"$(stat -f -c %T /sys/fs/cgroup)\" = cgroup2fs ] || mount -t cgroup2 none /sys/fs/cgroup; nft -f {}",
        file.display()
    );
    crate::run(Command::new("ip").args(["netns", "exec", &sb.netns, "unshare", "-m", "sh", "-c", &script]))
}

pub(super) fn build(sizes: &[usize], nft_sizes: &[usize]) -> anyhow::Result<Vec<Config>> {
    let mut out = Vec::new();
    let plain = |label: &str| {
        let sb = Sandbox::new(label);
        sb.cgroup("/w");
        sb
    };
    out.push(Config {
        label: "C0 nothing".into(),
        kind: Kind::Floor,
        rules: 0,
        sandbox: plain("c0"),
        cgroup: "/w",
    });

    let sb = plain("c1");
    crate::run(
        Command::new(agent_bin())
            .arg("bench-noop")
            .arg("--cgroup-root")
            .arg(&sb.root)
            .arg("--bpffs")
            .arg(&sb.bpffs),
    )?;
    out.push(Config {
        label: "C1 empty programs, every hook".into(),
        kind: Kind::Empty,
        rules: 0,
        sandbox: sb,
        cgroup: "/w",
    });

    let mut sb = plain("c2");
    sb.cgroup("/other");
    sb.start_agent(&portguard_policy(10).replace("cgroup = \"/w\"", "cgroup = \"/other\""));
    out.push(Config {
        label: "C2 portguard, unguarded".into(),
        kind: Kind::Unguarded,
        rules: 10,
        sandbox: sb,
        cgroup: "/w",
    });

    for &n in sizes {
        let mut sb = plain("c3");
        sb.start_agent(&portguard_policy(n));
        out.push(Config {
            label: format!("C3 portguard, {n} rules"),
            kind: Kind::Portguard,
            rules: n,
            sandbox: sb,
            cgroup: "/w",
        });
    }
    let mut sb = plain("c3i");
    sb.start_agent(&portguard_policy(INVENTORY_OFF_RULES));
    detach_inventory(&sb)?;
    out.push(Config {
        label: format!("C3 portguard, {INVENTORY_OFF_RULES} rules, inventory off"),
        kind: Kind::PortguardNoInventory,
        rules: INVENTORY_OFF_RULES,
        sandbox: sb,
        cgroup: "/w",
    });
    for &n in nft_sizes {
        for as_set in [false, true] {
            let sb = plain("c4");
            let path = format!("{}/w", sb.root.file_name().and_then(|f| f.to_str()).unwrap_or_default());
            load_nft(&sb, &nft_ruleset(&path, n, as_set))?;
            let (kind, what) = if as_set { (Kind::NftSet, "set") } else { (Kind::NftList, "rule list") };
            out.push(Config {
                label: format!("C4 nftables {what}, {n} rules"),
                kind,
                rules: n,
                sandbox: sb,
                cgroup: "/w",
            });
        }
    }
    Ok(out)
}
