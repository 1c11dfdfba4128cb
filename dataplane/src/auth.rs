//! Mutual authentication: keys, keyrings and HMAC-SHA256 challenge-response proofs.
//!
//! Each side proves it knows the key without sending it: the acceptor answers the
//! connector's nonce with its own nonce and `proof_s`; the connector checks it and answers
//! with `proof_c`:
//!
//! ```text
//! proof_s = HMAC-SHA256(key, "dataplane-auth-v1 server" || nonce_c || nonce_s || client_name)
//! proof_c = HMAC-SHA256(key, "dataplane-auth-v1 client" || nonce_c || nonce_s || client_name)
//! ```
//!
//! Fresh random nonces from both sides defeat replay; the role labels defeat reflection.
//! The key is the connector's entity key from the keyring, or else the cluster key. Proofs
//! are compared in constant time. Keys never appear in `Debug` output or logs.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::Error;

type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted (bytes).
pub const MIN_KEY_LEN: usize = 16;

/// Authentication settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared cluster key, hex encoded (empty: none). Prefer `keyring_file` over putting a
    /// key in a configuration file that many can read.
    pub cluster_key: String,
    /// Keyring file (empty: none): TOML with hex keys, `cluster = "…"` and an `[entities]`
    /// table of per-entity keys, `"client.1" = "…"`.
    pub keyring_file: String,
    /// Refuse peers that cannot authenticate (effective only when a key is configured;
    /// default true: a messenger with a key lets in only peers that prove they have it).
    pub required: bool,
    /// `crc` (default): frames carry crc32c against corruption. `secure`: every frame after
    /// the handshake is sealed with AES-128-GCM under per-connection keys (needs a key;
    /// implies `required`; peers must be in secure mode too).
    pub mode: Mode,
    /// Secure mode: cut and re-key a connection after it sealed this many frames in one
    /// direction (default 2^32).
    pub rekey_after_frames: u64,
}

/// Protection of frames on the wire, as in Ceph msgr2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// crc32c on every header and payload: detects corruption, not forgery.
    #[default]
    Crc,
    /// AES-128-GCM on every frame: confidentiality and integrity against an attacker on
    /// the wire.
    Secure,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            cluster_key: String::new(),
            keyring_file: String::new(),
            required: true,
            mode: Mode::Crc,
            rekey_after_frames: crate::secure::DEFAULT_REKEY_AFTER_FRAMES,
        }
    }
}

/// A secret key. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(<{} bytes redacted>)", self.0.len())
    }
}

impl Key {
    /// Parses a hex-encoded key of at least [`MIN_KEY_LEN`] bytes.
    pub fn from_hex(hex_key: &str) -> Result<Key, Error> {
        let bytes = hex::decode(hex_key.trim())
            .map_err(|e| Error::Config(format!("auth key is not valid hex: {e}")))?;
        if bytes.len() < MIN_KEY_LEN {
            return Err(Error::Config(format!(
                "auth key has {} bytes, at least {MIN_KEY_LEN} are required",
                bytes.len()
            )));
        }
        Ok(Key(bytes))
    }

    /// The key bytes, for deriving session keys. Never log them.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    entities: HashMap<String, String>,
}

/// The keys a messenger authenticates with.
#[derive(Clone, Default)]
pub struct Keyring {
    cluster: Option<Key>,
    entities: HashMap<String, Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.entities.keys().collect();
        names.sort();
        f.debug_struct("Keyring")
            .field("cluster_key", &self.cluster.is_some())
            .field("entities", &names)
            .finish()
    }
}

impl Keyring {
    /// A keyring with only a cluster key.
    pub fn with_cluster_key(key: Key) -> Keyring {
        Keyring {
            cluster: Some(key),
            entities: HashMap::new(),
        }
    }

    /// Adds a per-entity key.
    pub fn insert(&mut self, entity: &str, key: Key) {
        self.entities.insert(entity.to_owned(), key);
    }

    /// Loads the keys a configuration names; `None` when it names none.
    pub fn from_config(cfg: &AuthConfig) -> Result<Option<Keyring>, Error> {
        let mut ring = Keyring::default();
        if !cfg.cluster_key.is_empty() {
            ring.cluster = Some(Key::from_hex(&cfg.cluster_key)?);
        }
        if !cfg.keyring_file.is_empty() {
            let path = Path::new(&cfg.keyring_file);
            let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
                what: format!("reading keyring {}", path.display()),
                source,
            })?;
            let file: KeyringFile = toml::from_str(&text).map_err(|e| {
                // The parser's message may quote the offending line: keep only its position.
                let at = e
                    .span()
                    .map(|s| format!(" at byte {}", s.start))
                    .unwrap_or_default();
                Error::Config(format!("keyring {} is malformed{at}", path.display()))
            })?;
            if let Some(c) = file.cluster {
                ring.cluster = Some(Key::from_hex(&c)?);
            }
            for (name, k) in file.entities {
                let key = Key::from_hex(&k)
                    .map_err(|e| Error::Config(format!("keyring entry for {name}: {e}")))?;
                ring.entities.insert(name, key);
            }
        }
        if ring.cluster.is_none() && ring.entities.is_empty() {
            return Ok(None);
        }
        Ok(Some(ring))
    }

    /// The key that authenticates connector `entity`: its own key, else the cluster key.
    pub fn key_for(&self, entity: &str) -> Option<&Key> {
        self.entities.get(entity).or(self.cluster.as_ref())
    }
}

/// Which side a proof speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The acceptor.
    Server,
    /// The connector.
    Client,
}

fn mac(key: &Key, side: Side, nonce_c: &[u8; 32], nonce_s: &[u8; 32], client: &str) -> HmacSha256 {
    // HMAC accepts keys of any length; construction cannot fail.
    let mut m = match <HmacSha256 as Mac>::new_from_slice(&key.0) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(match side {
        Side::Server => b"dataplane-auth-v1 server",
        Side::Client => b"dataplane-auth-v1 client",
    });
    m.update(nonce_c);
    m.update(nonce_s);
    m.update(client.as_bytes());
    m
}

/// Computes `side`'s proof.
pub fn proof(
    key: &Key,
    side: Side,
    nonce_c: &[u8; 32],
    nonce_s: &[u8; 32],
    client: &str,
) -> [u8; 32] {
    mac(key, side, nonce_c, nonce_s, client)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks `side`'s proof in constant time.
pub fn verify(
    key: &Key,
    side: Side,
    nonce_c: &[u8; 32],
    nonce_s: &[u8; 32],
    client: &str,
    proof: &[u8; 32],
) -> bool {
    mac(key, side, nonce_c, nonce_s, client)
        .verify_slice(proof)
        .is_ok()
}

/// A fresh random nonce.
pub fn nonce() -> [u8; 32] {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key(vec![b; 32])
    }

    #[test]
    fn proofs_verify_only_with_the_same_key_side_nonces_and_name() {
        let (c, s) = (nonce(), nonce());
        let p = proof(&key(1), Side::Server, &c, &s, "client.1");
        assert!(verify(&key(1), Side::Server, &c, &s, "client.1", &p));
        assert!(!verify(&key(2), Side::Server, &c, &s, "client.1", &p));
        assert!(
            !verify(&key(1), Side::Client, &c, &s, "client.1", &p),
            "no reflection"
        );
        assert!(!verify(&key(1), Side::Server, &s, &c, "client.1", &p));
        assert!(
            !verify(&key(1), Side::Server, &c, &nonce(), "client.1", &p),
            "no replay"
        );
        assert!(!verify(&key(1), Side::Server, &c, &s, "client.2", &p));
    }

    #[test]
    fn keys_never_show_in_debug() {
        let hex_key = "00112233445566778899aabbccddeeff";
        let k = Key::from_hex(hex_key).unwrap();
        let ring = Keyring::with_cluster_key(k.clone());
        for text in [format!("{k:?}"), format!("{ring:?}")] {
            assert!(!text.contains("0011") && !text.contains("17, 34"), "{text}");
        }
        let cfg = AuthConfig {
            cluster_key: hex_key.into(),
            ..AuthConfig::default()
        };
        // The configuration holds the hex text; keep it out of error messages too.
        let e = Key::from_hex("zz").unwrap_err().to_string();
        assert!(!e.contains(&cfg.cluster_key));
    }

    #[test]
    fn short_or_bad_keys_are_refused() {
        assert!(Key::from_hex("0011").is_err());
        assert!(Key::from_hex("not hex at all, clearly").is_err());
    }

    #[test]
    fn keyring_file_per_entity_then_cluster() {
        let dir = std::env::temp_dir().join(format!("dp-keyring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keyring.toml");
        std::fs::write(
            &path,
            "cluster = \"00000000000000000000000000000001\"\n[entities]\n\"client.1\" = \"11111111111111111111111111111111\"\n",
        )
        .unwrap();
        let cfg = AuthConfig {
            keyring_file: path.display().to_string(),
            ..AuthConfig::default()
        };
        let ring = Keyring::from_config(&cfg).unwrap().unwrap();
        assert_eq!(ring.key_for("client.1"), Some(&Key(vec![0x11; 16])));
        assert_eq!(ring.key_for("other").map(|k| k.0[15]), Some(1));
        std::fs::write(&path, "cluster = \"SECRETSECRET\"\nbogus = 1\n").unwrap();
        let e = Keyring::from_config(&cfg).unwrap_err().to_string();
        assert!(!e.contains("SECRET"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_keys_is_none() {
        assert!(Keyring::from_config(&AuthConfig::default())
            .unwrap()
            .is_none());
    }
}
