//! In-place dispatch on real sockets: a dispatcher that takes one message type in place sees
//! every such message exactly once, in order, byte for byte, borrowed from the receive buffer
//! (batched small messages and single large ones alike), while another type on the same
//! connection still arrives as owned messages through the dispatch thread.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dataplane::{Connection, Dispatcher, Message, MessageRef};
use dataplane_test_support::payload::{body_intact, header};
use parking_lot::Mutex;

/// Takes type 1 in place and type 2 owned (on the dispatch thread); checks both.
#[derive(Default)]
struct Split {
    next: Mutex<HashMap<(u16, u32), u64>>,
    in_place: AtomicU64,
    owned: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Split {
    fn check(&self, msg_type: u16, data: &[u8]) {
        let Some((stream, seq)) = header(data) else {
            self.errors
                .lock()
                .push(format!("short message {}", data.len()));
            return;
        };
        let mut next = self.next.lock();
        let e = next.entry((msg_type, stream)).or_insert(0);
        if seq != *e || !body_intact(seq, data) {
            let mut errs = self.errors.lock();
            if errs.len() < 20 {
                errs.push(format!(
                    "type {msg_type} stream {stream}: seq {seq}, expected {e}"
                ));
            }
        }
        *e = seq + 1;
    }
}

impl Dispatcher for Split {
    fn dispatches_in_place(&self) -> bool {
        true
    }
    fn in_place(&self, msg_type: u16) -> bool {
        msg_type == 1
    }
    fn dispatch_in_place(&self, _conn: &Connection, m: MessageRef<'_>) {
        assert_eq!(m.msg_type, 1, "only type 1 is taken in place");
        self.check(m.msg_type, m.payload);
        self.in_place.fetch_add(1, Ordering::Relaxed);
    }
    fn dispatch(&self, _conn: &Connection, m: Message) {
        self.check(m.msg_type, &m.payload.to_vec());
        self.owned.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn in_place_type_exactly_once_in_order_beside_owned_messages() {
    let split = Arc::new(Split::default());
    let server = messenger("in-place-server", test_config(), split.clone(), true);
    let client = messenger("in-place-client", test_config(), Checker::fast(), false);
    let conn = client.connect(addr(&server)).unwrap();
    const N: u64 = 40_000;
    let mut owned_sent = 0;
    let mut i = 0;
    while i < N {
        // Batches of small messages (record batches on the wire), and now and then a large
        // one (a frame of its own) and an owned type-2 message between them.
        let batch: Vec<Message> = (i..(i + 200).min(N))
            .map(|s| {
                let len = if s % 97 == 0 {
                    5_000
                } else {
                    16 + (s % 200) as usize
                };
                Message::new(1, payload(0, s, len))
            })
            .collect();
        i += batch.len() as u64;
        conn.send_batch_wait(batch, Duration::from_secs(60))
            .expect("send batch");
        send_retry(&conn, Message::new(2, payload(0, owned_sent, 40)));
        owned_sent += 1;
    }
    assert!(
        wait_until(Duration::from_secs(60), || {
            split.in_place.load(Ordering::Relaxed) == N
                && split.owned.load(Ordering::Relaxed) == owned_sent
        }),
        "in place {} of {N}, owned {} of {owned_sent}",
        split.in_place.load(Ordering::Relaxed),
        split.owned.load(Ordering::Relaxed)
    );
    let errs = split.errors.lock();
    assert!(errs.is_empty(), "{errs:?}");
    let c = server.counters();
    assert_eq!(c.msgs_in, N + owned_sent, "every message counted once");
}
