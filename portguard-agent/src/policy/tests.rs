//! Parser, validator and compiler tests: every bad input names its place.

use portguard_common::{AF_INET, AF_INET6, BIND_ADDR_ANY, BIND_ADDR_EXACT, IPPROTO_TCP, IPPROTO_UDP};

use super::*;

fn ok(text: &str) -> (Policy, CompiledPolicy) {
    parse_and_compile("p.toml", text).unwrap_or_else(|e| panic!("policy should load: {e}"))
}

/// Asserts the policy is refused at `line:col` with a message containing `needle`.
fn refused(text: &str, line: usize, needle: &str) -> PolicyError {
    let e = parse_and_compile("p.toml", text).expect_err("policy should be refused");
    let rendered = e.to_string();
    assert!(rendered.starts_with(&format!("p.toml:{line}:")), "wrong location: {rendered}");
    assert!(rendered.contains(needle), "{rendered:?} does not mention {needle:?}");
    assert!(!rendered.contains('\n'), "errors are one line: {rendered:?}");
    e
}

const MINIMAL: &str = r#"
[[guard]]
name = "db"
cgroup = "/system.slice/postgresql.service"
"#;

#[test]
fn minimal_guard_allows_nothing() {
    let (p, c) = ok(MINIMAL);
    assert_eq!(p.guards[0].target.cgroup(), Some("/system.slice/postgresql.service"));
    assert_eq!(p.guards[0].mode, Mode::Enforce);
    assert!(c.guards[0].bind.is_empty() && c.guards[0].connect.is_empty());
}

#[test]
fn empty_policy_is_valid() {
    let (p, _) = ok("");
    assert!(p.guards.is_empty());
}

#[test]
fn unknown_keys_are_refused() {
    refused("[[guard]]\nname = \"a\"\ncgroup = \"/a\"\nprots = [1]\n", 4, "unknown field `prots`");
    refused(
        "[[guard]]\nname = \"a\"\ncgroup = \"/a\"\n[[guard.bind]]\nports = [80]\ncolour = \"red\"\n",
        6,
        "unknown field `colour`",
    );
    refused("gaurd = 1\n", 1, "unknown field `gaurd`");
}

#[test]
fn bad_ports_are_refused() {
    let g = "[[guard]]\nname = \"a\"\ncgroup = \"/a\"\n[[guard.bind]]\n";
    refused(&format!("{g}ports = [0]\n"), 5, "port 0");
    refused(&format!("{g}ports = [65536]\n"), 5, "out of range");
    refused(&format!("{g}ports = [-1]\n"), 5, "out of range");
    refused(&format!("{g}ports = [\"9000-8000\"]\n"), 5, "reversed");
    refused(&format!("{g}ports = [\"0-10\"]\n"), 5, "port 0");
    refused(&format!("{g}ports = [\"http\"]\n"), 5, "not a port number");
    refused(&format!("{g}ports = []\n"), 5, "empty ports");
}

#[test]
fn bad_peers_are_refused() {
    let g = "[[guard]]\nname = \"a\"\ncgroup = \"/a\"\n[[guard.connect]]\nports = [5432]\n";
    refused(&format!("{g}peer = \"10.0.0.0/33\"\n"), 6, "not an IP address");
    refused(&format!("{g}peer = \"10.0.0.1/8\"\n"), 6, "host bits");
    refused(
        &format!("{g}peer = [\"10.0.0.0/8\", \"nope\"]\n"),
        6,
        "a full DNS name (a name has at least two labels)",
    );
    refused(&format!("{g}peer = [\"10.0.0.0/8\", \"a.*.example\"]\n"), 6, "not the whole first label");
    refused(&format!("{g}peer = \"10.0.0.256\"\n"), 6, "looks like an IP address");
    refused(&format!("{g}peer = \"bücher.example\"\n"), 6, "\"xn--bcher-kva.example\"");
    refused(&format!("{g}peer = []\n"), 6, "empty peer");
}

#[test]
fn names_compile_per_protocol_with_their_ports_merged() {
    let (_, c) = ok(r#"
[[guard]]
name = "a"
cgroup = "/a"
[[guard.connect]]
peer = ["DB.Internal.", "10.0.0.0/8"]
ports = [5432]
[[guard.connect]]
peer = "db.internal"
ports = ["6000-6001"]
proto = "udp"
"#);
    let g = &c.guards[0];
    assert_ne!(g.flags & portguard_common::GUARD_HAS_NAMES, 0);
    let ranges = |proto| {
        let set = &g.names[&(proto, "db.internal".to_owned())];
        set.ranges[..set.count as usize].iter().map(|r| (r.first, r.last)).collect::<Vec<_>>()
    };
    assert_eq!(ranges(IPPROTO_TCP), [(5432, 5432)]);
    assert_eq!(ranges(IPPROTO_UDP), [(6000, 6001)]);
    assert_eq!(g.names.len(), 2);
    assert_eq!(g.flags & portguard_common::GUARD_HAS_WILDCARDS, 0);
    let (_, c) = ok(
        "[[guard]]\nname = \"a\"\ncgroup = \"/a\"\n[[guard.connect]]\npeer = [\"*.Vendor.example\", \"**.svc.local\"]\nports = [443]\n",
    );
    let g = &c.guards[0];
    assert_ne!(g.flags & portguard_common::GUARD_HAS_WILDCARDS, 0);
    let names: Vec<&str> = g.names.keys().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["**.svc.local", "*.vendor.example"]);
    // Without names the kernel skips every DNS step for the guard.
    let (_, c) =
        ok("[[guard]]\nname = \"a\"\ncgroup = \"/a\"\n[[guard.connect]]\npeer = \"10.0.0.1\"\nports = [1]\n");
    assert_eq!(c.guards[0].flags & portguard_common::GUARD_HAS_NAMES, 0);
}

#[test]
fn a_guard_holds_at_most_16384_names() {
    let names: Vec<String> = (0..16_385).map(|i| format!("\"n{i}.example\"")).collect();
    let text = format!(
        "[[guard]]\nname = \"a\"\ncgroup = \"/a\"\n[[guard.connect]]\npeer = [{}]\nports = [443]\n",
        names.join(", ")
    );
    refused(&text, 5, "connect rules list 16385 DNS names; portguard supports at most 16384 per guard");
}

#[test]
fn names_the_agent_resolves_are_literal_and_bounded() {
    let rule = |peer: &str, resolve: &str| {
        format!(
            "[[guard]]\nname = \"a\"\ncgroup = \"/a\"\n[[guard.connect]]\npeer = {peer}\nports = [443]\nresolve = {resolve}\n"
        )
    };
    let (_, c) = ok(&rule("[\"API.example.\", \"10.0.0.0/8\"]", "\"agent\""));
    assert_eq!(c.guards[0].agent_names.iter().collect::<Vec<_>>(), ["api.example"]);
    let (_, c) = ok(&rule("\"api.example\"", "\"workload\""));
    assert!(c.guards[0].agent_names.is_empty());
    refused(
        &rule("\"*.example.com\"", "\"agent\""),
        7,
        "the agent cannot resolve the pattern \"*.example.com\"",
    );
    refused(&rule("\"10.0.0.1\"", "\"agent\""), 7, "resolve = \"agent\" on a rule without DNS names");
    refused(&rule("\"api.example\"", "\"proxy\""), 7, "resolve is \"workload\" (the default) or \"agent\"");
    let names: Vec<String> = (0..257).map(|i| format!("\"n{i}.example\"")).collect();
    refused(
        &rule(&format!("[{}]", names.join(", ")), "\"agent\""),
        5,
        "more than 256 names the agent resolves",
    );
}

#[test]
fn bad_modes_and_protocols_are_refused() {
    refused("[[guard]]\nname = \"a\"\ncgroup = \"/a\"\nmode = \"block\"\n", 4, "unknown variant `block`");
    refused(
        "[[guard]]\nname = \"a\"\ncgroup = \"/a\"\n[[guard.bind]]\nports = [1]\nproto = \"sctp\"\n",
        6,
        "unknown variant `sctp`",
    );
}

#[test]
fn duplicate_guard_names_are_refused() {
    let e = refused(
        "[[guard]]\nname = \"a\"\ncgroup = \"/a\"\n\n[[guard]]\nname = \"a\"\ncgroup = \"/b\"\n",
        6,
        "duplicate guard name",
    );
    assert!(e.message.contains("line 2"), "{e}");
}

#[test]
fn two_guards_on_one_cgroup_are_refused() {
    refused(
        "[[guard]]\nname = \"a\"\ncgroup = \"/system.slice/x.service\"\n\n[[guard]]\nname = \"b\"\nunit = \"x.service\"\n",
        6,
        "already guarded by \"a\"",
    );
}

#[test]
fn cgroup_selection_is_checked() {
    refused("[[guard]]\nname = \"a\"\n", 2, "missing cgroup");
    refused("[[guard]]\nname = \"a\"\ncgroup = \"/a\"\nunit = \"a.service\"\n", 4, "exactly one of");
    refused("[[guard]]\nname = \"a\"\ncgroup = \"a/b\"\n", 3, "absolute");
    refused("[[guard]]\nname = \"a\"\ncgroup = \"/a/../b\"\n", 3, "\"..\"");
    refused("[[guard]]\nname = \"a\"\ncgroup = \"/a//b\"\n", 3, "empty");
    refused("[[guard]]\nname = \"a\"\nunit = \"nginx\"\n", 3, "must end in");
    refused("[[guard]]\nname = \"bad name\"\ncgroup = \"/a\"\n", 2, "guard name");
    let deep = format!("/{}", vec!["x"; 40].join("/"));
    refused(&format!("[[guard]]\nname = \"a\"\ncgroup = \"{deep}\"\n"), 3, "deeper");
}

#[test]
fn pod_selectors_load() {
    let (p, c) = ok(r#"
[[guard]]
name = "payments-api"
pods = { namespace = "payments", labels = { app = "api", "app.kubernetes.io/part-of" = "shop" } }
[[guard]]
name = "any-namespace"
pods = { labels = { tier = "db" } }
[[guard]]
name = "whole-namespace"
pods = { namespace = "batch" }
"#);
    let Target::Pods(sel) = &p.guards[0].target else { panic!("a pod guard") };
    assert_eq!(sel.to_string(), "namespace=payments app=api app.kubernetes.io/part-of=shop");
    assert!(c.has_pod_guards());
    assert_eq!(p.pod_guards().count(), 3);
    assert!(!ok(MINIMAL).1.has_pod_guards());
}

#[test]
fn pod_selectors_are_checked() {
    let g = "[[guard]]\nname = \"a\"\n";
    refused(&format!("{g}pods = {{}}\n"), 3, "selects every pod");
    refused(&format!("{g}pods = {{ namespace = \"Payments\" }}\n"), 3, "not a Kubernetes namespace");
    refused(&format!("{g}pods = {{ labels = {{ \"a b\" = \"x\" }} }}\n"), 3, "label key");
    refused(&format!("{g}pods = {{ labels = {{ app = \"x y\" }} }}\n"), 3, "label value");
    refused(&format!("{g}pods = {{ labels = {{ app = 1 }} }}\n"), 3, "label value");
    refused(&format!("{g}pods = {{ namespace = \"x\", lables = {{}} }}\n"), 3, "unknown field `lables`");
    refused(&format!("{g}cgroup = \"/a\"\npods = {{ namespace = \"x\" }}\n"), 4, "exactly one of");
    refused(
        "[[guard]]\nname = \"a\"\npods = { namespace = \"x\" }\n[[guard]]\nname = \"b\"\npods = { namespace = \"x\" }\n",
        5,
        "already selected by \"a\"",
    );
}

#[test]
fn units_map_to_systemd_cgroups() {
    let (p, _) = ok(r#"
[[guard]]
name = "web"
unit = "nginx.service"
[[guard]]
name = "tenants"
unit = "app-tenants.slice"
"#);
    assert_eq!(p.guards[0].target.cgroup(), Some("/system.slice/nginx.service"));
    assert_eq!(p.guards[0].unit.as_deref(), Some("nginx.service"));
    assert_eq!(p.guards[1].target.cgroup(), Some("/app.slice/app-tenants.slice"));
}

#[test]
fn unsupported_version_is_refused() {
    refused("version = 2\n", 1, "unsupported policy version 2");
    ok("version = 1\n");
}

#[test]
fn bind_rules_compile_to_exact_entries() {
    let (_, c) = ok(r#"
[[guard]]
name = "a"
cgroup = "/a"
[[guard.bind]]
ports = [80, "8000-8002"]
proto = "both"
[[guard.bind]]
ports = [5432]
address = "127.0.0.1"
"#);
    let g = &c.guards[0];
    // 4 ports x 2 protocols + 1 address-bound entry.
    assert_eq!(g.bind.len(), 9);
    let any = g.bind.keys().filter(|k| k.addr_kind == BIND_ADDR_ANY).count();
    assert_eq!(any, 8);
    let exact = g.bind.keys().find(|k| k.addr_kind == BIND_ADDR_EXACT).expect("address rule");
    assert_eq!(exact.proto, IPPROTO_TCP);
    assert_eq!(exact.port, 5432);
    // v4 addresses are keyed v4-mapped so a mapped bind on a v6 socket matches.
    assert_eq!(exact.addr, std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets());
    assert!(g.bind.keys().any(|k| k.proto == IPPROTO_UDP && k.port == 8001));
}

#[test]
fn connect_rules_merge_ports_per_peer_and_list_prefix_lengths() {
    let (_, c) = ok(r#"
[[guard]]
name = "a"
cgroup = "/a"
[[guard.connect]]
peer = "10.0.0.0/8"
ports = [5432]
[[guard.connect]]
peer = ["10.0.0.0/8", "10.1.2.3"]
ports = ["5433-5440", 6379]
[[guard.connect]]
peer = "any"
ports = [53]
proto = "udp"
"#);
    let g = &c.guards[0];
    assert_eq!(g.v4_prefix_lens, vec![32, 8, 0]);
    assert_eq!(g.v6_prefix_lens, vec![0]);
    let ten = g
        .connect
        .iter()
        .find(|(k, _)| k.family == AF_INET && k.prefix_len == 8 && k.proto == IPPROTO_TCP)
        .map(|(_, v)| v)
        .expect("10/8 entry");
    // 5432 and 5433-5440 coalesce; 6379 stays apart.
    assert_eq!(ten.count, 2);
    assert_eq!((ten.ranges[0].first, ten.ranges[0].last), (5432, 5440));
    assert_eq!((ten.ranges[1].first, ten.ranges[1].last), (6379, 6379));
    assert!(g.connect.keys().any(|k| k.family == AF_INET6 && k.prefix_len == 0 && k.proto == IPPROTO_UDP));
}

#[test]
fn too_many_prefix_lengths_are_refused() {
    let peers: Vec<String> = (16..=25).map(|l| format!("\"10.0.0.0/{l}\"")).collect();
    let text = format!(
        "[[guard]]\nname = \"a\"\ncgroup = \"/a\"\n[[guard.connect]]\npeer = [{}]\nports = [1]\n",
        peers.join(", ")
    );
    refused(&text, 5, "distinct IPv4 prefix lengths");
}

#[test]
fn too_many_port_ranges_for_one_peer_are_refused() {
    let ports: Vec<String> = (0..40).map(|i| (1000 + 2 * i).to_string()).collect();
    let text = format!(
        "[[guard]]\nname = \"a\"\ncgroup = \"/a\"\n[[guard.connect]]\npeer = \"10.0.0.1\"\nports = [{}]\n",
        ports.join(", ")
    );
    refused(&text, 5, "separate port ranges");
}

#[test]
fn policies_larger_than_the_maps_are_refused() {
    // 5 guards x 65,535 ports x 2 protocols > 262,144 entries.
    let mut text = String::new();
    for i in 0..5 {
        text.push_str(&format!(
            "[[guard]]\nname = \"g{i}\"\ncgroup = \"/g{i}\"\n[[guard.bind]]\nports = [\"any\"]\nproto = \"both\"\n"
        ));
    }
    let e = parse_and_compile("p.toml", &text).expect_err("too large");
    assert!(e.to_string().contains("bind entries"), "{e}");
}

#[test]
fn the_shipped_example_policy_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../policy.toml");
    let (p, _) = load(std::path::Path::new(path)).unwrap_or_else(|e| panic!("{e}"));
    assert!(!p.guards.is_empty());
}

mod catalog_findings {
    use super::*;
    use crate::policy::catalog::{self, FindingKind};

    fn findings(text: &str, today: time::Date) -> Vec<catalog::Finding> {
        let (p, _) = ok(text);
        catalog::findings(&Source { file: "p.toml", text }, &p, today)
    }

    fn date(s: &str) -> time::Date {
        s.parse::<crate::policy::Expiry>().unwrap().0
    }

    const RULES: &str = r#"
[[guard]]
name = "api"
cgroup = "/api"
  [[guard.bind]]
  ports = [8443]
  owner = "payments"
  purpose = "public API"
  approved_by = "sec-review"
  ticket = "SEC-42"
  expires = 2027-03-31
  from = "any"
  [[guard.connect]]
  peer = "10.0.0.0/8"
  ports = [5432]
  owner = "TODO: who owns this peer?"
  purpose = ""
"#;

    #[test]
    fn missing_and_todo_fields_are_found_at_the_rule() {
        let f = findings(RULES, date("2027-01-01"));
        let missing: Vec<_> = f.iter().map(|f| (f.rule_kind, f.rule_index, f.line, f.kind.clone())).collect();
        assert_eq!(
            missing,
            vec![
                ("connect", 0, 14, FindingKind::Missing { field: "owner" }),
                ("connect", 0, 14, FindingKind::Missing { field: "purpose" }),
            ]
        );
        assert!(f.iter().all(catalog::Finding::fails_strict));
    }

    #[test]
    fn approvals_expire_after_their_last_day() {
        let expiry = |today| {
            findings(RULES, date(today))
                .into_iter()
                .filter(|f| f.rule_kind == "bind")
                .map(|f| f.kind)
                .collect::<Vec<_>>()
        };
        assert_eq!(expiry("2027-01-01"), vec![]);
        assert_eq!(
            expiry("2027-03-21"),
            vec![FindingKind::ExpiresSoon { expires: "2027-03-31".into(), days_left: 10 }]
        );
        assert_eq!(
            expiry("2027-03-31"),
            vec![FindingKind::ExpiresSoon { expires: "2027-03-31".into(), days_left: 0 }]
        );
        assert_eq!(expiry("2027-04-01"), vec![FindingKind::Expired { expires: "2027-03-31".into() }]);
    }

    #[test]
    fn expiry_accepts_dates_and_refuses_anything_else() {
        let with = |v: &str| MINIMAL.to_owned() + &format!("[[guard.bind]]\nports = [1]\nexpires = {v}\n");
        assert_eq!(
            ok(&with("\"2027-03-31\"")).0.guards[0].bind[0].catalog.expires.unwrap().to_string(),
            "2027-03-31"
        );
        refused(&with("\"2027-02-30\""), 7, "not a date");
        refused(&with("\"next week\""), 7, "not a date");
        refused(&with("2027-03-31T10:00:00Z"), 7, "without a time");
        refused(&with("20270331"), 7, "without a time");
    }
}

#[test]
fn from_compiles_to_prefixes_per_bind_rule() {
    let (p, c) = ok(&(MINIMAL.to_owned()
        + r#"
[[guard.bind]]
ports = [5432]
from = ["10.0.1.0/24", "fd00:1::/64", "127.0.0.1", "::ffff:10.9.0.0/112"]
[[guard.bind]]
ports = [6379]
proto = "both"
from = "any"
[[guard.bind]]
ports = [80]
"#));
    let g = &c.guards[0];
    assert_eq!(p.guards[0].bind[2].from, None, "no from: any peer");
    let nets = |v: &[&str]| Some(v.iter().map(|n| n.parse().unwrap()).collect::<Vec<ipnet::IpNet>>());
    assert_eq!(g.bind_from[0], nets(&["10.0.1.0/24", "10.9.0.0/16", "127.0.0.1/32", "fd00:1::/64"]));
    assert_eq!(g.bind_from[1], nets(&["0.0.0.0/0", "::/0"]));
    assert_eq!(g.bind_from[2], None);
    // 4 networks of rule 0, 2 of rule 1 (shared by its two protocols).
    assert_eq!(g.from.len(), 6);
    let r = g.bind.iter().find(|(k, _)| k.port == 5432).map(|(_, v)| *v).unwrap();
    assert_eq!(r.flags, portguard_common::RULE_HAS_FROM);
    assert_eq!((r.v4_from_count, r.v6_from_count), (3, 1));
    assert_eq!(r.v4_from_lens[..3], [32, 24, 16], "longest first");
    assert_eq!(r.v6_from_lens[0], 64);
    let mapped = portguard_common::FromKey {
        rule_index: 0,
        family: AF_INET,
        prefix_len: 16,
        addr: [10, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ..Default::default()
    };
    assert!(g.from.contains_key(&mapped), "v4-mapped networks are judged as IPv4");
    let plain = g.bind.iter().find(|(k, _)| k.port == 80).map(|(_, v)| *v).unwrap();
    assert_eq!(plain.flags, 0);
    assert!(g.bind.iter().filter(|(k, _)| k.port == 6379).all(|(_, v)| v.rule_index == 1 && v.flags != 0));
    let _ = AF_INET6;
}

#[test]
fn bad_from_is_refused() {
    let rule = |from: &str| format!("{MINIMAL}[[guard.bind]]\nports = [5432]\nfrom = {from}\n");
    refused(&rule("[]"), 7, "empty from list");
    refused(&rule("\"10.0.0.1/8\""), 7, "host bits");
    refused(&rule("[\"10.0.0.0/33\"]"), 7, "not an IP address");
    refused(&rule("[\"10.0.0.0/8\", \"DB.example.\"]"), 7, "not names (\"db.example\")");
    let bound = |addr: &str, from: &str| {
        format!("{MINIMAL}[[guard.bind]]\nports = [5432]\naddress = \"{addr}\"\nfrom = {from}\n")
    };
    refused(&bound("10.0.0.5", "[\"fd00::/8\"]"), 8, "could never be reached");
    refused(&bound("fd00::5", "[\"10.0.0.0/8\"]"), 8, "could never be reached");
    ok(&bound("::ffff:10.0.0.5", "[\"10.0.0.0/8\"]"));
    ok(&bound("10.0.0.5", "[\"10.0.0.0/8\", \"fd00::/8\"]"));
    // Two rules for one port must agree on who may reach it.
    let two = format!(
        "{MINIMAL}[[guard.bind]]\nports = [5432]\nfrom = \"10.0.0.0/8\"\n[[guard.bind]]\nports = [\"5000-6000\"]\n"
    );
    refused(&two, 9, "also approved by the bind rule at line 6");
    let exact = format!(
        "{MINIMAL}[[guard.bind]]\nports = [5432]\naddress = \"10.0.0.1\"\n[[guard.bind]]\nports = [5432]\nfrom = \"10.0.0.0/8\"\n"
    );
    refused(&exact, 9, "different from");
    let many: Vec<String> = (16..=25).map(|l| format!("\"10.0.0.0/{l}\"")).collect();
    refused(&rule(&format!("[{}]", many.join(", "))), 6, "distinct IPv4 prefix lengths");
}
