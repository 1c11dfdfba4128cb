//! Secure mode: every frame after the handshake sealed with AES-128-GCM.
//!
//! Keys are derived per connection, once both sides have proved the shared key (see
//! [`crate::auth`]), with HKDF-SHA256:
//!
//! ```text
//! okm = HKDF-SHA256(ikm  = the authentication key,
//!                   salt = nonce_c || nonce_s,
//!                   info = "dataplane-secure-v1" || SHA-256(client hello body) || client_name)
//! key_c2s = okm[0..16]   key_s2c = okm[16..32]   salt_c2s = okm[32..36]   salt_s2c = okm[36..40]
//! ```
//!
//! Both nonces are fresh random values, so every connection (and every reconnect) has keys of
//! its own. Hashing the client's hello into the derivation binds it: a hello altered on the
//! wire gives the two sides different keys and the first sealed frame fails to open. The
//! server's hello reply is itself sealed.
//!
//! Each direction numbers its frames from 0; the AEAD nonce is `salt (4 bytes) || counter
//! (8 bytes, little-endian)`, so no nonce repeats under a key. The receiver opens frame `n`
//! with nonce `n`: a frame that was altered, dropped, replayed or reordered fails to open and
//! the connection is closed. The 40-byte preamble is the associated data (authenticated,
//! not hidden: frame kind, lengths and sequence numbers stay visible); the payload
//! (front and data) is encrypted, and a 16-byte tag replaces the crc epilogue.
//!
//! A connection is cut (and a lossless session reconnects with fresh keys) once a direction
//! has sealed [`SecureConfig::rekey_after_frames`] frames, far below where the counter could
//! wrap or AES-GCM's usage bounds come near.
//!
//! This module is sans-IO: it seals and opens byte slices in place.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce, Tag};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};

use crate::auth::Key;

/// Length of the authentication tag that ends every sealed frame.
pub const TAG_LEN: usize = 16;

/// Frames a direction may seal under one key before the connection is cut and re-keyed.
pub const DEFAULT_REKEY_AFTER_FRAMES: u64 = 1 << 32;

const INFO_LABEL: &[u8] = b"dataplane-secure-v1";

/// Tuning of secure mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecureConfig {
    /// Cut the connection (a lossless session then reconnects with fresh keys) after sealing
    /// this many frames in one direction.
    pub rekey_after_frames: u64,
}

impl Default for SecureConfig {
    fn default() -> Self {
        SecureConfig {
            rekey_after_frames: DEFAULT_REKEY_AFTER_FRAMES,
        }
    }
}

/// A frame that failed to open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "sealed frame {counter} failed authentication (altered, replayed, reordered or sealed with \
     another key)"
)]
pub struct OpenError {
    /// The frame number the receiver expected.
    pub counter: u64,
}

/// SHA-256 of a hello body, as bound into the key derivation.
pub fn hello_digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// The two directions' keys of one connection.
pub struct SessionKeys {
    c2s: Direction,
    s2c: Direction,
}

struct Direction {
    /// Boxed: the expanded key is several hundred bytes, and every session holds room for
    /// a sealer and an opener that idle or crc-mode connections never use.
    cipher: Box<Aes128Gcm>,
    salt: [u8; 4],
}

impl SessionKeys {
    /// Derives the keys of a connection from the authentication key, both nonces, the digest
    /// of the client's hello body and the client's name.
    pub fn derive(
        key: &Key,
        nonce_c: &[u8; 32],
        nonce_s: &[u8; 32],
        hello_digest: &[u8; 32],
        client: &str,
    ) -> SessionKeys {
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(nonce_c);
        salt[32..].copy_from_slice(nonce_s);
        let hk = Hkdf::<Sha256>::new(Some(&salt), key.bytes());
        let mut okm = [0u8; 40];
        // 40 bytes is far below HKDF-SHA256's limit of 255 * 32, so expand cannot fail.
        let info: [&[u8]; 3] = [INFO_LABEL, hello_digest, client.as_bytes()];
        if hk.expand_multi_info(&info, &mut okm).is_err() {
            unreachable!("HKDF output of 40 bytes is within bounds");
        }
        let dir = |k: &[u8], s: &[u8]| Direction {
            cipher: Box::new(Aes128Gcm::new(aes_gcm::Key::<Aes128Gcm>::from_slice(k))),
            salt: [s[0], s[1], s[2], s[3]],
        };
        let keys = SessionKeys {
            c2s: dir(&okm[0..16], &okm[32..36]),
            s2c: dir(&okm[16..32], &okm[36..40]),
        };
        okm.fill(0);
        keys
    }

    /// Splits into this side's sealer and opener.
    pub fn split(self, client: bool, cfg: SecureConfig) -> (Sealer, Opener) {
        let (tx, rx) = if client {
            (self.c2s, self.s2c)
        } else {
            (self.s2c, self.c2s)
        };
        (
            Sealer {
                dir: tx,
                counter: 0,
                limit: cfg.rekey_after_frames,
            },
            Opener {
                dir: rx,
                counter: 0,
            },
        )
    }
}

fn nonce(salt: &[u8; 4], counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// Seals the frames one side sends.
pub struct Sealer {
    dir: Direction,
    counter: u64,
    limit: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("counter", &self.counter)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Encrypts `payload` in place, authenticating `aad` with it, and returns the tag. Each
    /// call uses the next nonce.
    pub fn seal(&mut self, aad: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        let n = nonce(&self.dir.salt, self.counter);
        // The counter is a u64 and the connection is cut at `limit` (at most 2^32 by
        // default): at 10^8 frames a second it would take thousands of years to wrap.
        self.counter = self.counter.wrapping_add(1);
        match self
            .dir
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&n), aad, payload)
        {
            Ok(tag) => tag.into(),
            // AES-GCM refuses only payloads over 64 GiB, far beyond the frame limits.
            Err(_) => unreachable!("frame payload exceeds AES-GCM's 64 GiB bound"),
        }
    }

    /// Frames sealed so far.
    pub fn sealed(&self) -> u64 {
        self.counter
    }

    /// True once the frame budget of this key is spent: the connection must be cut.
    pub fn rekey_due(&self) -> bool {
        self.counter >= self.limit
    }
}

/// Opens the frames one side receives, in order.
pub struct Opener {
    dir: Direction,
    counter: u64,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// Checks `tag` over `aad` and the ciphertext `payload`, decrypting it in place. On
    /// failure the payload is left in an unspecified state and must not be used.
    pub fn open(&mut self, aad: &[u8], payload: &mut [u8], tag: &[u8]) -> Result<(), OpenError> {
        let counter = self.counter;
        if tag.len() != TAG_LEN {
            return Err(OpenError { counter });
        }
        let n = nonce(&self.dir.salt, counter);
        self.dir
            .cipher
            .decrypt_in_place_detached(Nonce::from_slice(&n), aad, payload, Tag::from_slice(tag))
            .map_err(|_| OpenError { counter })?;
        self.counter = counter.wrapping_add(1);
        Ok(())
    }

    /// Frames opened so far.
    pub fn opened(&self) -> u64 {
        self.counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cfg: SecureConfig) -> ((Sealer, Opener), (Sealer, Opener)) {
        let key = Key::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
        let (nc, ns, hd) = ([1u8; 32], [2u8; 32], hello_digest(b"hello"));
        let c = SessionKeys::derive(&key, &nc, &ns, &hd, "client.1").split(true, cfg);
        let s = SessionKeys::derive(&key, &nc, &ns, &hd, "client.1").split(false, cfg);
        (c, s)
    }

    #[test]
    fn round_trip_both_directions() {
        let ((mut ctx, mut crx), (mut stx, mut srx)) = pair(SecureConfig::default());
        for i in 0..10u8 {
            let plain = vec![i; 100 + usize::from(i)];
            let mut buf = plain.clone();
            let tag = ctx.seal(b"preamble", &mut buf);
            assert_ne!(buf, plain, "encrypted");
            srx.open(b"preamble", &mut buf, &tag).unwrap();
            assert_eq!(buf, plain);
            let mut back = plain.clone();
            let tag = stx.seal(b"pre", &mut back);
            crx.open(b"pre", &mut back, &tag).unwrap();
            assert_eq!(back, plain);
        }
        assert_eq!(ctx.sealed(), 10);
        assert_eq!(srx.opened(), 10);
    }

    #[test]
    fn directions_use_different_keys() {
        let ((mut ctx, _), (mut stx, _)) = pair(SecureConfig::default());
        let (mut a, mut b) = (vec![0u8; 32], vec![0u8; 32]);
        let ta = ctx.seal(b"", &mut a);
        let tb = stx.seal(b"", &mut b);
        assert_ne!(a, b);
        assert_ne!(ta, tb);
    }

    #[test]
    fn altered_replayed_or_reordered_frames_fail() {
        let ((mut tx, _), (_, mut rx)) = pair(SecureConfig::default());
        let mut f0 = b"first frame".to_vec();
        let t0 = tx.seal(b"aad0", &mut f0);
        let mut f1 = b"second frame".to_vec();
        let t1 = tx.seal(b"aad1", &mut f1);
        // Reordered: frame 1 where frame 0 is expected.
        assert_eq!(
            rx.open(b"aad1", &mut f1.clone(), &t1),
            Err(OpenError { counter: 0 })
        );
        // Altered payload, altered associated data, altered tag.
        let mut bad = f0.clone();
        bad[3] ^= 1;
        assert!(rx.open(b"aad0", &mut bad, &t0).is_err());
        assert!(rx.open(b"aad9", &mut f0.clone(), &t0).is_err());
        let mut bad_tag = t0;
        bad_tag[0] ^= 0x80;
        assert!(rx.open(b"aad0", &mut f0.clone(), &bad_tag).is_err());
        assert!(rx.open(b"aad0", &mut f0.clone(), &t0[..8]).is_err());
        // The genuine frame still opens, then a replay of it fails.
        let copy = f0.clone();
        rx.open(b"aad0", &mut f0, &t0).unwrap();
        assert_eq!(f0, b"first frame");
        assert!(rx.open(b"aad0", &mut copy.clone(), &t0).is_err());
        rx.open(b"aad1", &mut f1, &t1).unwrap();
        assert_eq!(f1, b"second frame");
    }

    #[test]
    fn keys_depend_on_every_input() {
        let key = Key::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
        let other = Key::from_hex("ff0102030405060708090a0b0c0d0e0f").unwrap();
        let (nc, ns, hd) = ([1u8; 32], [2u8; 32], hello_digest(b"hello"));
        let seal = |k: &Key, nc: &[u8; 32], ns: &[u8; 32], hd: &[u8; 32], name: &str| {
            let (mut s, _) =
                SessionKeys::derive(k, nc, ns, hd, name).split(true, SecureConfig::default());
            let mut b = [0u8; 16];
            let t = s.seal(b"", &mut b);
            (b, t)
        };
        let base = seal(&key, &nc, &ns, &hd, "c");
        assert_eq!(base, seal(&key, &nc, &ns, &hd, "c"));
        assert_ne!(base, seal(&other, &nc, &ns, &hd, "c"));
        assert_ne!(base, seal(&key, &[3; 32], &ns, &hd, "c"));
        assert_ne!(base, seal(&key, &nc, &[3; 32], &hd, "c"));
        assert_ne!(base, seal(&key, &nc, &ns, &hello_digest(b"hellO"), "c"));
        assert_ne!(base, seal(&key, &nc, &ns, &hd, "d"));
    }

    #[test]
    fn an_unused_sealer_and_opener_cost_a_session_little() {
        // Sessions hold `Option<Sealer>` and `Option<Opener>`: keep them pointer-sized plus
        // counters, not the expanded AES key.
        assert!(std::mem::size_of::<Option<Sealer>>() <= 32);
        assert!(std::mem::size_of::<Option<Opener>>() <= 32);
    }

    #[test]
    fn rekey_is_due_at_the_limit() {
        let ((mut tx, _), _) = pair(SecureConfig {
            rekey_after_frames: 3,
        });
        for _ in 0..3 {
            assert!(!tx.rekey_due());
            tx.seal(b"", &mut []);
        }
        assert!(tx.rekey_due());
    }
}
