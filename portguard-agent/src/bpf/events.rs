//! The event streams from the kernel's ring buffers: denials and audits,
//! and closes of ports that lived long enough (`live_ports::PortClosed`).

use std::{io, net::IpAddr};

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use portguard_common::{DecisionEvent, Op, Transport, Verdict};
use tokio::io::unix::AsyncFd;

/// A denial or audit-mode violation as the kernel reported it: the first
/// of its kind on a CPU in an interval, standing for `count` decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodedEvent {
    pub sock_cgroup: u64,
    pub guard_cgroup: u64,
    pub pid: u32,
    /// The calling thread's name, from the kernel.
    pub comm: String,
    /// The process's name (its main thread's), read when the event is
    /// read; empty when the process is gone by then.
    pub process: String,
    /// The process's executable (`/proc/<pid>/exe`), read when the event
    /// is read; empty when the process is gone by then.
    pub exe: String,
    pub generation: u64,
    pub guard_id: u32,
    pub op: Option<Op>,
    pub verdict: Option<Verdict>,
    pub proto: Transport,
    /// The peer's address (for inbound ops too).
    pub addr: IpAddr,
    /// The peer's port; for inbound ops (`Op::is_inbound`), the local port.
    pub port: u16,
    /// Inbound ops: the peer's port (0 when the packet did not show it).
    pub peer_port: u16,
    /// Inbound ops: why the packet was refused (`REASON_*`).
    pub reason: u8,
    /// Decisions of this kind this event stands for (>= 1): the kernel
    /// sends one event per kind, CPU and interval and counts the rest.
    pub count: u64,
}

/// A record type one ring buffer carries.
pub(crate) trait RingRecord: Sized {
    type Raw: Copy;
    fn decode(raw: &Self::Raw) -> Self;
}

impl RingRecord for DecodedEvent {
    type Raw = DecisionEvent;
    fn decode(e: &DecisionEvent) -> DecodedEvent {
        let pid = (e.pid_tgid >> 32) as u32;
        // Now, as early as userspace can: a short-lived process (curl, nc)
        // is often gone by the time the line is written.
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let process = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim_end().to_owned())
            .unwrap_or_default();
        DecodedEvent {
            sock_cgroup: e.sock_cgroup,
            guard_cgroup: e.guard_cgroup,
            pid,
            comm: comm(&e.comm),
            process,
            exe,
            generation: e.generation,
            guard_id: e.guard_id,
            op: Op::from_u8(e.op),
            verdict: Verdict::from_u8(e.verdict),
            proto: Transport::from(e.proto),
            addr: super::live_ports::addr(e.family, e.addr),
            port: e.port,
            peer_port: e.peer_port,
            reason: e.reason,
            count: e.count.max(1),
        }
    }
}

pub(super) fn comm(raw: &[u8; 16]) -> String {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..len]).into_owned()
}

/// Events read per call of [`EventStream::next_batch`].
pub(crate) const MAX_BATCH: usize = 1024;

pub(crate) struct EventStream<T> {
    ring: AsyncFd<RingBuf<MapData>>,
    records: std::marker::PhantomData<T>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum EventsError {
    #[error("map {name} is missing from the eBPF object")]
    Missing { name: &'static str },
    #[error("event ring buffer: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("event ring buffer: {0}")]
    Io(#[from] io::Error),
}

impl<T: RingRecord> EventStream<T> {
    /// Denials and audits (`map_names::EVENTS`) or closes of ports that
    /// lived long enough (`map_names::PORT_EVENTS`).
    pub(crate) fn open(ebpf: &mut Ebpf, name: &'static str) -> Result<EventStream<T>, EventsError> {
        let map = ebpf.take_map(name).ok_or(EventsError::Missing { name })?;
        let ring = RingBuf::try_from(map)?;
        // SAFETY: the ring buffer owns its map fd, which stays open and the
        // same for as long as the RingBuf (now owned by the AsyncFd) lives.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| EventsError::Io(e.into_parts().1))?;
        Ok(EventStream { ring, records: std::marker::PhantomData })
    }

    /// Waits for events and appends up to [`MAX_BATCH`] of them to `out`.
    /// The bound matters: under a flood the kernel refills the ring as fast
    /// as it is drained, and an unbounded drain would never return to the
    /// agent's loop (reloads, signals).
    pub(crate) async fn next_batch(&mut self, out: &mut Vec<T>) -> io::Result<()> {
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
    pub(crate) fn drain(&mut self, out: &mut Vec<T>) -> io::Result<()> {
        while !read_batch(self.ring.get_mut(), out) {}
        Ok(())
    }
}

/// Appends up to [`MAX_BATCH`] events to `out`; true when the ring is empty.
fn read_batch<T: RingRecord>(ring: &mut RingBuf<MapData>, out: &mut Vec<T>) -> bool {
    for _ in 0..MAX_BATCH {
        let Some(item) = ring.next() else {
            return true;
        };
        if item.len() >= size_of::<T::Raw>() {
            // SAFETY: the kernel wrote a T::Raw (repr(C), plain integers) at
            // this position; the read tolerates any alignment.
            let raw = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T::Raw>()) };
            out.push(T::decode(&raw));
        }
    }
    false
}
