//! How much of the verifier's 1,000,000-instruction limit each program of
//! the real object uses: a program that grows past its budget fails here,
//! long before a kernel refuses it on a host. The DNS walk runs inside
//! `pg_sock_ingress` and `pg_sock_egress`, so theirs are the ones to watch.
//! Needs root (CI runs it; elsewhere it says why it skips).

use aya::{
    Ebpf,
    programs::{CgroupSkb, CgroupSock, CgroupSockAddr, SockOps},
};

use super::{
    hooks::{self, Kind},
    loader::OBJECT,
};

/// Budgets, well under the limit: (program, most verified instructions).
/// Measured on 6.18 (December 2026): ingress 193,231 (the walk's callback
/// is most of it), egress 83,619, connect6/sendmsg6 195,171 (193,371
/// before the learned-address check), connect4 82,543 (76,341).
const BUDGETS: [(&str, u32); 2] = [("pg_sock_ingress", 400_000), ("pg_sock_egress", 250_000)];
/// Every other program.
const DEFAULT_BUDGET: u32 = 250_000;

#[test]
fn every_program_verifies_within_its_budget() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs the verifier budget test as root");
        eprintln!("skipped: loading BPF programs needs root");
        return;
    }
    let mut ebpf = Ebpf::load(OBJECT).expect("load the eBPF object");
    for hook in hooks::cgroup_hooks() {
        let program = ebpf.program_mut(hook.program).expect("every hook's program is in the object");
        let loaded = match hook.kind {
            Kind::CgroupSockAddr => {
                <&mut CgroupSockAddr>::try_from(program).map(|p| p.load().map(|()| p.info()))
            }
            Kind::SockOps => <&mut SockOps>::try_from(program).map(|p| p.load().map(|()| p.info())),
            Kind::CgroupSock => <&mut CgroupSock>::try_from(program).map(|p| p.load().map(|()| p.info())),
            Kind::CgroupSkbIngress | Kind::CgroupSkbEgress => {
                <&mut CgroupSkb>::try_from(program).map(|p| p.load().map(|()| p.info()))
            }
            Kind::Lsm(_) => continue,
        };
        let info = loaded
            .expect("the program's type")
            .unwrap_or_else(|e| panic!("the verifier refused {}: {e:?}", hook.program))
            .expect("program info");
        let insns = info.verified_instruction_count().expect("this kernel reports verified_insns");
        let budget = BUDGETS.iter().find(|(n, _)| *n == hook.program).map_or(DEFAULT_BUDGET, |(_, b)| *b);
        eprintln!("{}: {insns} verified instructions (budget {budget})", hook.program);
        assert!(insns <= budget, "{}: {insns} verified instructions, budget {budget}", hook.program);
    }
}
