//! Any bytes given to the policy parser and compiler: no panic, and every
//! answer keeps the promises the agent relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portguard_agent::policy::parse_and_compile;
use portguard_common::{MAX_BIND_ENTRIES, MAX_CONNECT_ENTRIES, MAX_PORT_RANGES, MAX_PREFIX_LENS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_and_compile("fuzz.toml", text) {
        Ok((policy, compiled)) => {
            assert_eq!(policy.guards.len(), compiled.guards.len());
            assert!(compiled.bind_entries() <= MAX_BIND_ENTRIES as usize);
            assert!(compiled.connect_entries() <= MAX_CONNECT_ENTRIES as usize);
            for g in &compiled.guards {
                assert!(g.v4_prefix_lens.len() <= MAX_PREFIX_LENS && g.v6_prefix_lens.len() <= MAX_PREFIX_LENS);
                for set in g.connect.values() {
                    assert!(set.count as usize <= MAX_PORT_RANGES);
                }
                if let Some(c) = g.target.cgroup() {
                    assert!(c.starts_with('/'));
                }
            }
        }
        Err(e) => {
            let line = e.to_string();
            assert!(line.starts_with("fuzz.toml"), "{line}");
            assert!(!line.contains('\n'), "errors are one line: {line:?}");
        }
    }
});
