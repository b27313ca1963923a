//! The walk on messages built byte by byte: what it learns, and what stops it.

use super::{
    message::{Learned, Msg, long_answer, mutants, run, wire},
    *,
};

const KEY: NameKey = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];

fn walk(msg: &[u8]) -> Learned {
    run(&KEY, msg, MAX_STEPS)
}

fn walk_within(msg: &[u8], budget: u32) -> Learned {
    run(&KEY, msg, budget)
}

fn q(name: &str) -> u64 {
    name_hash(&KEY, name.split('.').map(str::as_bytes))
}

#[test]
fn an_a_answer_teaches_its_address_with_its_ttl() {
    let mut m = Msg::response("db.example", 1, 2);
    m.a(12, 300, [10, 0, 0, 7]).a(12, 60, [10, 0, 0, 8]);
    let got = walk(&m.0);
    assert_eq!(got.stop, None);
    assert_eq!(got.question, Some((q("db.example"), 1)));
    assert_eq!(got.addrs, vec![(vec![10, 0, 0, 7], 300), (vec![10, 0, 0, 8], 60)]);
}

#[test]
fn the_question_hash_is_the_agents_name_hash_whatever_the_case() {
    let m = Msg::response("DB.Example", 1, 0);
    assert_eq!(walk(&m.0).question, Some((q("db.example"), 1)));
    assert_ne!(q("db.example"), q("db.exampl"));
    assert_ne!(q("a.bc"), q("ab.c"));
    // Labels of whole words and more (hashed a word at a time in the walk).
    for name in ["database.example", "primary-database-eu-west.Example", &"x".repeat(63)] {
        let name = if name.contains('.') { name.to_owned() } else { format!("{name}.example") };
        let m = Msg::response(&name, 1, 0);
        assert_eq!(walk(&m.0).question, Some((q(&name.to_ascii_lowercase()), 1)), "{name}");
    }
    // A different key gives different hashes: names cannot be aimed at a collision.
    assert_ne!(name_hash(&[1, 2], ["db", "example"].into_iter().map(str::as_bytes)), q("db.example"));
}

#[test]
fn every_suffix_of_the_question_has_the_agents_name_hash() {
    let m = Msg::response("A.b.Vendor.example", 1, 0);
    let mut w = DnsWalk::default();
    let mut buf = [0u8; BUF_LEN];
    buf[..m.0.len()].copy_from_slice(&m.0);
    assert_eq!(w.start(&buf, m.0.len() as u32), step::CONTINUE);
    while w.step(&KEY, &buf) == step::CONTINUE {}
    assert_eq!(w.question_labels, 4);
    for (i, suffix) in
        ["a.b.vendor.example", "b.vendor.example", "vendor.example", "example"].iter().enumerate()
    {
        assert_eq!(w.suffixes[i], q(suffix), "{suffix}");
    }
    // Patterns never take a literal name's identity, nor each other's.
    let one = wildcard_hash(&KEY, q("vendor.example"), WILDCARD_ONE);
    let many = wildcard_hash(&KEY, q("vendor.example"), WILDCARD_MANY);
    assert!(one != many && one != q("vendor.example") && one != q("b.vendor.example"));
}

#[test]
fn aaaa_records_teach_ipv6_addresses() {
    let mut m = Msg::response("db.example", 28, 1);
    let ip: [u8; 16] = core::array::from_fn(|i| i as u8);
    m.pointer(12).rr(28, 30, &ip);
    assert_eq!(walk(&m.0).addrs, vec![(ip.to_vec(), 30)]);
}

#[test]
fn a_cname_chain_teaches_its_targets_addresses_with_the_chains_minimum_ttl() {
    // db.example CNAME edge.cdn.example; edge.cdn.example A 10.0.0.9
    let mut m = Msg::response("db.example", 1, 2);
    m.pointer(12).rr(5, 100, &wire("edge.cdn.example"));
    let target = (m.0.len() - wire("edge.cdn.example").len()) as u16;
    m.a(target, 3600, [10, 0, 0, 9]);
    let got = walk(&m.0);
    assert_eq!(got.addrs, vec![(vec![10, 0, 0, 9], 100)]);
    assert_eq!(got.question.map(|q| q.0), Some(q("db.example")));
}

#[test]
fn records_of_other_names_teach_nothing() {
    // An A record for a name the question never led to, before and after.
    let mut m = Msg::response("db.example", 1, 3);
    m.name("evil.example").rr(1, 300, &[6, 6, 6, 6]);
    m.a(12, 300, [10, 0, 0, 7]);
    m.name("other.example").rr(1, 300, &[7, 7, 7, 7]);
    assert_eq!(walk(&m.0).addrs, vec![(vec![10, 0, 0, 7], 300)]);
    // A CNAME from another name does not continue the chain.
    let mut m = Msg::response("db.example", 1, 2);
    m.name("x.example").rr(5, 300, &wire("y.example"));
    m.name("y.example").rr(1, 300, &[8, 8, 8, 8]);
    assert_eq!(walk(&m.0).addrs, vec![]);
}

#[test]
fn a_record_before_the_cname_that_names_it_teaches_nothing() {
    let mut m = Msg::response("db.example", 1, 2);
    m.name("edge.example").rr(1, 300, &[10, 0, 0, 9]);
    m.pointer(12).rr(5, 300, &wire("edge.example"));
    assert_eq!(walk(&m.0).addrs, vec![]);
}

#[test]
fn a_pointer_into_the_middle_of_a_name_works() {
    // Question www.db.example; answer owner is a pointer to "db.example"
    // inside it, then a CNAME chain back to it is not needed: this is an
    // A record for db.example, not the question: nothing.
    let mut m = Msg::response("www.db.example", 1, 1);
    m.a(16, 300, [10, 0, 0, 1]);
    assert_eq!(walk(&m.0).addrs, vec![]);
    // A label then a pointer to the rest: "www" + ptr(16) is the question.
    let mut m = Msg::response("www.db.example", 1, 1);
    m.0.extend([3, b'w', b'w', b'w']);
    m.pointer(16).rr(1, 300, &[10, 0, 0, 2]);
    assert_eq!(walk(&m.0).addrs, vec![(vec![10, 0, 0, 2], 300)]);
}

#[test]
fn error_answers_and_odd_headers_stop_at_once() {
    let mut m = Msg::response("db.example", 1, 0);
    m.0[3] = 0x83; // NXDOMAIN
    assert_eq!(walk(&m.0).stop, Some(stop::RCODE));
    let mut m = Msg::response("db.example", 1, 0);
    m.0[2] = 0x01; // a query, not a response
    assert_eq!(walk(&m.0).stop, Some(stop::NOT_A_RESPONSE));
    let mut m = Msg::response("db.example", 1, 0);
    m.0[2] = 0x80 | (4 << 3); // NOTIFY
    assert_eq!(walk(&m.0).stop, Some(stop::NOT_A_QUERY));
    let mut m = Msg::response("db.example", 1, 0);
    m.0[5] = 2;
    assert_eq!(walk(&m.0).stop, Some(stop::QDCOUNT));
    assert_eq!(walk(&[0x12, 0x34, 0x81]).stop, Some(stop::TRUNCATED));
}

#[test]
fn pointers_that_do_not_go_backwards_stop_the_walk() {
    // Owner pointing at itself.
    let mut m = Msg::response("db.example", 1, 1);
    let here = m.0.len() as u16;
    m.pointer(here).rr(1, 300, &[1, 2, 3, 4]);
    assert_eq!(walk(&m.0).stop, Some(stop::POINTER));
    // Forward.
    let mut m = Msg::response("db.example", 1, 1);
    let ahead = m.0.len() as u16 + 4;
    m.pointer(ahead).rr(1, 300, &[1, 2, 3, 4]);
    assert_eq!(walk(&m.0).stop, Some(stop::POINTER));
    // Two pointers that point at each other, in a record's data, reached
    // from a later owner name: the second is not below the first's target.
    let mut m = Msg::response("db.example", 1, 2);
    m.pointer(12);
    let d = m.0.len() as u16 + 10;
    m.rr(99, 300, &[0xc0 | ((d + 2) >> 8) as u8, (d + 2) as u8, 0xc0 | (d >> 8) as u8, d as u8]);
    m.pointer(d + 2).rr(1, 300, &[1, 2, 3, 4]);
    assert_eq!(walk(&m.0).stop, Some(stop::POINTER));
    // Into the header.
    let mut m = Msg::response("db.example", 1, 1);
    m.pointer(2).rr(1, 300, &[1, 2, 3, 4]);
    assert_eq!(walk(&m.0).stop, Some(stop::POINTER));
}

#[test]
fn a_cname_target_ends_inside_its_record() {
    // rdlength 0: the target cannot be read from the next record's bytes.
    let mut m = Msg::response("db.example", 1, 2);
    m.pointer(12).rr(5, 300, &[]);
    m.a(12, 300, [10, 0, 0, 7]);
    assert_eq!(walk(&m.0).stop, Some(stop::TRUNCATED));
    // A target compressed to a pointer fits in 2 bytes and is followed.
    let mut m = Msg::response("www.db.example", 1, 2);
    m.pointer(12).rr(5, 300, &0xc010u16.to_be_bytes());
    m.a(16, 300, [10, 0, 0, 8]);
    assert_eq!(walk(&m.0).addrs, vec![(vec![10, 0, 0, 8], 300)]);
}

#[test]
fn a_ttl_with_the_top_bit_set_is_zero() {
    let mut m = Msg::response("db.example", 1, 1);
    m.pointer(12).rr(1, 0x8000_0001, &[10, 0, 0, 7]);
    assert_eq!(walk(&m.0).addrs, vec![(vec![10, 0, 0, 7], 0)]);
}

#[test]
fn reserved_label_types_long_names_and_truncation_stop_the_walk() {
    let mut m = Msg::response("db.example", 1, 1);
    m.0.push(0x41);
    assert_eq!(walk(&m.0).stop, Some(stop::LABEL_TYPE));
    let long = vec!["a".repeat(63); 4].join(".");
    assert_eq!(walk(&Msg::response(&long, 1, 0).0).stop, Some(stop::LONG_NAME));
    let many = vec!["a"; 33].join(".");
    assert_eq!(walk(&Msg::response(&many, 1, 0).0).stop, Some(stop::TOO_MANY_LABELS));
    let mut m = Msg::response("db.example", 1, 1);
    m.a(12, 300, [10, 0, 0, 7]);
    let cut = &m.0[..m.0.len() - 2];
    assert_eq!(walk(cut).stop, Some(stop::TRUNCATED));
    // What came before a cut stays learned.
    let mut m = Msg::response("db.example", 1, 2);
    m.a(12, 300, [10, 0, 0, 7]).a(12, 300, [10, 0, 0, 8]);
    let got = walk(&m.0[..m.0.len() - 1]);
    assert_eq!((got.addrs.len(), got.stop), (1, Some(stop::TRUNCATED)));
}

#[test]
fn a_chain_longer_than_the_limit_stops() {
    let n = MAX_CNAME_LINKS as usize + 1;
    let mut m = Msg::response("c0.example", 1, n as u16 + 1);
    let mut owner = 12u16;
    for i in 0..n {
        m.pointer(owner).rr(5, 300, &wire(&format!("c{}.example", i + 1)));
        owner = (m.0.len() - wire(&format!("c{}.example", i + 1)).len()) as u16;
    }
    m.a(owner, 300, [10, 0, 0, 1]);
    assert_eq!(walk(&m.0).stop, Some(stop::CHAIN_TOO_LONG));
}

#[test]
fn any_bytes_end_the_walk_without_panic() {
    // Pointers only go backwards and everything else moves forwards, so
    // every walk ends by DONE or STOP, whatever the bytes (MAX_STEPS is a
    // budget for long answers, not what makes the walk end). Mutants of a
    // long valid answer (a CNAME chain, then many records) reach deep.
    let base = long_answer();
    assert_eq!(walk_within(&base.0, 1_000_000).addrs.len(), 39);
    let mut longest = 0;
    for m in mutants(&base.0, 20_000, 0x9e37_79b9_7f4a_7c15) {
        let got = walk_within(&m, 1_000_000);
        assert!(got.steps < 1_000_000, "no end on {m:02x?}");
        longest = longest.max(got.steps);
    }
    assert!(longest > 100, "mutants should reach deep walks (longest {longest})");
}

#[test]
fn eight_bytes_at_once_lower_case_exactly_as_one_at_a_time() {
    let mut buf = vec![0u8; BUF_LEN];
    for b in 0..=255u8 {
        let word: Vec<u8> = [b, b'A', b'z', b'Z', 0x80 | b'A', b'@', b'[', b].to_vec();
        buf[100..108].copy_from_slice(&word);
        let buf: &Buf = buf.as_slice().try_into().unwrap();
        let want = u64::from_le_bytes(word.iter().map(|&c| lower(c)).collect::<Vec<_>>().try_into().unwrap());
        assert_eq!(label_word(buf, 100, 8), want, "byte {b:#x}");
        assert_eq!(label_word(buf, 100, 3), want & 0xff_ffff, "byte {b:#x}");
    }
}

#[test]
fn a_query_is_read_up_to_its_question() {
    let mut m = Msg::response("DB.example", 28, 0);
    m.0[2] = 0x01; // QR=0, RD
    let mut buf = vec![0u8; BUF_LEN];
    buf[..m.0.len()].copy_from_slice(&m.0);
    let buf: &Buf = buf.as_slice().try_into().unwrap();
    let mut w = DnsWalk::default();
    assert_eq!(w.start_query(buf, m.0.len() as u32), step::CONTINUE);
    assert_eq!(w.txid, 0x1234);
    let mut last = step::CONTINUE;
    for _ in 0..10 {
        last = w.step(&KEY, buf);
        if last != step::CONTINUE {
            break;
        }
    }
    assert_eq!((last, w.question, w.qtype), (step::QUESTION, q("db.example"), 28));
    assert_eq!(w.step(&KEY, buf), step::DONE);
    // A response is no query, and a query no response.
    let r = Msg::response("db.example", 1, 0);
    buf_check(&r.0, |w, b, n| w.start_query(b, n), stop::NOT_A_QUERY);
    buf_check(&m.0, |w, b, n| w.start(b, n), stop::NOT_A_RESPONSE);
}

fn buf_check(msg: &[u8], start: impl Fn(&mut DnsWalk, &Buf, u32) -> u32, want: u32) {
    let mut buf = vec![0u8; BUF_LEN];
    buf[..msg.len()].copy_from_slice(msg);
    let buf: &Buf = buf.as_slice().try_into().unwrap();
    let mut w = DnsWalk::default();
    assert_eq!(start(&mut w, buf, msg.len() as u32), step::STOP);
    assert_eq!(w.stop, want);
}
