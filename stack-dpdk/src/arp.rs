//! ARP replies and IPv6 neighbour advertisements shared between the queues of one port.
//!
//! Every worker runs its own smoltcp interface (same MAC, same IPv4 address) on its own queue
//! pair, and each interface keeps its own neighbour cache. A device that spreads frames by RSS
//! cannot hash ARP (it is not IP), so every ARP frame lands on one queue, usually queue 0: a
//! worker on another queue would send ARP requests whose replies never reach its interface.
//! The worker that receives an ARP reply therefore hands a copy of it to every other queue of
//! the port, whose interface learns the neighbour from it as if it had arrived there. Requests
//! are not shared: every interface would answer them. ARP is rare (a few frames per neighbour
//! per minute), so the copy costs nothing that matters; a full inbox drops the copy (ARP
//! retries). IPv6 neighbour discovery has the same shape: a device hashes the ICMPv6
//! advertisement by its addresses alone, so it may land on a queue other than the one whose
//! interface solicited it; advertisements are shared the same way.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// Ethertype of ARP.
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
/// ARP operation codes (bytes 6..8 of the ARP header, after the 14-byte Ethernet header).
const OP_REQUEST: [u8; 2] = [0, 1];
const OP_REPLY: [u8; 2] = [0, 2];
/// Ethernet header + the ARP header up to and including the operation code.
const ARP_OP_END: usize = 14 + 8;
/// Copies waiting for one queue beyond this are dropped.
const INBOX_LIMIT: usize = 16;

/// The ARP operation of an Ethernet frame, if it is an ARP frame long enough to carry one.
fn arp_op(frame: &[u8]) -> Option<[u8; 2]> {
    if frame.len() < ARP_OP_END || frame[12..14] != ETHERTYPE_ARP {
        return None;
    }
    Some([frame[20], frame[21]])
}

/// True for an ARP reply.
pub(crate) fn is_arp_reply(frame: &[u8]) -> bool {
    arp_op(frame) == Some(OP_REPLY)
}

/// Ethertype of IPv6.
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
/// IPv6 next header of ICMPv6, and the ICMPv6 type of a neighbour advertisement.
const NEXT_ICMPV6: u8 = 58;
const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;
/// Ethernet + IPv6 header + the 24-byte advertisement without options.
const NA_MIN: usize = 14 + 40 + 24;

/// True for an IPv6 neighbour advertisement (ICMPv6 right behind the IPv6 header, as
/// neighbour discovery sends it).
pub(crate) fn is_neighbor_advert(frame: &[u8]) -> bool {
    frame.len() >= NA_MIN
        && frame[12..14] == ETHERTYPE_IPV6
        && frame[14 + 6] == NEXT_ICMPV6
        && frame[14 + 40] == ICMPV6_NEIGHBOR_ADVERT
}

/// True for a frame other queues' interfaces learn a neighbour from: an ARP reply or an
/// IPv6 neighbour advertisement.
pub(crate) fn is_neighbor_reply(frame: &[u8]) -> bool {
    is_arp_reply(frame) || is_neighbor_advert(frame)
}

/// True for an ARP request.
pub(crate) fn is_arp_request(frame: &[u8]) -> bool {
    arp_op(frame) == Some(OP_REQUEST)
}

/// One inbox of shared ARP replies per queue of a port.
#[derive(Debug)]
pub(crate) struct ArpShare {
    inboxes: Vec<Inbox>,
}

#[derive(Debug, Default)]
struct Inbox {
    /// Set while `frames` is not empty, so an idle poll round checks a flag, not a lock.
    pending: AtomicBool,
    frames: Mutex<Vec<Vec<u8>>>,
}

impl ArpShare {
    /// Inboxes for `queues` queues.
    pub(crate) fn new(queues: u16) -> ArpShare {
        ArpShare {
            inboxes: (0..queues).map(|_| Inbox::default()).collect(),
        }
    }

    /// Hands a copy of `frame` (an ARP reply received on queue `from`) to every other queue.
    /// Returns how many queues got it.
    pub(crate) fn share(&self, from: u16, frame: &[u8]) -> usize {
        let mut n = 0;
        for (q, inbox) in self.inboxes.iter().enumerate() {
            if q == usize::from(from) {
                continue;
            }
            let mut frames = inbox.frames.lock();
            if frames.len() < INBOX_LIMIT {
                frames.push(frame.to_vec());
                inbox.pending.store(true, Ordering::Release);
                n += 1;
            }
        }
        n
    }

    /// Moves the replies waiting for `queue` into `out`.
    pub(crate) fn take(&self, queue: u16, out: &mut Vec<Vec<u8>>) {
        let Some(inbox) = self.inboxes.get(usize::from(queue)) else {
            return;
        };
        if !inbox.pending.load(Ordering::Acquire) {
            return;
        }
        let mut frames = inbox.frames.lock();
        inbox.pending.store(false, Ordering::Release);
        out.append(&mut frames);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arp(op: u8) -> Vec<u8> {
        let mut f = vec![0u8; 42];
        f[12..14].copy_from_slice(&ETHERTYPE_ARP);
        f[21] = op;
        f
    }

    #[test]
    fn replies_go_to_every_other_queue_and_only_there() {
        let s = ArpShare::new(3);
        assert!(is_arp_reply(&arp(2)) && !is_arp_request(&arp(2)));
        assert!(is_arp_request(&arp(1)) && !is_arp_reply(&arp(1)));
        assert!(
            !is_arp_reply(&arp(2)[..21]),
            "too short to carry an operation"
        );
        let mut ipv4 = arp(2);
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert!(!is_arp_reply(&ipv4));
        assert_eq!(s.share(0, &arp(2)), 2);
        let mut out = Vec::new();
        s.take(0, &mut out);
        assert!(out.is_empty(), "not back to the queue it came from");
        s.take(1, &mut out);
        s.take(2, &mut out);
        assert_eq!(out, vec![arp(2), arp(2)]);
        s.take(1, &mut out);
        assert_eq!(out.len(), 2, "taken once");
        s.take(7, &mut out);
        assert_eq!(out.len(), 2, "no such queue");
    }

    #[test]
    fn neighbor_advertisements_are_recognised() {
        let mut na = vec![0u8; NA_MIN];
        na[12..14].copy_from_slice(&ETHERTYPE_IPV6);
        na[14 + 6] = NEXT_ICMPV6;
        na[14 + 40] = ICMPV6_NEIGHBOR_ADVERT;
        assert!(is_neighbor_advert(&na) && is_neighbor_reply(&na));
        assert!(is_neighbor_reply(&arp(2)) && !is_neighbor_reply(&arp(1)));
        assert!(!is_neighbor_advert(&na[..NA_MIN - 1]), "too short");
        let mut solicit = na.clone();
        solicit[14 + 40] = 135;
        assert!(!is_neighbor_advert(&solicit));
        let mut tcp = na.clone();
        tcp[14 + 6] = 6;
        assert!(!is_neighbor_advert(&tcp));
    }

    #[test]
    fn a_full_inbox_drops_the_copy() {
        let s = ArpShare::new(2);
        let shared: usize = (0..INBOX_LIMIT + 5).map(|_| s.share(0, &arp(2))).sum();
        assert_eq!(shared, INBOX_LIMIT);
        let mut out = Vec::new();
        s.take(1, &mut out);
        assert_eq!(out.len(), INBOX_LIMIT);
    }
}
