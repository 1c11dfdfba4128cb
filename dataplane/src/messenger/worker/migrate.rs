//! Sessions that move between workers: a lossless client reconnects, and the stack bound its
//! new socket to another worker than the one owning the session
//! ([`ConnectedSocket::home_worker`](crate::stack::ConnectedSocket::home_worker)). The session
//! follows the socket (Ceph's ProtocolV2 `reuse_connection`): the old owner detaches it and
//! sends it with the new socket to the socket's worker, and the connection's route worker
//! forwards every later command there. See [`Moved`] for why order is kept.

use super::{close_socket, Adopt, Command, ConnState, Entry, Migrate, Moved, Worker};
use crate::counters::Counters;

use std::sync::atomic::Ordering;

impl Worker {
    /// A command for a connection we do not own but know moved: forward or hold it.
    pub(super) fn divert(&mut self, id: u64, cmd: Command) {
        match self.moved.get_mut(&id) {
            Some(Moved::Forward(w)) => {
                let w = *w;
                self.send_to(w, cmd);
            }
            Some(Moved::Awaiting(held)) => held.push(cmd),
            None => self.on_command(cmd),
        }
    }

    /// Pushes a command to worker `w` after every command queued for other workers before
    /// it (so a worker's forwards keep their order), without ever blocking on a full ring.
    pub(super) fn send_to(&mut self, w: usize, cmd: Command) {
        if w == self.index || w >= self.shared.workers.len() {
            // Never sent to ourselves; handled here rather than lost if it were.
            return self.on_command(cmd);
        }
        self.outbox.push_back((w, cmd));
        self.flush_outbox();
    }

    /// Pushes queued commands to their workers, in order, until a ring is full.
    pub(super) fn flush_outbox(&mut self) {
        while let Some((w, cmd)) = self.outbox.pop_front() {
            let h = &self.shared.workers[w];
            match h.ring.push(cmd) {
                Ok(()) => {
                    h.doorbell.ring();
                }
                Err(cmd) => {
                    h.doorbell.ring();
                    self.outbox.push_front((w, cmd));
                    return;
                }
            }
        }
    }

    /// An accepted socket for a session: adopt it here, or send it (and maybe the session)
    /// where it belongs. Runs on the connection's route worker first (that is where
    /// `accept_session` sends it), then wherever the route worker passes it on.
    pub(super) fn on_adopt(&mut self, a: Adopt) {
        let id = a.conn.id();
        let workers = self.shared.workers.len();
        let home = a.socket.home_worker().filter(|&h| h < workers);
        let is_route = a.conn.worker_index() == Some(self.index);
        if self.by_id.contains_key(&id) {
            return match home {
                Some(h) if h != self.index => self.migrate_out(id, h, a),
                _ => self.adopt_here(a),
            };
        }
        match self.moved.get(&id) {
            Some(Moved::Awaiting(_)) => {
                // The session is on its way here: the socket waits behind earlier commands.
                if let Some(Moved::Awaiting(held)) = self.moved.get_mut(&id) {
                    held.push(Command::Adopt(Box::new(a)));
                }
                return;
            }
            Some(&Moved::Forward(owner)) => {
                // We are the route worker; the session lives at `owner`.
                if let Some(h) = home.filter(|&h| h != owner) {
                    if h == self.index {
                        self.moved.insert(id, Moved::Awaiting(Vec::new()));
                    } else {
                        self.send_to(h, Command::Expect { conn: id });
                        self.moved.insert(id, Moved::Forward(h));
                    }
                }
                return self.send_to(owner, Command::Adopt(Box::new(a)));
            }
            None => {}
        }
        match home {
            Some(h) if h != self.index => {
                let cmd = if is_route {
                    // The session closed before its client came back: a new one, at home.
                    Command::Adopt(Box::new(a))
                } else {
                    // We were asked to hand the session over but it closed meanwhile; the
                    // home worker expects an answer.
                    Command::Migrate(Box::new(Migrate {
                        state: None,
                        adopt: a,
                    }))
                };
                self.send_to(h, cmd);
            }
            _ => self.adopt_here(a),
        }
    }

    /// Detaches session `id` (closing its stale transport, as `adopt_here` would) and sends
    /// it with the client's new socket to worker `to`, the socket's home.
    fn migrate_out(&mut self, id: u64, to: usize, a: Adopt) {
        let Some(t) = self.by_id.remove(&id) else {
            return;
        };
        if self.last_lookup.0 == id {
            self.last_lookup = (0, 0);
        }
        let Some(Entry::Conn(mut st)) = self.entries.try_remove(t) else {
            return;
        };
        // Timers and retry lists are keyed by token; a timer still due for `t` finds either
        // nothing or a later entry, which re-checks its own deadlines.
        self.dirty.retain(|&x| x != t);
        self.timers_due.retain(|&x| x != t);
        self.read_again.retain(|&x| x != t);
        self.read_blocked.retain(|&x| x != t);
        if let Some(old) = st.socket.take() {
            close_socket(self.center.registry(), old);
            st.session.on_fault(false);
        }
        st.decoder = super::new_decoder(self.shared.limits, self.checked);
        st.connecting = false;
        st.connect_deadline = None;
        st.timer_at = None;
        st.read_delay = None;
        st.dirty = false;
        st.timer_due = false;
        st.write_blocked = false;
        self.shared.workers[self.index]
            .load
            .fetch_sub(1, Ordering::Relaxed);
        self.shared.workers[to].load.fetch_add(1, Ordering::Relaxed);
        Counters::add(&self.shared.counters.sessions_migrated, 1);
        tracing::info!(
            worker = self.index,
            to,
            conn = id,
            peer = %st.handle.peer_name().unwrap_or_default(),
            "session migrated to the worker of its client's new socket"
        );
        if st.handle.worker_index() == Some(self.index) {
            self.moved.insert(id, Moved::Forward(to));
        }
        self.send_to(
            to,
            Command::Migrate(Box::new(Migrate {
                state: Some(st),
                adopt: a,
            })),
        );
    }

    /// Installs a migrated session, adopts the new socket, then replays the commands held
    /// for it while it travelled.
    pub(super) fn on_migrate(&mut self, m: Migrate) {
        let id = m.adopt.conn.id();
        let held = match self.moved.remove(&id) {
            Some(Moved::Awaiting(held)) => held,
            Some(Moved::Forward(_)) | None => Vec::new(),
        };
        if let Some(st) = m.state {
            self.install(st);
        }
        self.adopt_here(m.adopt);
        for c in held {
            self.on_command(c);
        }
    }

    /// Makes a migrated session ours; `adopt_here` then registers its socket and re-arms its
    /// timers.
    fn install(&mut self, st: Box<ConnState>) {
        let id = st.handle.id();
        if let Some(t) = self.by_id.get(&id).copied() {
            // Cannot happen (a session lives on one worker); keep the one we have.
            tracing::error!(
                worker = self.index,
                conn = id,
                token = t,
                "migrated session already here"
            );
            return;
        }
        let t = self.entries.insert(Entry::Conn(st));
        self.by_id.insert(id, t);
    }
}

#[cfg(test)]
mod tests {
    //! The forwarding entries and held commands without a network: a stack that never
    //! listens or connects, and sockets that take every byte and never have any to read.
    //! Accepted sockets are handed straight to the route worker with the home the test
    //! chooses, back to back, so migrations overlap (a session is still on its way when the
    //! next socket arrives) in ways real reconnects (milliseconds apart) rarely produce.

    use std::io;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use parking_lot::Mutex;

    use super::super::{Adopt, Command};
    use crate::buf::Buf;
    use crate::config::Config;
    use crate::messenger::protocol::FrameDecoder;
    use crate::messenger::{Connection, Dispatcher, Message, Messenger};
    use crate::stack::testing::Sink;
    use crate::stack::{
        ConnectedSocket, NetworkStack, ServerSocket, SocketOptions, StackError, StackWorker,
    };
    use crate::wire::{Hello, HelloStatus};

    struct NoNet;
    struct NoNetWorker;

    impl NetworkStack for NoNet {
        fn name(&self) -> &'static str {
            "posix"
        }
        fn create_worker(&self, _: usize) -> Result<Box<dyn StackWorker>, StackError> {
            Ok(Box::new(NoNetWorker))
        }
    }

    impl StackWorker for NoNetWorker {
        fn listen(
            &mut self,
            addr: SocketAddr,
            _: &SocketOptions,
        ) -> Result<Box<dyn ServerSocket>, StackError> {
            Err(StackError::Bind {
                addr,
                source: io::Error::other("no network"),
            })
        }
        fn connect(
            &mut self,
            addr: SocketAddr,
            _: &SocketOptions,
        ) -> Result<Box<dyn ConnectedSocket>, StackError> {
            Err(StackError::Connect {
                addr,
                source: io::Error::other("no network"),
            })
        }
    }

    struct Nothing;
    impl Dispatcher for Nothing {
        fn dispatch(&self, _: &Connection, _: Message) {}
    }

    const MARK: &[u8; 4] = b"MIG!";

    /// Indices of the test messages in a byte stream, in order (payload: MARK, u64 LE, MARK).
    fn indices(bytes: &[u8]) -> Vec<u64> {
        let mut v = Vec::new();
        let mut i = 0;
        while i + 16 <= bytes.len() {
            if &bytes[i..i + 4] == MARK && &bytes[i + 12..i + 16] == MARK {
                let n = u64::from_le_bytes(bytes[i + 4..i + 12].try_into().unwrap());
                v.push(n);
                i += 16;
            } else {
                i += 1;
            }
        }
        v
    }

    #[test]
    fn overlapping_migrations_keep_every_command_in_order() {
        const WORKERS: usize = 4;
        const N: u64 = 8_000;
        let m = Messenger::builder("server")
            .config(Config {
                workers: WORKERS,
                hugepages: false,
                rx_buffers: 16,
                ..Config::default()
            })
            .stack(Arc::new(NoNet))
            .dispatcher(Arc::new(Nothing))
            .build()
            .unwrap();
        m.start().unwrap();
        let shared = m.shared.clone();
        let hello = Hello {
            proto_version: 1,
            entity_type: 0,
            status: HelloStatus::Ok,
            features: 0,
            required: 0,
            session_id: 77,
            connect_seq: 1,
            in_seq: 0,
            lossless: true,
            addr: None,
            name: "client".into(),
            lane: 0,
            conn_tag: 0,
        };
        // Homes jump around: back to the route worker (0), to a worker the session is still
        // travelling to, away and back while a previous move is unfinished (x, h, z, h).
        let mut homes = vec![0usize, 3, 1, 2, 1, 2, 3, 2, 1, 0, 3, 0, 1, 3, 1, 2];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while homes.len() < 160 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            homes.push((x >> 33) as usize % WORKERS);
        }
        let mut sinks = Vec::new();
        let conn = shared.session_for(&hello, Some(homes[0])).unwrap();
        assert_eq!(conn.worker_index(), Some(0));
        let per_socket = N / homes.len() as u64;
        let mut next = 0u64;
        for (k, &home) in homes.iter().enumerate() {
            let out = Arc::new(Mutex::new(Vec::new()));
            let shut = Arc::new(AtomicBool::new(false));
            sinks.push((out.clone(), shut.clone()));
            let a = Adopt {
                socket: Box::new(Sink {
                    home: Some(home),
                    out,
                    cap: usize::MAX,
                    shut,
                }),
                decoder: FrameDecoder::new(shared.limits),
                hello: Hello {
                    connect_seq: k as u64 + 1,
                    ..hello.clone()
                },
                conn: shared.session_for(&hello, Some(home)).unwrap(),
                sealer: None,
            };
            assert!(shared.push_command(0, Command::Adopt(Box::new(a))));
            // Messages pushed right behind each socket, through the application's handle:
            // one by one, or (every other socket) as one batch, which travels as a record
            // block (`Command::SendRecords`).
            let mark = |i: u64| {
                let mut p = Vec::with_capacity(16);
                p.extend_from_slice(MARK);
                p.extend_from_slice(&i.to_le_bytes());
                p.extend_from_slice(MARK);
                Message::new(1, Buf::from_vec(p))
            };
            if k % 2 == 0 {
                let mut batch: Vec<Message> = (next..next + per_socket).map(mark).collect();
                loop {
                    match conn.send_batch(batch) {
                        Ok(()) => break,
                        Err(e) => {
                            batch = e.messages;
                            std::thread::yield_now();
                        }
                    }
                }
                next += per_socket;
            } else {
                for _ in 0..per_socket {
                    let mut msg = mark(next);
                    loop {
                        match conn.send(msg) {
                            Ok(()) => break,
                            Err(e) => {
                                msg = e.message;
                                std::thread::yield_now();
                            }
                        }
                    }
                    next += 1;
                }
            }
        }
        let total = next;
        // The client never acknowledges, so the last socket carries every message, each
        // once, in the order it was sent; every earlier socket was closed.
        let (last, _) = sinks.last().unwrap().clone();
        let end = Instant::now() + Duration::from_secs(30);
        while indices(&last.lock()).len() < total as usize && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(2));
        }
        let got = indices(&last.lock());
        let first_wrong = got.iter().zip(0..).position(|(&g, i)| g != i);
        assert!(
            got.len() as u64 == total && first_wrong.is_none(),
            "last socket: {} of {total} messages, first out of place at {first_wrong:?} ({:?})",
            got.len(),
            first_wrong.map(|i| &got[i..(i + 5).min(got.len())])
        );
        for (i, (_, shut)) in sinks.iter().enumerate().take(sinks.len() - 1) {
            assert!(shut.load(Ordering::Acquire), "socket {i} closed");
        }
        let c = m.counters();
        let moves = homes.windows(2).filter(|w| w[0] != w[1]).count() as u64;
        assert_eq!(c.sessions_migrated, moves, "{c:?}");
        assert_eq!(c.dropped, 0, "{c:?}");
        let loads = m.worker_loads();
        assert_eq!(loads[*homes.last().unwrap()], 1, "{loads:?}");
        assert_eq!(loads.iter().sum::<usize>(), 1, "{loads:?}");
        // Closing the session drops every forwarding entry.
        conn.mark_down();
        let end = Instant::now() + Duration::from_secs(10);
        while m.forwarding_entries().iter().sum::<usize>() > 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(m.forwarding_entries(), vec![0; WORKERS]);
        assert!(conn.is_closed());
    }
}
