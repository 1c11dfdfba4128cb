//! The body of an `Auth` frame: a nonce and an HMAC-SHA256 proof, 64 bytes.
//!
//! The handshake with authentication (both sides advertise [`FEATURE_AUTH`]):
//!
//! | step | frames | auth body |
//! |---|---|---|
//! | 1, connector | `Hello`, `Auth` | nonce = client nonce, proof = zero |
//! | 2, acceptor | `Auth` | nonce = server nonce, proof = server proof |
//! | 3, connector | `Auth` | nonce = zero, proof = client proof |
//! | 4, acceptor | `HelloReply` (sealed in secure mode) | — |
//!
//! Proofs are HMAC-SHA256 over a role label, both nonces and both entity names; see
//! `dataplane::auth`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::error::WireError;

/// Feature bit: this side can authenticate (it has a key).
pub const FEATURE_AUTH: u64 = 1 << 0;

/// Feature bit: secure mode (frames sealed with AES-128-GCM after the handshake). A side
/// that advertises it also requires it, and it implies [`FEATURE_AUTH`].
pub const FEATURE_SECURE: u64 = 1 << 1;

/// Size of an auth body.
pub const AUTH_BODY_LEN: usize = 64;

/// An `Auth` frame's front segment, parsed in place.
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy, PartialEq, Eq,
)]
pub struct AuthBody {
    /// Random nonce of the sender (zero in step 3).
    pub nonce: [u8; 32],
    /// HMAC-SHA256 proof (zero in step 1).
    pub proof: [u8; 32],
}

const _: () = assert!(core::mem::size_of::<AuthBody>() == AUTH_BODY_LEN);

/// Encodes an auth body.
pub fn encode_auth(nonce: &[u8; 32], proof: &[u8; 32]) -> [u8; AUTH_BODY_LEN] {
    let mut out = [0u8; AUTH_BODY_LEN];
    out[..32].copy_from_slice(nonce);
    out[32..].copy_from_slice(proof);
    out
}

/// Parses an auth body; it must be exactly [`AUTH_BODY_LEN`] bytes.
pub fn parse_auth(front: &[u8]) -> Result<AuthBody, WireError> {
    if front.len() != AUTH_BODY_LEN {
        return Err(WireError::Truncated {
            what: "auth body",
            need: AUTH_BODY_LEN,
            have: front.len(),
        });
    }
    AuthBody::read_from_bytes(front).map_err(|_| WireError::BadHello("auth body"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_length_checked() {
        let b = encode_auth(&[1; 32], &[2; 32]);
        let a = parse_auth(&b).unwrap();
        assert_eq!(a.nonce, [1; 32]);
        assert_eq!(a.proof, [2; 32]);
        assert!(parse_auth(&b[..63]).is_err());
        let mut long = b.to_vec();
        long.push(0);
        assert!(parse_auth(&long).is_err());
    }
}
