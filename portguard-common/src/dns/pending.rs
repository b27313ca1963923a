//! Queries a socket sent and that no answer has matched yet. In the kernel
//! the table is socket-local storage: the egress program records each query
//! a guarded socket sends to port 53 of a resolver its guard may reach, the
//! ingress program takes the one an answer matches before it learns
//! anything from the answer. Per socket, so no other guard (or socket) can
//! flush or fill it.

/// Queries in flight per socket; a socket with more (a resolver library's
/// burst) overwrites its own oldest.
pub const PENDING_QUERIES: usize = 16;
/// How long a query waits for its answer: the UDP reply window.
pub const QUERY_WINDOW_NS: u64 = crate::UDP_REPLY_WINDOW_NS;

/// One query sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingQuery {
    /// CLOCK_BOOTTIME when sent; 0: an empty slot.
    pub sent_ns: u64,
    /// The question's name hash (`name_hash`).
    pub question: u64,
    /// The resolver's address (IPv4 in the first 4 bytes) and port.
    pub resolver: [u8; 16],
    pub txid: u16,
    pub port: u16,
    pub qtype: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    pub _pad: u8,
    /// The guard's `dns_epoch` when the query was sent: an answer that
    /// arrives after a reload took the resolver away teaches nothing.
    pub epoch: u32,
    pub _pad2: u32,
}

/// The table of one socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingQueries {
    pub slots: [PendingQuery; PENDING_QUERIES],
    /// Where the next query goes (round robin).
    pub next: u32,
    pub _pad: u32,
}

impl PendingQueries {
    /// Records a query the socket sent.
    #[inline(always)]
    pub fn record(&mut self, query: PendingQuery) {
        let i = (self.next as usize) & (PENDING_QUERIES - 1);
        self.slots[i] = query;
        self.next = self.next.wrapping_add(1);
    }

    /// Takes the query `answer` answers: the same transaction id, from the
    /// resolver (address, port) it was sent to, for the same question and
    /// type, within [`QUERY_WINDOW_NS`], under the same resolver epoch.
    /// The slot is cleared, so a second answer with the same id teaches
    /// nothing. `None`: an answer nobody asked for (counted, never learned
    /// from).
    #[inline(always)]
    pub fn take(&mut self, answer: &PendingQuery, now_ns: u64) -> Option<PendingQuery> {
        let i = self.find(answer, now_ns)?;
        let q = self.slots[i];
        self.slots[i] = PendingQuery::default();
        Some(q)
    }

    /// The slot of the query `answer` answers (see [`Self::take`]), left
    /// in place: the kernel matches against a copy and then clears the
    /// slot in the socket's storage with [`Self::clear_if`].
    #[inline(always)]
    pub fn find(&self, answer: &PendingQuery, now_ns: u64) -> Option<usize> {
        let mut i = 0;
        while i < PENDING_QUERIES {
            let q = &self.slots[i];
            if q.sent_ns != 0
                && now_ns.wrapping_sub(q.sent_ns) < QUERY_WINDOW_NS
                && q.txid == answer.txid
                && q.port == answer.port
                && q.family == answer.family
                && q.resolver == answer.resolver
                && q.question == answer.question
                && q.qtype == answer.qtype
                && q.epoch == answer.epoch
            {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    /// Clears slot `i` if it still holds `query` (a newer query may have
    /// taken the slot since it was matched: that one stays).
    #[inline(always)]
    pub fn clear_if(&mut self, i: usize, query: &PendingQuery) {
        let slot = &mut self.slots[i & (PENDING_QUERIES - 1)];
        if slot.sent_ns == query.sent_ns && slot.txid == query.txid {
            *slot = PendingQuery::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(txid: u16, sent_ns: u64) -> PendingQuery {
        let mut resolver = [0u8; 16];
        resolver[..4].copy_from_slice(&[10, 0, 0, 53]);
        PendingQuery {
            sent_ns,
            question: 0xfeed,
            resolver,
            txid,
            port: 53,
            qtype: 1,
            family: crate::AF_INET,
            _pad: 0,
            epoch: 3,
            _pad2: 0,
        }
    }

    #[test]
    fn an_answer_takes_its_query_once() {
        let mut t = PendingQueries::default();
        t.record(query(7, 1_000));
        let answer = PendingQuery { sent_ns: 0, ..query(7, 0) };
        assert_eq!(t.take(&answer, 2_000).map(|q| q.txid), Some(7));
        assert_eq!(t.take(&answer, 2_000), None, "a second answer with the same id teaches nothing");
    }

    #[test]
    fn every_field_must_match_and_the_window_must_hold() {
        let mut t = PendingQueries::default();
        t.record(query(7, 1_000));
        let a = query(7, 0);
        let mut other_resolver = a;
        other_resolver.resolver[3] = 54;
        for wrong in [
            PendingQuery { txid: 8, ..a },
            PendingQuery { port: 5353, ..a },
            PendingQuery { family: crate::AF_INET6, ..a },
            PendingQuery { question: 0xbeef, ..a },
            PendingQuery { qtype: 28, ..a },
            PendingQuery { epoch: 4, ..a },
            other_resolver,
        ] {
            assert_eq!(t.take(&wrong, 2_000), None, "{wrong:?}");
        }
        assert_eq!(t.take(&a, 1_000 + QUERY_WINDOW_NS), None, "expired");
        assert!(t.take(&a, 1_000 + QUERY_WINDOW_NS - 1).is_some());
    }

    #[test]
    fn a_seventeenth_query_overwrites_the_oldest() {
        let mut t = PendingQueries::default();
        for id in 0..=PENDING_QUERIES as u16 {
            t.record(query(id, 1_000 + u64::from(id)));
        }
        assert_eq!(t.take(&query(0, 0), 2_000), None, "the oldest was overwritten");
        for id in 1..=PENDING_QUERIES as u16 {
            assert!(t.take(&query(id, 0), 2_000).is_some(), "query {id}");
        }
    }
}
