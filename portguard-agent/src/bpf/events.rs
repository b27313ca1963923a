//! The denial/audit event stream from the kernel's ring buffer.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use portguard_common::{AF_INET, Event, Op, Transport, Verdict};
use tokio::io::unix::AsyncFd;

/// An event as the kernel sent it, with its fields decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedEvent {
    pub sock_cgroup: u64,
    pub guard_cgroup: u64,
    pub pid: u32,
    pub comm: String,
    pub generation: u64,
    pub guard_id: u32,
    pub op: Option<Op>,
    pub verdict: Option<Verdict>,
    pub proto: Transport,
    pub addr: IpAddr,
    pub port: u16,
    /// Pairs a port-lifecycle event with its close.
    pub cookie: u64,
}

impl DecodedEvent {
    pub fn decode(e: &Event) -> DecodedEvent {
        let addr = if e.family == AF_INET {
            IpAddr::V4(Ipv4Addr::new(e.addr[0], e.addr[1], e.addr[2], e.addr[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(e.addr))
        };
        let comm_len = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
        DecodedEvent {
            sock_cgroup: e.sock_cgroup,
            guard_cgroup: e.guard_cgroup,
            pid: (e.pid_tgid >> 32) as u32,
            comm: String::from_utf8_lossy(&e.comm[..comm_len]).into_owned(),
            generation: e.generation,
            guard_id: e.guard_id,
            op: Op::from_u8(e.op),
            verdict: Verdict::from_u8(e.verdict),
            proto: Transport::from(e.proto),
            addr,
            port: e.port,
            cookie: e.cookie,
        }
    }
}

/// Events read per call of [`EventStream::next_batch`].
pub const MAX_BATCH: usize = 1024;

pub struct EventStream {
    ring: AsyncFd<RingBuf<MapData>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("map {name} is missing from the eBPF object")]
    Missing { name: &'static str },
    #[error("event ring buffer: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("event ring buffer: {0}")]
    Io(#[from] io::Error),
}

impl EventStream {
    /// Denials and audits (`map_names::EVENTS`) or port-lifecycle events
    /// (`map_names::PORT_EVENTS`).
    pub fn open(ebpf: &mut Ebpf, name: &'static str) -> Result<EventStream, EventsError> {
        let map = ebpf.take_map(name).ok_or(EventsError::Missing { name })?;
        let ring = RingBuf::try_from(map)?;
        // SAFETY: the ring buffer owns its map fd, which stays open and the
        // same for as long as the RingBuf (now owned by the AsyncFd) lives.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| EventsError::Io(e.into_parts().1))?;
        Ok(EventStream { ring })
    }

    /// Waits for events and appends up to [`MAX_BATCH`] of them to `out`.
    /// The bound matters: under a flood the kernel refills the ring as fast
    /// as it is drained, and an unbounded drain would never return to the
    /// agent's loop (reloads, signals).
    pub async fn next_batch(&mut self, out: &mut Vec<DecodedEvent>) -> io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        let drained = read_batch(guard.get_inner_mut(), out);
        // Only an empty ring may wait for the next wake-up; otherwise the
        // rest is read on the next call without waiting.
        if drained {
            guard.clear_ready();
        } else {
            guard.retain_ready();
        }
        Ok(())
    }

    /// Reads what is queued now, without waiting, up to [`MAX_BATCH`]
    /// events at a time, for a ring whose producer does not always wake the
    /// reader.
    pub fn drain(&mut self, out: &mut Vec<DecodedEvent>) -> io::Result<()> {
        while !read_batch(self.ring.get_mut(), out) {}
        Ok(())
    }
}

/// Appends up to [`MAX_BATCH`] events to `out`; true when the ring is empty.
fn read_batch(ring: &mut RingBuf<MapData>, out: &mut Vec<DecodedEvent>) -> bool {
    for _ in 0..MAX_BATCH {
        let Some(item) = ring.next() else {
            return true;
        };
        if item.len() >= size_of::<Event>() {
            // SAFETY: the kernel wrote an Event (repr(C), plain integers)
            // at this position; the read tolerates any alignment.
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
            out.push(DecodedEvent::decode(&event));
        }
    }
    false
}
