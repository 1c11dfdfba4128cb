//! Sessions that move between workers: a lossless client reconnects, and the stack bound its
//! new socket to another worker than the one owning the session
//! ([`ConnectedSocket::home_worker`](crate::stack::ConnectedSocket::home_worker)). The session
//! follows the socket (Ceph's ProtocolV2 `reuse_connection`): the old owner detaches it and
//! sends it with the new socket to the socket's worker, and the connection's route worker
//! forwards every later command there. See [`Moved`] for why order is kept.

use super::{close_socket, Adopt, Command, ConnState, Entry, Migrate, Moved, Worker};
use crate::counters::Counters;
use crate::messenger::protocol::FrameDecoder;

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
        self.read_again.retain(|&x| x != t);
        self.read_blocked.retain(|&x| x != t);
        if let Some(old) = st.socket.take() {
            close_socket(self.center.registry(), old);
            st.session.on_fault(false);
        }
        st.decoder = FrameDecoder::new(self.shared.limits);
        st.connecting = false;
        st.connect_deadline = None;
        st.timer_at = None;
        st.read_delay = None;
        st.dirty = false;
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
