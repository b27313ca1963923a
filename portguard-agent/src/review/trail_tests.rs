//! replay and suggest on a recorded trail (fixture below): an API service
//! audited for a while, listening on 8080 and 9090 (loopback), calling a
//! database, many cache nodes and DNS, and binding a kernel-chosen port.

use super::{replay, suggest};
use crate::{
    policy::{self, Mode, Policy, Proto, eval::Action},
    trail::Record,
};

const TRAIL: &str = r#"
{"time":"t","event":"port_opened","guard":"api","guard_cgroup":"/api","mode":"audit","cgroup":"/api/worker","pid":1,"comm":"api","op":"bind","proto":"tcp","addr":"0.0.0.0","port":8080,"status":"unapproved"}
{"time":"t","event":"port_opened","guard":"api","guard_cgroup":"/api","mode":"audit","cgroup":"/api","pid":1,"comm":"api","op":"bind","proto":"tcp","addr":"127.0.0.1","port":9090,"status":"unapproved"}
{"time":"t","event":"port_opened","guard":"api","guard_cgroup":"/api","mode":"audit","cgroup":"/api","pid":1,"comm":"api","op":"bind","proto":"udp","addr":"::","port":41000,"status":"unapproved"}
{"time":"t","event":"port_closed","guard":"api","guard_cgroup":"/api","mode":"audit","cgroup":"/api","pid":1,"comm":"api","op":"bind","proto":"udp","addr":"::","port":41000,"status":"unapproved","open_seconds":3}
{"time":"t","event":"audited","guard":"api","guard_cgroup":"/api","mode":"audit","cgroup":"/api","pid":1,"comm":"api","op":"connect","proto":"tcp","addr":"10.1.2.3","port":5432,"count":40}
{"time":"t","event":"audited","guard":"api","guard_cgroup":"/api","mode":"audit","cgroup":"/api","pid":1,"comm":"api","op":"connect","proto":"tcp","addr":"10.9.0.1","port":6379}
{"time":"t","event":"audited","guard":"api","guard_cgroup":"/api","mode":"audit","cgroup":"/api","pid":1,"comm":"api","op":"connect","proto":"tcp","addr":"10.9.0.2","port":6379}
{"time":"t","event":"audited","guard":"api","guard_cgroup":"/api","mode":"audit","cgroup":"/api","pid":1,"comm":"api","op":"connect","proto":"tcp","addr":"10.9.0.3","port":6379}
{"time":"t","event":"audited","guard":"api","guard_cgroup":"/api","mode":"audit","cgroup":"/api","pid":1,"comm":"api","op":"connect","proto":"tcp","addr":"10.9.0.4","port":6379}
{"time":"t","event":"audited","guard":"api","guard_cgroup":"/api","mode":"audit","cgroup":"/api","pid":1,"comm":"api","op":"connect","proto":"tcp","addr":"10.9.0.5","port":6379}
{"time":"t","event":"audited","guard":"api","guard_cgroup":"/api","mode":"audit","cgroup":"/api","pid":1,"comm":"api","op":"sendmsg","proto":"udp","addr":"::ffff:10.0.0.53","port":53}
{"time":"t","event":"audited","guard":"api","guard_cgroup":"/api","mode":"audit","cgroup":"/api","pid":1,"comm":"api","op":"connect","proto":"tcp","addr":"10.0.0.53","port":53}
{"time":"t","event":"denied","guard":"batch","guard_cgroup":"/batch","mode":"enforce","cgroup":"/batch","pid":2,"comm":"job","op":"connect","proto":"tcp","addr":"192.0.2.7","port":443}
"#;

fn records() -> Vec<Record> {
    TRAIL.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn load(text: &str) -> Policy {
    policy::parse_and_compile("p.toml", text).unwrap_or_else(|e| panic!("{e}\n{text}")).0
}

fn options(mode: Mode) -> suggest::Options {
    suggest::Options { guard: Some("api".into()), current: None, mode, ephemeral: 32768..=60999 }
}

#[test]
fn suggest_aggregates_ports_and_peers_and_leaves_todo_markers() {
    let text = suggest::suggest(&records(), &options(Mode::Audit));
    let p = load(&text);
    assert_eq!(p.guards.len(), 1, "only the api guard:\n{text}");
    let g = &p.guards[0];
    assert_eq!((g.name.as_str(), g.target.cgroup().unwrap(), g.mode), ("api", "/api", Mode::Audit));
    assert!(g.allow_ephemeral_bind, "41000 is in the local port range:\n{text}");
    assert_eq!(g.bind.len(), 2, "8080 on any address, 9090 on loopback:\n{text}");
    // Five cache nodes in one /24 became the network; DNS is one rule for both protocols.
    assert!(text.contains("peer = [\"10.9.0.0/24\"]"), "{text}");
    assert!(text.contains("proto = \"both\""), "{text}");
    assert!(!text.contains("41000"), "no rule per ephemeral port:\n{text}");
    let findings =
        policy::catalog::findings(&policy::Source { file: "p", text: &text }, &p, policy::catalog::today());
    assert_eq!(findings.len(), 2 * (g.bind.len() + g.connect.len()), "owner and purpose are TODO everywhere");
}

#[test]
fn the_suggested_policy_in_enforce_mode_allows_exactly_what_was_recorded() {
    let recs = records();
    let p = load(&suggest::suggest(&recs, &options(Mode::Enforce)));
    let api: Vec<Record> = recs.into_iter().filter(|r| r.guard.as_deref() == Some("api")).collect();
    let r = replay::replay(&p, &api, 32768..=60999);
    assert!(r.newly_denied.is_empty(), "{:?}", r.newly_denied);
    assert_eq!(r.newly_allowed.len(), 8, "every audited connect is now allowed by a rule");
    assert_eq!(r.unchanged, 3, "the two listeners and the kernel-chosen port stay allowed");
    // And nothing more: a neighbour of the database, another port, another proto.
    let j = |addr: &str, port, proto| {
        p.judge("/api", Action::Connect, proto, addr.parse().unwrap(), port).allowed()
    };
    assert!(j("10.1.2.3", 5432, Proto::Tcp));
    assert!(!j("10.1.2.4", 5432, Proto::Tcp));
    assert!(!j("10.1.2.3", 5433, Proto::Tcp));
    assert!(!j("10.9.0.1", 6379, Proto::Udp));
}

#[test]
fn replay_reports_what_a_change_would_deny_and_allow() {
    let p = load(
        r#"
[[guard]]
name = "api"
cgroup = "/api"
  [[guard.bind]]
  ports = [8080]
  [[guard.connect]]
  peer = "10.0.0.0/8"
  ports = [5432, 6379]
[[guard]]
name = "batch"
cgroup = "/batch"
mode = "audit"
"#,
    );
    let r = replay::replay(&p, &records(), 32768..=60999);
    let ops = |v: &[replay::Change]| {
        v.iter().map(|c| (c.operation.port, c.operation.addr.to_string())).collect::<Vec<_>>()
    };
    // 9090 and the ephemeral UDP port went live before; enforce now refuses them, and DNS.
    assert_eq!(
        ops(&r.newly_denied),
        vec![
            (9090, "127.0.0.1".into()),
            (41000, "::".into()),
            (53, "10.0.0.53".into()),
            (53, "10.0.0.53".into())
        ]
    );
    assert_eq!(
        r.newly_allowed.len(),
        7,
        "the database and five cache nodes, and the batch job (audited now)"
    );
    assert_eq!(
        r.newly_denied.iter().find(|c| c.operation.port == 9090).unwrap().guard.as_deref(),
        Some("api")
    );
    assert_eq!(r.unchanged, 1, "8080 stays allowed");
    assert_eq!(r.skipped, 1, "the close");
}

#[test]
fn suggest_keeps_the_target_of_the_guard_the_trail_was_recorded_under() {
    // A pod guard's records carry no cgroup path; the current policy has
    // its selector. A unit guard stays a unit.
    let recs: Vec<Record> = records()
        .into_iter()
        .map(|mut r| {
            r.guard_cgroup = None;
            r
        })
        .collect();
    let current = load(
        r#"
[[guard]]
name = "api"
pods = { namespace = "shop", labels = { app = "api", tier = "web" } }
mode = "audit"
[[guard]]
name = "batch"
unit = "batch.service"
"#,
    );
    let opts = suggest::Options {
        guard: None,
        current: Some(current),
        mode: Mode::Enforce,
        ephemeral: 32768..=60999,
    };
    let text = suggest::suggest(&recs, &opts);
    assert!(
        text.contains(r#"pods = { namespace = "shop", labels = { "app" = "api", "tier" = "web" } }"#),
        "{text}"
    );
    assert!(text.contains(r#"unit = "batch.service""#), "{text}");
    let p = load(&text);
    assert_eq!(p.guards.len(), 2);
    // Without the policy, there is no selector to write: the pod guard is left out.
    let without = suggest::suggest(&recs, &suggest::Options { current: None, ..opts });
    assert!(!without.contains("[[guard]]"), "{without}");
}

/// A database audited with `from` on its port: the kernel reported the
/// peers outside it (accept) and a UDP datagram to a port no rule
/// approves (receive). Judged under NEW by NEW's `from`.
const INBOUND_TRAIL: &str = r#"
{"time":"t","event":"port_opened","guard":"db","guard_cgroup":"/db","mode":"audit","cgroup":"/db","pid":1,"comm":"postgres","op":"bind","proto":"tcp","addr":"127.0.0.1","port":6432,"status":"approved"}
{"time":"t","event":"audited","guard":"db","guard_cgroup":"/db","mode":"audit","cgroup":"/db","pid":0,"comm":"","op":"accept","proto":"tcp","addr":"10.0.2.7","port":5432,"peer_port":40000,"reason":"not_from","count":3}
{"time":"t","event":"audited","guard":"db","guard_cgroup":"/db","mode":"audit","cgroup":"/db","pid":0,"comm":"","op":"accept","proto":"tcp","addr":"::ffff:10.0.3.9","port":5432,"peer_port":40001,"reason":"not_from"}
{"time":"t","event":"audited","guard":"db","guard_cgroup":"/db","mode":"audit","cgroup":"/db","pid":0,"comm":"","op":"accept","proto":"tcp","addr":"10.0.9.9","port":6432,"peer_port":40002,"reason":"not_from"}
{"time":"t","event":"audited","guard":"db","guard_cgroup":"/db","mode":"audit","cgroup":"/db","pid":0,"comm":"","op":"receive","proto":"udp","addr":"fd00:1::5","port":5353,"peer_port":5353,"reason":"unapproved_port"}
"#;

fn inbound_records() -> Vec<Record> {
    INBOUND_TRAIL.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn replay_judges_inbound_records_by_the_new_from() {
    let p = load(
        r#"
[[guard]]
name = "db"
cgroup = "/db"
  [[guard.bind]]
  ports = [5432]
  from = ["10.0.1.0/24", "10.0.2.0/24"]
  [[guard.bind]]
  ports = [6432]
  address = "127.0.0.1"
  from = "10.0.9.0/24"
  [[guard.bind]]
  ports = [6432]
  address = "::1"
  from = "fd00::/8"
  [[guard.bind]]
  ports = [5353]
  proto = "udp"
  from = "fd00:1::/64"
"#,
    );
    let r = replay::replay(&p, &inbound_records(), 32768..=60999);
    let peers = |v: &[replay::Change]| {
        v.iter().map(|c| (c.operation.addr.to_string(), c.operation.port)).collect::<Vec<_>>()
    };
    // 10.0.2.7 is now listed; 6432 went live on 127.0.0.1, whose rule lists
    // 10.0.9.0/24; fd00:1::5 is in the new UDP rule's from.
    assert_eq!(
        peers(&r.newly_allowed),
        vec![("10.0.2.7".into(), 5432), ("10.0.9.9".into(), 6432), ("fd00:1::5".into(), 5353)]
    );
    // The mapped peer is judged as 10.0.3.9: outside from, now refused.
    assert_eq!(peers(&r.newly_denied), vec![("10.0.3.9".into(), 5432)]);
    assert_eq!(r.newly_denied[0].new, replay::Outcome::Denied);
    assert_eq!(r.newly_denied[0].new_reason, Some(crate::trail::InboundReason::NotFrom));
    assert_eq!(r.newly_allowed[0].new_reason, None);
    assert_eq!(r.newly_allowed[0].count, 3);
    assert_eq!(r.unchanged, 1, "the port that went live");
    // Without the port_opened record, 6432's address is unknown: its rule
    // for 127.0.0.1 admits the peer, ::1's does not, so it is refused.
    let without: Vec<Record> = inbound_records().into_iter().skip(1).collect();
    let r = replay::replay(&p, &without, 32768..=60999);
    assert!(peers(&r.newly_denied).contains(&("10.0.9.9".into(), 6432)), "{:?}", r.newly_denied);
}

#[test]
fn suggest_drafts_from_out_of_the_peers_each_port_saw() {
    let mut recs = inbound_records();
    // Six clients of one /24 reach 5432: the network, not six hosts.
    for host in 1..=6 {
        let line = format!(
            r#"{{"time":"t","event":"audited","guard":"db","guard_cgroup":"/db","mode":"audit","cgroup":"/db","pid":0,"comm":"","op":"accept","proto":"tcp","addr":"10.0.5.{host}","port":5432,"reason":"not_from"}}"#
        );
        recs.push(serde_json::from_str(&line).unwrap());
    }
    let current = load(
        r#"
[[guard]]
name = "db"
cgroup = "/db"
mode = "audit"
  [[guard.bind]]
  ports = [5432]
  from = "10.0.1.0/24"
  [[guard.bind]]
  ports = [6432]
  address = "127.0.0.1"
  from = "127.0.0.1"
"#,
    );
    let opts = suggest::Options {
        guard: None,
        current: Some(current),
        mode: Mode::Enforce,
        ephemeral: 32768..=60999,
    };
    let text = suggest::suggest(&recs, &opts);
    let p = load(&text);
    let g = &p.guards[0];
    let from_of = |port: u16| {
        let rule = g
            .bind
            .iter()
            .find(|r| r.ports.iter().any(|s| s.first == port))
            .unwrap_or_else(|| panic!("{port}:\n{text}"));
        rule.from.as_ref().map(|f| f.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    // The current from stays; the reported peers join it.
    assert_eq!(
        from_of(5432),
        Some(vec!["10.0.1.0/24".into(), "10.0.2.7/32".into(), "10.0.3.9/32".into(), "10.0.5.0/24".into()]),
        "{text}"
    );
    assert_eq!(from_of(6432), Some(vec!["10.0.9.9/32".into(), "127.0.0.1/32".into()]), "{text}");
    // A UDP datagram to a port that never went live drafts no rule.
    assert!(!text.contains("5353"), "{text}");
    // Enforced, the draft lets in exactly what was reported and what the old from let in.
    let j = |port, peer: &str| {
        p.judge_inbound(
            "/db",
            None,
            Proto::Tcp,
            Some("127.0.0.1".parse().unwrap()),
            port,
            peer.parse().unwrap(),
        )
        .judgement
        .allowed()
    };
    assert!(j(5432, "10.0.5.200") && j(5432, "10.0.1.9") && j(5432, "::ffff:10.0.2.7"));
    assert!(!j(5432, "10.0.2.8") && !j(6432, "10.0.9.10"));
    // Replayed, only that datagram is refused.
    let r = replay::replay(&p, &recs, 32768..=60999);
    let denied: Vec<u16> = r.newly_denied.iter().map(|c| c.operation.port).collect();
    assert_eq!(denied, vec![5353], "{:?}", r.newly_denied);
}

/// Audited connects to addresses the workload learned for one of the
/// guard's names draft a rule by that name, not by the address; the
/// suggested policy replays those connects as allowed by the name.
#[test]
fn suggest_drafts_names_for_addresses_learned_from_answers() {
    let line = |addr: &str, port: u16, dns: &str| {
        format!(
            r#"{{"time":"t","event":"audited","guard":"api","guard_cgroup":"/api","mode":"audit","cgroup":"/api","pid":1,"comm":"api","op":"connect","proto":"tcp","addr":"{addr}","port":{port}{dns}}}"#
        )
    };
    let trail = [
        line("10.4.0.1", 443, r#","dns":{"state":"other_port","names":["*.vendor.example"]}"#),
        line("10.4.0.2", 443, r#","dns":{"state":"expired","names":["*.vendor.example"],"expired_ago_s":7}"#),
        line("10.5.0.9", 443, r#","dns":{"state":"never"}"#),
    ];
    let recs: Vec<Record> = trail.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let text = suggest::suggest(&recs, &options(Mode::Enforce));
    assert!(text.contains("peer = [\"*.vendor.example\", \"10.5.0.9\"]"), "{text}");
    assert!(!text.contains("10.4.0."), "learned addresses are not drafted:\n{text}");
    let p = load(&text);
    let r = replay::replay(&p, &recs, 32768..=60999);
    // The live answer replays as allowed by the name; the expired one
    // needs the workload to resolve again, as the kernel would.
    let allowed: Vec<String> = r.newly_allowed.iter().map(|c| c.operation.addr.to_string()).collect();
    assert_eq!(allowed, ["10.4.0.1", "10.5.0.9"], "{r:?}");
    assert_eq!(r.newly_denied.len(), 1, "{r:?}");
}
