//! Diff tests: fixture policies in, the rendered report (and the model) out.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{
    allowed::{TRANSPORTS, Transport},
    *,
};
use crate::policy::PortSpec;
use crate::policy::parse_and_compile;

fn policy(text: &str) -> Policy {
    parse_and_compile("t.toml", text).unwrap_or_else(|e| panic!("fixture should load: {e}")).0
}

fn diff_of(old: &str, new: &str) -> PolicyDiff {
    diff(&policy(old), &policy(new))
}

/// The text report of OLD -> NEW.
fn report(old: &str, new: &str) -> String {
    text::render(&diff_of(old, new))
}

/// One enforce guard "api" on /api with `rules` (TOML rule tables).
fn api(rules: &str) -> String {
    format!("[[guard]]\nname = \"api\"\ncgroup = \"/api\"\n{rules}")
}

fn bind(ports: &str, extra: &str) -> String {
    format!("[[guard.bind]]\nports = {ports}\n{extra}\n")
}

fn connect(peer: &str, ports: &str, extra: &str) -> String {
    format!("[[guard.connect]]\npeer = {peer}\nports = {ports}\n{extra}\n")
}

#[test]
fn new_ports_open_and_removed_ports_close() {
    let old = api(&(bind("[80]", "") + &connect("\"10.0.0.0/8\"", "[5432]", "")));
    let new = api(&(bind("[80, 443, \"8000-8100\"]", "") + &connect("\"10.0.0.0/8\"", "[6432]", "")));
    assert_eq!(
        report(&old, &new),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 opens   bind tcp 443, 8000-8100 on any address\n\
         \x20 opens   connect tcp 10.0.0.0/8 ports 6432\n\
         \x20 closes  connect tcp 10.0.0.0/8 ports 5432\n\
         summary: 2 opens, 1 close across 1 guard\n"
    );
    let d = diff_of(&old, &new);
    assert_eq!(d.guards[0].change, Change::Changed);
    assert_eq!(d.summary, Summary { opens: 2, closes: 1 });
}

#[test]
fn equivalent_policies_change_nothing() {
    let old = api(&(bind("[80, 443]", "owner = \"web\"")
        + &bind("[\"8000-8100\"]", "proto = \"both\"")
        + &bind("[9000]", "address = \"127.0.0.1\"")
        + &connect("\"any\"", "[53]", "proto = \"udp\"")
        + &connect("[\"10.0.0.0/8\", \"fd00::/8\"]", "[\"5000-5100\"]", "purpose = \"db\"")));
    // Reordered, split, merged, re-spelled, and with other metadata.
    let new = format!(
        "[[guard]]\nname = \"api\"\ncgroup = \"/api\"\nmode = \"enforce\"\nallow_ephemeral_bind = false\n{}",
        connect("\"fd00::/8\"", "[\"5000-5050\", \"5051-5100\"]", "")
            + &connect("[\"::/0\", \"0.0.0.0/0\"]", "[53]", "proto = \"udp\"")
            + &bind("[9000]", "address = \"::ffff:127.0.0.1\"")
            + &bind("[\"8000-8100\"]", "proto = \"udp\"")
            + &bind("[443, \"8000-8050\"]", "owner = \"someone else\"")
            + &bind("[\"8051-8100\", 80]", "")
            + &connect("\"10.0.0.0/8\"", "[\"5000-5100\"]", "")
    );
    assert_eq!(report(&old, &new), "no change in what is allowed\n");
    let d = diff_of(&old, &new);
    assert_eq!(d.guards[0].change, Change::Unchanged);
    assert!(d.guards[0].notes.is_empty(), "{:?}", d.guards[0].notes);
    // A guard written with unit = is the same guard as with its cgroup.
    let unit = "[[guard]]\nname = \"db\"\nunit = \"postgresql.service\"\n";
    let cgroup = "[[guard]]\nname = \"db\"\ncgroup = \"/system.slice/postgresql.service\"\n";
    assert_eq!(report(unit, cgroup), "no change in what is allowed\n");
}

#[test]
fn removing_a_rule_a_broader_rule_still_covers_closes_nothing() {
    let broad = connect("\"10.0.0.0/8\"", "[\"1-1024\"]", "");
    let old = api(&(broad.clone() + &connect("\"10.1.0.0/16\"", "[80]", "")));
    let new = api(&broad);
    assert_eq!(
        report(&old, &new),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 note    connect tcp 10.1.0.0/16 ports 80 is no longer listed but still allowed by broader 10.0.0.0/8 ports 1-1024\n\
         no change in what is allowed\n"
    );
    assert_eq!(diff_of(&old, &new).guards[0].change, Change::Unchanged);
}

#[test]
fn a_new_redundant_rule_is_noted_and_an_old_one_is_not() {
    let broad = connect("\"10.0.0.0/8\"", "[\"1-1024\"]", "");
    let narrow = connect("\"10.1.0.0/24\"", "[80]", "");
    let old = api(&broad);
    let new = api(&(broad.clone() + &narrow));
    assert_eq!(
        report(&old, &new),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 note    connect tcp 10.1.0.0/24 ports 80 is shadowed by 10.0.0.0/8 ports 1-1024\n\
         no change in what is allowed\n"
    );
    // The redundancy was already there: not this change's business.
    assert_eq!(
        report(&new, &(new.clone() + &bind("[22]", ""))).lines().filter(|l| l.contains("note")).count(),
        0
    );
    // A bind rule for one address that the address-less rules already cover.
    let any = bind("[\"8000-8100\"]", "");
    let old = api(&any);
    let new = api(&(any.clone() + &bind("[8080]", "address = \"127.0.0.1\"")));
    assert_eq!(
        report(&old, &new),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 note    bind tcp 8080 on 127.0.0.1 is shadowed by any address ports 8000-8100\n\
         no change in what is allowed\n"
    );
}

#[test]
fn a_broader_rule_reports_what_narrower_ones_already_allowed() {
    let old = api(&connect("\"10.0.1.0/24\"", "[5432]", ""));
    let new = api(&connect("\"10.0.0.0/16\"", "[5432, 6432]", ""));
    assert_eq!(
        report(&old, &new),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 opens   connect tcp 10.0.0.0/16 ports 5432, 6432 (10.0.1.0/24 ports 5432 already allowed)\n\
         \x20 note    connect tcp 10.0.1.0/24 ports 5432 is no longer listed but still allowed by broader 10.0.0.0/16 ports 5432, 6432\n\
         summary: 1 open, 0 closes across 1 guard\n"
    );
    // And the reverse: narrowing a rule closes the rest of the network.
    assert_eq!(
        report(&new, &old),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 closes  connect tcp 10.0.0.0/16 ports 5432, 6432 (10.0.1.0/24 ports 5432 still allowed)\n\
         summary: 0 opens, 1 close across 1 guard\n"
    );
}

#[test]
fn address_rules_and_address_less_rules() {
    let old = api(&(bind("[80]", "") + &bind("[80]", "address = \"127.0.0.1\"")));
    let new = api(&(bind("[80]", "address = \"127.0.0.1\"") + &bind("[81]", "address = \"::1\"")));
    assert_eq!(
        report(&old, &new),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 opens   bind tcp 81 on ::1\n\
         \x20 closes  bind tcp 80 on any address (127.0.0.1 still allowed)\n\
         summary: 1 open, 1 close across 1 guard\n"
    );
}

#[test]
fn audit_to_enforce_closes_everything_but_the_rules() {
    let rules = bind("[8080]", "") + &connect("\"any\"", "[443]", "proto = \"both\"");
    let audit = format!("[[guard]]\nname = \"web\"\ncgroup = \"/web\"\nmode = \"audit\"\n{rules}");
    let enforce = format!("[[guard]]\nname = \"web\"\ncgroup = \"/web\"\nallow_raw_sockets = true\n{rules}");
    assert_eq!(
        report(&audit, &enforce),
        "guard \"web\" (cgroup /web, audit -> enforce):\n\
         \x20 closes  everything in /web except what the guard lists\n\
         \x20 allows  raw, SCTP and packet sockets (allow_raw_sockets)\n\
         \x20 allows  bind tcp 8080 on any address\n\
         \x20 allows  connect tcp+udp any ports 443\n\
         summary: 0 opens, 1 close across 1 guard\n"
    );
    assert_eq!(
        report(&enforce, &audit),
        "guard \"web\" (cgroup /web, enforce -> audit):\n\
         \x20 opens   everything in /web (audit: reported, not refused)\n\
         summary: 1 open, 0 closes across 1 guard\n"
    );
}

#[test]
fn rule_changes_between_audit_guards_affect_reports_only() {
    let old = "[[guard]]\nname = \"web\"\ncgroup = \"/web\"\nmode = \"audit\"\n".to_owned();
    let new = old.clone() + &bind("[8080]", "");
    assert_eq!(
        report(&old, &new),
        "guard \"web\" (cgroup /web, audit; changes what is reported only):\n\
         \x20 opens   bind tcp 8080 on any address\n\
         no change in what is allowed; what is reported changes for 1 audit guard\n"
    );
    let d = diff_of(&old, &new);
    assert!(d.guards[0].reports_only && d.guards[0].change == Change::Changed);
    assert_eq!(d.summary, Summary { opens: 0, closes: 0 });
}

#[test]
fn guards_added_and_removed() {
    let db = "[[guard]]\nname = \"db\"\ncgroup = \"/db\"\n".to_owned() + &bind("[5432]", "");
    let web = "[[guard]]\nname = \"web\"\ncgroup = \"/web\"\nmode = \"audit\"\n";
    assert_eq!(
        report("", &format!("{db}{web}")),
        "guard \"db\" (cgroup /db, new, enforce):\n\
         \x20 closes  everything in /db except what the guard lists\n\
         \x20 allows  bind tcp 5432 on any address\n\
         guard \"web\" (cgroup /web, new, audit, refuses nothing)\n\
         summary: 0 opens, 1 close across 1 guard\n"
    );
    assert_eq!(
        report(&format!("{db}{web}"), ""),
        "guard \"db\" (cgroup /db, removed, was enforce):\n\
         \x20 opens   everything in /db (no longer guarded)\n\
         guard \"web\" (cgroup /web, removed, was audit, refused nothing)\n\
         summary: 1 open, 0 closes across 1 guard\n"
    );
    let d = diff_of("", &db);
    assert_eq!(
        (d.guards[0].change, d.guards[0].mode.old, d.guards[0].mode.new),
        (Change::Added, None, Some("enforce"))
    );
    // A new guard that lists nothing closes everything, and allows nothing.
    assert_eq!(
        report("", "[[guard]]\nname = \"x\"\ncgroup = \"/x\"\n"),
        "guard \"x\" (cgroup /x, new, enforce):\n\
         \x20 closes  everything in /x except what the guard lists\n\
         summary: 0 opens, 1 close across 1 guard\n"
    );
}

#[test]
fn a_guard_moved_to_another_cgroup_unguards_the_old_one() {
    let rules = bind("[80]", "");
    let old = format!("[[guard]]\nname = \"web\"\nunit = \"nginx.service\"\n{rules}");
    let new = format!("[[guard]]\nname = \"web\"\nunit = \"angie.service\"\n{rules}");
    assert_eq!(
        report(&old, &new),
        "guard \"web\" (cgroup /system.slice/nginx.service -> /system.slice/angie.service, enforce):\n\
         \x20 opens   everything in /system.slice/nginx.service (no longer guarded)\n\
         \x20 closes  everything in /system.slice/angie.service except what the guard lists\n\
         \x20 allows  bind tcp 80 on any address\n\
         summary: 1 open, 1 close across 1 guard\n"
    );
    assert_eq!(diff_of(&old, &new).guards[0].change, Change::Changed);
}

#[test]
fn ephemeral_bind_and_raw_sockets_open_and_close() {
    let plain = api("");
    let flags = "[[guard]]\nname = \"api\"\ncgroup = \"/api\"\nallow_ephemeral_bind = true\nallow_raw_sockets = true\n";
    assert_eq!(
        report(&plain, flags),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 opens   bind to port 0, kernel-chosen (allow_ephemeral_bind)\n\
         \x20 opens   raw, SCTP and packet sockets (allow_raw_sockets)\n\
         summary: 2 opens, 0 closes across 1 guard\n"
    );
    let d = diff_of(flags, &plain);
    assert_eq!(d.guards[0].closes, vec![Effect::EphemeralBind, Effect::RawSockets]);
}

#[test]
fn ipv4_and_ipv6_are_separate() {
    let any = api(&connect("\"any\"", "[443]", ""));
    let v6 = api(&connect("\"::/0\"", "[443]", ""));
    assert_eq!(
        report(&any, &v6),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 closes  connect tcp 0.0.0.0/0 ports 443\n\
         summary: 0 opens, 1 close across 1 guard\n"
    );
    // fd00::/8 does not cover 10.0.0.0/8, nor the other way round.
    let old = api(&connect("\"10.0.0.0/8\"", "[80]", ""));
    let new = api(&connect("[\"10.0.0.0/8\", \"fd00::/8\"]", "[80]", ""));
    assert_eq!(
        report(&old, &new),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 opens   connect tcp fd00::/8 ports 80\n\
         summary: 1 open, 0 closes across 1 guard\n"
    );
}

#[test]
fn proto_both_is_tcp_and_udp() {
    let both = api(&(bind("[53]", "proto = \"both\"") + &connect("\"any\"", "[53]", "proto = \"both\"")));
    let tcp = api(&(bind("[53]", "") + &connect("\"any\"", "[53]", "")));
    assert_eq!(
        report(&tcp, &both),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 opens   bind udp 53 on any address\n\
         \x20 opens   connect udp any ports 53\n\
         summary: 2 opens, 0 closes across 1 guard\n"
    );
    assert_eq!(
        report(&api(""), &both),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 opens   bind tcp+udp 53 on any address\n\
         \x20 opens   connect tcp+udp any ports 53\n\
         summary: 2 opens, 0 closes across 1 guard\n"
    );
}

#[test]
fn json_follows_the_documented_schema() {
    let old = api(&connect("\"10.0.1.0/24\"", "[5432]", ""));
    let new = api(&connect("\"10.0.0.0/16\"", "[5432]", ""));
    let json = serde_json::to_value(diff_of(&old, &new)).expect("serialises");
    assert_eq!(
        json,
        serde_json::json!({
            "guards": [{
                "name": "api",
                "change": "changed",
                "mode": {"old": "enforce", "new": "enforce"},
                "cgroup": {"old": "/api", "new": "/api"},
                "reports_only": false,
                "opens": [{
                    "op": "connect", "peer": "10.0.0.0/16", "proto": "tcp", "ports": ["5432"],
                    "except": [{"at": "10.0.1.0/24", "ports": ["5432"]}],
                }],
                "closes": [],
                "allowed": [],
                "notes": [{
                    "kind": "still_allowed",
                    "rule": {"op": "connect", "peer": "10.0.1.0/24", "proto": "tcp", "ports": ["5432"], "except": []},
                    "by": [{"at": "10.0.0.0/16", "ports": ["5432"]}],
                }],
            }],
            "summary": {"opens": 1, "closes": 0},
        })
    );
    let removed = serde_json::to_value(diff_of(&old, "")).expect("serialises");
    assert_eq!(removed["guards"][0]["mode"], serde_json::json!({"old": "enforce", "new": null}));
    assert_eq!(
        removed["guards"][0]["opens"],
        serde_json::json!([{"op": "everything", "cgroup": "/api", "reason": "unguarded"}])
    );
}

#[test]
fn from_opens_and_closes_inbound_reach() {
    let db = |from: &str| api(&bind("[5432]", &format!("from = {from}")));
    assert_eq!(
        report(&db("\"10.0.1.0/24\""), &db("[\"10.0.1.0/24\", \"10.0.2.0/24\"]")),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 opens   accept tcp 5432 from 10.0.2.0/24\n\
         summary: 1 open, 0 closes across 1 guard\n"
    );
    assert_eq!(
        report(&db("\"10.0.0.0/16\""), &db("\"10.0.1.0/24\"")),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 closes  accept tcp 5432 from 10.0.0.0/16 (10.0.1.0/24 still allowed)\n\
         summary: 0 opens, 1 close across 1 guard\n"
    );
    // Dropping from opens the port to every peer; adding one closes the rest.
    assert_eq!(
        report(&db("\"10.0.1.0/24\""), &api(&bind("[5432]", ""))),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 opens   accept tcp 5432 from any (10.0.1.0/24 already allowed)\n\
         summary: 1 open, 0 closes across 1 guard\n"
    );
    assert_eq!(
        report(
            &api(&bind("[5432, 5433]", "proto = \"both\"")),
            &api(&(bind("[5432]", "proto = \"both\"\nfrom = \"fd00::/8\"")
                + &bind("[5433]", "proto = \"both\"")))
        ),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 closes  accept/receive tcp+udp 5432 from any (fd00::/8 still allowed)\n\
         summary: 0 opens, 1 close across 1 guard\n"
    );
    // A new port with from names its audience; a new port without from is its bind line.
    assert_eq!(
        report(
            &api(""),
            &api(&(bind("[5432]", "from = [\"10.0.2.0/24\", \"10.0.2.7\"]") + &bind("[80]", "")))
        ),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 opens   bind tcp 80, 5432 on any address\n\
         \x20 opens   accept tcp 5432 from 10.0.2.0/24\n\
         summary: 2 opens, 0 closes across 1 guard\n"
    );
    assert_eq!(
        report(&db("\"10.0.1.0/24\""), &api("")),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 closes  bind tcp 5432 on any address\n\
         \x20 closes  accept tcp 5432 from 10.0.1.0/24\n\
         summary: 0 opens, 2 closes across 1 guard\n"
    );
    // The same audience written another way, and from = "any", change nothing.
    assert_eq!(
        report(&db("[\"10.0.0.0/8\", \"10.1.0.0/16\"]"), &db("\"10.0.0.0/8\"")),
        "no change in what is allowed\n"
    );
    assert_eq!(report(&db("\"any\""), &api(&bind("[5432]", ""))), "no change in what is allowed\n");
    // An address rule's own port.
    let lo = |from: &str| api(&bind("[9000]", &format!("address = \"127.0.0.1\"\nfrom = {from}")));
    assert_eq!(
        report(&lo("\"127.0.0.1\""), &lo("\"127.0.0.0/8\"")),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 opens   accept tcp 9000 on 127.0.0.1 from 127.0.0.0/8 (127.0.0.1/32 already allowed)\n\
         summary: 1 open, 0 closes across 1 guard\n"
    );
    let json =
        serde_json::to_value(diff_of(&db("\"10.0.1.0/24\""), &db("\"10.0.0.0/16\""))).expect("serialises");
    assert_eq!(
        json["guards"][0]["opens"],
        serde_json::json!([{
            "op": "inbound", "address": "any", "from": "10.0.0.0/16", "proto": "tcp", "ports": ["5432"],
            "except": [{"at": "10.0.1.0/24", "ports": ["5432"]}],
        }])
    );
}

/// Random rule sets over nested networks, checked point by point against
/// the README's semantics: every (address, port) that NEW allows and OLD
/// does not is in exactly the opens (minus their `except` parts), and the
/// reverse for closes.
#[test]
fn opens_and_closes_match_a_reference_evaluator() {
    const PEERS: [&str; 9] = [
        "0.0.0.0/0",
        "10.0.0.0/8",
        "10.0.0.0/16",
        "10.0.1.0/24",
        "10.0.1.5",
        "10.1.0.0/16",
        "::/0",
        "fd00::/8",
        "any",
    ];
    const PROBE_PEERS: [&str; 7] =
        ["10.0.1.5", "10.0.1.6", "10.0.2.1", "10.1.0.1", "11.0.0.1", "fd00::1", "2001:db8::1"];
    const BIND_ADDRESSES: [&str; 2] = ["127.0.0.1", "::1"];
    const PROBE_ADDRESSES: [&str; 4] = ["127.0.0.1", "::1", "0.0.0.0", "10.9.9.9"];
    const PROTOS: [&str; 3] = ["tcp", "udp", "both"];
    const FROMS: [&str; 8] =
        ["10.0.0.0/8", "10.0.1.0/24", "10.0.1.5", "127.0.0.1", "fd00::/8", "::1", "any", "0.0.0.0/0"];
    const INBOUND_PEERS: [&str; 9] = [
        "10.0.1.5",
        "10.0.1.6",
        "10.0.2.1",
        "11.0.0.1",
        "127.0.0.1",
        "::1",
        "fd00::1",
        "2001:db8::1",
        "::ffff:10.0.1.5",
    ];

    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: usize| {
        // xorshift64: a fixed sequence, so a failure reproduces.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut random_guard = || {
        let mut rules = String::new();
        for _ in 0..next(5) {
            let (first, len) = (1 + next(10), next(3));
            let address = match next(3) {
                0 => format!("address = \"{}\"", BIND_ADDRESSES[next(2)]),
                _ => String::new(),
            };
            let proto = PROTOS[next(3)];
            let from = match next(3) {
                0 => String::new(),
                _ => format!("from = [\"{}\", \"{}\"]", FROMS[next(FROMS.len())], FROMS[next(FROMS.len())]),
            };
            rules += &bind(
                &format!("[\"{first}-{}\"]", first + len),
                &format!("proto = \"{proto}\"\n{address}\n{from}"),
            );
        }
        for _ in 0..next(6) {
            let (first, len) = (1 + next(10), next(3));
            let peer = PEERS[next(PEERS.len())];
            let proto = PROTOS[next(3)];
            rules += &connect(
                &format!("\"{peer}\""),
                &format!("[\"{first}-{}\"]", first + len),
                &format!("proto = \"{proto}\""),
            );
        }
        api(&rules)
    };

    let port_in = |port: u16, ports: &Ports| {
        Ports::from_specs(&[PortSpec { first: port, last: port }]).is_subset(ports)
    };
    let protos_cover = |p: Protos, t: Transport| p == Protos::Both || p == t.protos();
    // Reference semantics, straight from the validated rules.
    let connect_allowed = |g: &GuardSpec, t: Transport, ip: IpAddr, port: u16| {
        g.connect.iter().any(|r| {
            Transport::of(r.proto).contains(&t)
                && r.peers.iter().any(|n| n.contains(&ip))
                && r.ports.iter().any(|s| (s.first..=s.last).contains(&port))
        })
    };
    let bind_allowed = |g: &GuardSpec, t: Transport, ip: IpAddr, port: u16| {
        g.bind.iter().any(|r| {
            Transport::of(r.proto).contains(&t)
                && r.address.is_none_or(|a| a == ip)
                && r.ports.iter().any(|s| (s.first..=s.last).contains(&port))
        })
    };
    // Whether `effects` report (op, t, ip, port), outside their `except` parts.
    let reported = |effects: &[Effect], bind_op: bool, t: Transport, ip: IpAddr, port: u16| {
        effects.iter().any(|e| {
            let (covers, except) = match e {
                Effect::Bind { address, proto, ports, except } if bind_op => (
                    protos_cover(*proto, t)
                        && port_in(port, ports)
                        && (*address == BindAddress::Any || *address == BindAddress::Ip(ip)),
                    except,
                ),
                Effect::Connect { peer, proto, ports, except } if !bind_op => (
                    protos_cover(*proto, t)
                        && port_in(port, ports)
                        && match peer {
                            Peer::Any => true,
                            Peer::Net(n) => n.contains(&ip),
                        },
                    except,
                ),
                _ => return false,
            };
            let excepted = except.iter().any(|r| {
                let at_ip = if bind_op {
                    r.at.parse::<IpAddr>().is_ok_and(|a| a == ip)
                } else {
                    r.at.parse::<IpNet>().is_ok_and(|n| n.contains(&ip))
                };
                at_ip && port_in(port, &r.ports)
            });
            covers && !excepted
        })
    };

    // Random bind rules that approve one port with different `from`, or
    // list only the other family's peers for their address, are refused:
    // draw again.
    let mut valid_guard = || loop {
        let text = random_guard();
        if let Ok((p, _)) = parse_and_compile("t.toml", &text) {
            return (text, p);
        }
    };

    // Inbound reach, from the validated rules: the rule approving the
    // socket's port (one audience whichever matches), and its `from`.
    let approving = |g: &GuardSpec, t: Transport, local: IpAddr, port: u16| {
        g.bind
            .iter()
            .find(|r| {
                Transport::of(r.proto).contains(&t)
                    && r.address.is_none_or(|a| a == local)
                    && r.ports.iter().any(|s| (s.first..=s.last).contains(&port))
            })
            .map(|r| r.from.clone())
    };
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        a => a,
    };
    let reach = |g: &GuardSpec, t, local, port, peer: IpAddr| {
        approving(g, t, local, port)
            .is_some_and(|from| from.is_none_or(|f| f.iter().any(|n| n.contains(&v4(peer)))))
    };
    let everyone = |from: Option<Vec<IpNet>>| {
        from.is_none_or(|f| ["0.0.0.0/0", "::/0"].iter().all(|n| f.contains(&n.parse().expect("net"))))
    };
    // Whether `local`'s own rules decide `port` (no address-less rule does).
    let own = |g: &GuardSpec, t: Transport, local: IpAddr, port: u16| {
        let approves = |r: &crate::policy::BindRuleSpec| {
            Transport::of(r.proto).contains(&t) && r.ports.iter().any(|s| (s.first..=s.last).contains(&port))
        };
        !g.bind.iter().any(|r| approves(r) && r.address.is_none())
            && g.bind.iter().any(|r| approves(r) && r.address == Some(local))
    };
    let reported_inbound = |effects: &[Effect], t: Transport, at: BindAddress, port: u16, peer: IpAddr| {
        effects.iter().any(|e| {
            let Effect::Inbound { address, from, proto, ports, except } = e else { return false };
            let inside = |n: &str| n.parse::<IpNet>().is_ok_and(|n| n.contains(&v4(peer)));
            protos_cover(*proto, t)
                && port_in(port, ports)
                && *address == at
                && (*from == Peer::Any || inside(&from.to_string()))
                && !except.iter().any(|r| inside(&r.at) && port_in(port, &r.ports))
        })
    };

    for round in 0..300 {
        let ((old_text, old), (new_text, new)) = (valid_guard(), valid_guard());
        let d = diff(&old, &new);
        let g = &d.guards[0];
        let (o, n) = (&old.guards[0], &new.guards[0]);
        for t in TRANSPORTS {
            for port in 1..=14 {
                let cases = PROBE_PEERS
                    .iter()
                    .map(|ip| (false, ip))
                    .chain(PROBE_ADDRESSES.iter().map(|ip| (true, ip)));
                for (bind_op, ip) in cases {
                    let ip: IpAddr = ip.parse().expect("probe address");
                    let allowed = |gs| {
                        if bind_op { bind_allowed(gs, t, ip, port) } else { connect_allowed(gs, t, ip, port) }
                    };
                    let (was, is) = (allowed(o), allowed(n));
                    let what = format!(
                        "round {round}: {} {t:?} {ip} port {port}",
                        if bind_op { "bind" } else { "connect" }
                    );
                    assert_eq!(
                        reported(&g.opens, bind_op, t, ip, port),
                        is && !was,
                        "opens, {what}\n{old_text}\n---\n{new_text}\n{g:#?}"
                    );
                    assert_eq!(
                        reported(&g.closes, bind_op, t, ip, port),
                        was && !is,
                        "closes, {what}\n{old_text}\n---\n{new_text}\n{g:#?}"
                    );
                }
                for local in PROBE_ADDRESSES {
                    let local: IpAddr = local.parse().expect("probe address");
                    let at = if own(o, t, local, port) || own(n, t, local, port) {
                        BindAddress::Ip(local)
                    } else {
                        BindAddress::Any
                    };
                    let (bound_o, bound_n) = (approving(o, t, local, port), approving(n, t, local, port));
                    // A port newly approved (or no longer approved) for
                    // every peer is its bind line's business.
                    let opened_to_all = bound_o.is_none() && bound_n.clone().is_some_and(everyone);
                    let closed_to_all = bound_n.is_none() && bound_o.clone().is_some_and(everyone);
                    for peer in INBOUND_PEERS {
                        let peer: IpAddr = peer.parse().expect("probe peer");
                        let (was, is) = (reach(o, t, local, port, peer), reach(n, t, local, port, peer));
                        let what = format!("round {round}: inbound {t:?} {local} port {port} from {peer}");
                        assert_eq!(
                            reported_inbound(&g.opens, t, at, port, peer),
                            is && !was && !opened_to_all,
                            "opens, {what}\n{old_text}\n---\n{new_text}\n{g:#?}"
                        );
                        assert_eq!(
                            reported_inbound(&g.closes, t, at, port, peer),
                            was && !is && !closed_to_all,
                            "closes, {what}\n{old_text}\n---\n{new_text}\n{g:#?}"
                        );
                        // And no line at the other kind of address claims it.
                        let other =
                            if at == BindAddress::Any { BindAddress::Ip(local) } else { BindAddress::Any };
                        if matches!(other, BindAddress::Ip(_)) {
                            assert!(
                                !reported_inbound(&g.opens, t, other, port, peer)
                                    && !reported_inbound(&g.closes, t, other, port, peer),
                                "{what}: reported on its own address\n{old_text}\n---\n{new_text}\n{g:#?}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn names_open_and_close_by_port_and_meet_networks_in_a_note() {
    let old = api(&(connect("\"10.0.0.0/8\"", "[443]", "") + &connect("\"db.example\"", "[5432]", "")));
    let new = api(&(connect("\"10.0.0.0/8\"", "[443]", "")
        + &connect("[\"DB.example.\", \"api.vendor.example\"]", "[443, 5432]", "")));
    assert_eq!(
        report(&old, &new),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 opens   connect tcp name api.vendor.example ports 443, 5432\n\
         \x20 opens   connect tcp name db.example ports 443\n\
         \x20 note    connect tcp name api.vendor.example ports 443, 5432 and 10.0.0.0/8 ports 443 may overlap: it depends on DNS answers, not decided here\n\
         \x20 note    connect tcp name db.example ports 443 and 10.0.0.0/8 ports 443 may overlap: it depends on DNS answers, not decided here\n\
         summary: 2 opens, 0 closes across 1 guard\n"
    );
    // Written in another case and with its trailing dot, a name is the same name.
    let same = api(&connect("\"DB.Example.\"", "[5432]", ""));
    assert!(diff_of(&api(&connect("\"db.example\"", "[5432]", "")), &same).is_empty());
    let gone = api(&connect("\"10.0.0.0/8\"", "[443]", ""));
    assert_eq!(
        report(&old, &gone),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 closes  connect tcp name db.example ports 5432\n\
         summary: 0 opens, 1 close across 1 guard\n"
    );
}

#[test]
fn a_resolver_change_of_a_guard_with_names_is_noted() {
    let with = |resolvers: &str| {
        api(&(connect(resolvers, "[53]", "proto = \"udp\"") + &connect("\"db.example\"", "[5432]", "")))
    };
    let one = with("\"10.0.0.53\"");
    let wider = with("[\"10.0.0.0/24\", \"fd00::53\"]");
    assert_eq!(
        report(&one, &wider),
        "guard \"api\" (cgroup /api, enforce):\n\
         \x20 opens   connect udp 10.0.0.0/24 ports 53 (10.0.0.53/32 already allowed)\n\
         \x20 opens   connect udp fd00::53/128 ports 53\n\
         \x20 note    connect udp 10.0.0.53/32 ports 53 is no longer listed but still allowed by broader 10.0.0.0/24 ports 53\n\
         \x20 note    names are now also learned from resolvers at 10.0.0.0/24, fd00::53/128\n\
         summary: 2 opens, 0 closes across 1 guard\n"
    );
    let report = report(&wider, &one);
    assert!(
        report.contains(
            "note    resolvers at 10.0.0.0/24, fd00::53/128 are no longer trusted: every address learned \
             before stops counting until the workloads resolve again"
        ),
        "{report}"
    );
    // Without names, a resolver is just a peer.
    let plain = |r: &str| api(&connect(r, "[53]", "proto = \"udp\""));
    assert!(!report_of_note(&plain("\"10.0.0.53\""), &plain("\"10.0.0.54\"")), "no note without names");
}

fn report_of_note(old: &str, new: &str) -> bool {
    report(old, new).contains("resolvers at")
}

#[test]
fn names_the_agent_starts_or_stops_resolving_are_noted() {
    let rule = |extra: &str| api(&connect("\"api.vendor.example\"", "[443]", extra));
    let started = report(&rule(""), &rule("resolve = \"agent\""));
    assert!(
        started.contains(
            "note    the agent now resolves api.vendor.example itself: their addresses open without the workload's own lookup"
        ),
        "{started}"
    );
    assert!(
        report(&rule("resolve = \"agent\""), &rule(""))
            .contains("the agent no longer resolves api.vendor.example")
    );
}
