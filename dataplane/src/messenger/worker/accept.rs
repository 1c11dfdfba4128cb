//! The accepting side of a worker: listening sockets, and accepted sockets until their
//! handshake (and authentication, when both sides have keys) is complete. Authentication
//! finishes here, before the connection is matched to any session, so a peer that cannot
//! prove the key never reaches the dispatcher or an existing session.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::time::Instant;

use mio::Token;

use super::{close_socket, Adopt, Command, Entry, Worker};
use crate::auth::{self, Key, Side};
use crate::counters::Counters;
use crate::messenger::protocol::{Fault, Frame, FrameDecoder, Guard, Session, TxFrame, TxKind};
use crate::secure::{self, Sealer, SessionKeys};
use crate::stack::ConnectedSocket;
use crate::wire::{
    self, FrameHead, Hello, HelloStatus, Tag, WireError, FEATURE_AUTH, FEATURE_SECURE,
};

/// An accepted socket before its handshake finished.
pub(super) struct Pending {
    pub(super) socket: Box<dyn ConnectedSocket>,
    pub(super) decoder: FrameDecoder,
    pub(super) peer: SocketAddr,
    pub(super) deadline: Instant,
    pub(super) stage: PendingStage,
    /// Injected delay: reads are held back until then.
    pub(super) read_delay: Option<Instant>,
}

/// Where an accepted socket is in the handshake. Authentication completes here, before any
/// session is looked up, so an unauthenticated peer can never touch an existing session.
pub(super) enum PendingStage {
    /// Waiting for the hello.
    Hello,
    /// Both sides authenticate: waiting for the client's nonce. `digest` is the SHA-256 of
    /// the client's hello body, bound into the secure-mode keys.
    Nonce { hello: Box<Hello>, digest: [u8; 32] },
    /// Challenge sent: waiting for the client's proof.
    Proof {
        hello: Box<Hello>,
        digest: [u8; 32],
        nonce_c: [u8; 32],
        nonce_s: [u8; 32],
        key: Key,
    },
}

impl Worker {
    pub(super) fn accept(&mut self, t: usize) {
        loop {
            let r = match self.entries.get_mut(t) {
                Some(Entry::Listener(l)) => l.accept(&self.opts),
                _ => return,
            };
            match r {
                Ok(Some((mut socket, peer))) => {
                    let limit = self.shared.cfg.max_connections;
                    if self.shared.connection_count() + self.pending >= limit {
                        Counters::add(&self.shared.counters.refused_connections, 1);
                        tracing::debug!(%peer, limit, "connection limit reached, refusing");
                        socket.shutdown();
                        continue;
                    }
                    let e = self.entries.vacant_entry();
                    let pt = e.key();
                    if let Err(err) = socket.register(self.center.registry(), Token(pt)) {
                        tracing::warn!(%peer, error = %err, "cannot register accepted socket");
                        continue;
                    }
                    let deadline = self.now + self.shared.session_cfg.handshake_timeout;
                    e.insert(Entry::Pending(Box::new(Pending {
                        socket,
                        decoder: FrameDecoder::new(self.shared.limits),
                        peer,
                        deadline,
                        stage: PendingStage::Hello,
                        read_delay: None,
                    })));
                    self.pending += 1;
                    self.center.add_timer(deadline, pt as u64);
                    // The hello may already be there (edge-triggered: read now).
                    self.pending_readable(pt);
                }
                Ok(None) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and retry on the next readiness event.
                    tracing::error!(worker = self.index, error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    pub(super) fn pending_readable(&mut self, t: usize) {
        if self.read_held(t) {
            return;
        }
        let mut frames = Vec::new();
        loop {
            if self.inject.should_fail() {
                // An injected failure in the middle of a handshake: the socket dies here.
                Counters::add(&self.shared.counters.injected_faults, 1);
                return self.drop_pending(t);
            }
            let Some(Entry::Pending(p)) = self.entries.get_mut(t) else {
                return;
            };
            let buf = p.decoder.read_buf(&self.pool);
            match p.socket.read(buf) {
                Ok(0) => {
                    tracing::debug!(peer = %p.peer, "peer left during its handshake");
                    return self.drop_pending(t);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    p.decoder.release_idle();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(peer = %p.peer, error = %e, "read failed in handshake");
                    return self.drop_pending(t);
                }
            }
            let r = p.decoder.decode(|f| {
                frames.push(f);
                Ok(())
            });
            if let Err(fault) = r {
                let status = match &fault {
                    Fault::Wire(WireError::BadVersion { .. }) => HelloStatus::VersionMismatch,
                    _ => HelloStatus::Refused,
                };
                Counters::add(&self.shared.counters.malformed, 1);
                return self.refuse(t, status, &fault.to_string());
            }
            if self.shared.local.read().keys.is_none() {
                // A client with a key sends its nonce even to a peer without one: ignore it.
                frames.retain(|f| f.tag != Tag::Auth);
            }
            let n = frames.len();
            for (i, f) in frames.drain(..).enumerate() {
                if !self.pending_frame(t, f, i + 1 < n) {
                    return;
                }
            }
        }
    }

    /// One handshake frame of an accepted socket; `more` says other frames followed it in
    /// the same read. Returns false once the socket left the pending state (adopted, refused
    /// or dropped).
    fn pending_frame(&mut self, t: usize, f: Frame, more: bool) -> bool {
        let local = self.shared.local.read().clone();
        let Some(Entry::Pending(p)) = self.entries.get_mut(t) else {
            return false;
        };
        let stage = std::mem::replace(&mut p.stage, PendingStage::Hello);
        match (stage, f.tag) {
            (PendingStage::Hello, Tag::Hello) => {
                let hello = match wire::parse_hello(&f.front) {
                    Ok(h) => h,
                    Err(e) => {
                        Counters::add(&self.shared.counters.malformed, 1);
                        self.refuse(t, HelloStatus::Refused, &format!("bad hello: {e}"));
                        return false;
                    }
                };
                if let Err((status, reason)) = Session::check_hello(&local, &hello) {
                    self.refuse(t, status, &reason);
                    return false;
                }
                if local.features & hello.features & FEATURE_AUTH != 0 {
                    p.stage = PendingStage::Nonce {
                        hello: Box::new(hello),
                        digest: secure::hello_digest(&f.front),
                    };
                    true
                } else {
                    self.accept_session(t, hello, more, None);
                    false
                }
            }
            (PendingStage::Nonce { hello, digest }, Tag::Auth) => {
                let (body, key) = match (wire::parse_auth(&f.front), &local.keys) {
                    (Ok(b), Some(keys)) => match keys.key_for(&hello.name) {
                        Some(k) => (b, k.clone()),
                        None => {
                            self.auth_failed(t, &hello.name, "no key for this entity");
                            return false;
                        }
                    },
                    _ => {
                        self.auth_failed(t, &hello.name, "malformed auth frame");
                        return false;
                    }
                };
                let nonce_s = auth::nonce();
                let proof = auth::proof(&key, Side::Server, &body.nonce, &nonce_s, &hello.name);
                let mut stage = Vec::new();
                let head = FrameHead {
                    tag: Tag::Auth as u8,
                    ..FrameHead::default()
                };
                TxFrame::encode(
                    &mut stage,
                    head,
                    &wire::encode_auth(&nonce_s, &proof),
                    TxKind::Control,
                    &[],
                    Guard::Crc,
                );
                // A fresh socket's buffer is empty: the 108-byte challenge fits whole.
                match p.socket.writev(&[IoSlice::new(&stage)]) {
                    Ok(n) if n == stage.len() => {}
                    _ => {
                        tracing::debug!(peer = %p.peer, "could not send the auth challenge");
                        self.drop_pending(t);
                        return false;
                    }
                }
                p.stage = PendingStage::Proof {
                    hello,
                    digest,
                    nonce_c: body.nonce,
                    nonce_s,
                    key,
                };
                true
            }
            (
                PendingStage::Proof {
                    hello,
                    digest,
                    nonce_c,
                    nonce_s,
                    key,
                },
                Tag::Auth,
            ) => {
                let ok = wire::parse_auth(&f.front).is_ok_and(|b| {
                    auth::verify(
                        &key,
                        Side::Client,
                        &nonce_c,
                        &nonce_s,
                        &hello.name,
                        &b.proof,
                    )
                });
                if !ok {
                    self.auth_failed(t, &hello.name, "wrong key");
                    return false;
                }
                // Secure mode when both sides support it (each side that does requires it,
                // so the hello check already refused a mismatch). The opener starts with the
                // client's next frame; the sealer, with our hello reply.
                let sealer = (local.features & hello.features & FEATURE_SECURE != 0).then(|| {
                    let keys = SessionKeys::derive(&key, &nonce_c, &nonce_s, &digest, &hello.name);
                    let (sealer, opener) = keys.split(false, self.shared.session_cfg.secure);
                    p.decoder.set_opener(opener);
                    sealer
                });
                self.accept_session(t, *hello, more, sealer);
                false
            }
            (_, tag) => {
                Counters::add(&self.shared.counters.malformed, 1);
                self.refuse(
                    t,
                    HelloStatus::Refused,
                    &format!("unexpected {tag:?} frame in the handshake"),
                );
                false
            }
        }
    }

    fn auth_failed(&mut self, t: usize, name: &str, why: &str) {
        Counters::add(&self.shared.counters.auth_failures, 1);
        tracing::warn!(peer_name = %name, reason = why, "authentication failed");
        self.refuse(t, HelloStatus::Refused, "authentication failed");
    }

    /// The handshake (and authentication, if any) succeeded: find or create the session
    /// and hand the socket to the worker that owns it. A peer that sent more frames before
    /// our reply broke the protocol and is refused.
    fn accept_session(&mut self, t: usize, hello: Hello, more: bool, sealer: Option<Sealer>) {
        if !matches!(self.entries.get(t), Some(Entry::Pending(_))) {
            return;
        }
        if more {
            Counters::add(&self.shared.counters.malformed, 1);
            return self.refuse(
                t,
                HelloStatus::Refused,
                "frames sent before the handshake reply",
            );
        }
        // A socket bound to a worker gets its new session there; an existing session owned
        // elsewhere migrates to it (`on_adopt`, on the connection's route worker first).
        let home = match self.entries.get(t) {
            Some(Entry::Pending(p)) => p.socket.home_worker(),
            _ => None,
        }
        .filter(|&h| h < self.shared.workers.len());
        let conn = match self.shared.session_for(&hello, home) {
            Ok(c) => c,
            Err(reason) => return self.refuse(t, HelloStatus::Refused, &reason),
        };
        let Entry::Pending(p) = self.entries.remove(t) else {
            return;
        };
        self.pending -= 1;
        let Pending {
            mut socket,
            decoder,
            peer,
            ..
        } = *p;
        if let Err(e) = socket.deregister(self.center.registry()) {
            tracing::warn!(%peer, error = %e, "deregistering accepted socket");
        }
        let target = conn.worker_index().unwrap_or(self.index);
        tracing::debug!(%peer, name = %hello.name, target, ?home, "hello accepted");
        let a = Adopt {
            socket,
            decoder,
            hello,
            conn,
            sealer,
        };
        if target == self.index {
            self.on_adopt(a);
        } else {
            self.shared
                .push_command(target, Command::Adopt(Box::new(a)));
        }
    }

    /// Refuses a handshaking peer: reply with `status`, close, count.
    fn refuse(&mut self, t: usize, status: HelloStatus, reason: &str) {
        Counters::add(&self.shared.counters.handshake_failures, 1);
        let local = self.shared.local.read().clone();
        if let Some(Entry::Pending(p)) = self.entries.get_mut(t) {
            tracing::warn!(peer = %p.peer, ?status, reason, "handshake refused");
            let bytes = Session::refusal(&local, status, reason);
            let iov = [IoSlice::new(&bytes)];
            // Best effort: the peer learns why before we close.
            let _ = p.socket.writev(&iov);
        }
        self.drop_pending(t);
    }

    pub(super) fn drop_pending(&mut self, t: usize) {
        if !matches!(self.entries.get(t), Some(Entry::Pending(_))) {
            return;
        }
        if let Some(Entry::Pending(p)) = self.entries.try_remove(t) {
            self.pending -= 1;
            close_socket(self.center.registry(), p.socket);
        }
    }
}
