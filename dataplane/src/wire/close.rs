//! The close body: the front segment of a `Close` frame.

use zerocopy::little_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::error::WireError;

/// Longest close reason text, in bytes.
pub const MAX_CLOSE_REASON: usize = 256;
/// Size of [`CloseHead`]; the reason text follows it.
pub const CLOSE_HEAD_LEN: usize = 4;

/// Fixed part of the close body as it lies on the wire: 4 bytes, little-endian.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy)]
pub struct CloseHead {
    /// Reason code (application-defined; 0 = normal shutdown by convention).
    pub code: U16,
    /// Length of the UTF-8 reason text that follows, at most [`MAX_CLOSE_REASON`].
    pub text_len: U16,
}

const _: () = assert!(core::mem::size_of::<CloseHead>() == CLOSE_HEAD_LEN);

/// Contents of a close body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Close {
    /// Reason code.
    pub code: u16,
    /// Human-readable reason, at most [`MAX_CLOSE_REASON`] bytes on the wire.
    pub reason: String,
}

/// Encodes a close body. A reason longer than [`MAX_CLOSE_REASON`] bytes is
/// truncated to the longest prefix that fits and ends on a char boundary.
pub fn encode_close(c: &Close) -> Vec<u8> {
    let text = truncate_at_char_boundary(&c.reason, MAX_CLOSE_REASON);
    let text_len = u16::try_from(text.len()).unwrap_or(0);
    let head = CloseHead {
        code: U16::new(c.code),
        text_len: U16::new(text_len),
    };
    let text = text.get(..usize::from(text_len)).unwrap_or_default();
    let mut out = Vec::with_capacity(CLOSE_HEAD_LEN + text.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

fn truncate_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    s.get(..end).unwrap_or_default()
}

/// Parses and validates a close body (the whole front segment).
///
/// Checks, in order: at least [`CLOSE_HEAD_LEN`] bytes, `text_len <=
/// MAX_CLOSE_REASON`, `text_len` equal to the bytes remaining, text UTF-8.
pub fn parse_close(front: &[u8]) -> Result<Close, WireError> {
    let (head, text) = CloseHead::ref_from_prefix(front).map_err(|_| WireError::Truncated {
        what: "close body",
        need: CLOSE_HEAD_LEN,
        have: front.len(),
    })?;
    let text_len = usize::from(head.text_len.get());
    if text_len > MAX_CLOSE_REASON {
        return Err(WireError::BadClose("reason longer than 256 bytes"));
    }
    if text.len() < text_len {
        return Err(WireError::Truncated {
            what: "close reason",
            need: text_len,
            have: text.len(),
        });
    }
    if text.len() > text_len {
        return Err(WireError::BadClose("trailing bytes after reason"));
    }
    let reason =
        core::str::from_utf8(text).map_err(|_| WireError::BadClose("reason is not UTF-8"))?;
    Ok(Close {
        code: head.code.get(),
        reason: reason.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_and_round_trip() {
        let c = Close {
            code: 0x0102,
            reason: "bye".to_owned(),
        };
        let b = encode_close(&c);
        assert_eq!(b, [0x02, 0x01, 3, 0, b'b', b'y', b'e']);
        assert_eq!(parse_close(&b), Ok(c));
        let empty = Close::default();
        assert_eq!(parse_close(&encode_close(&empty)), Ok(empty));
    }

    #[test]
    fn truncates_long_reason_at_char_boundary() {
        // 255 ASCII bytes then a 2-byte char: 257 bytes, cut must drop the whole char.
        let reason = format!("{}é", "a".repeat(255));
        let b = encode_close(&Close { code: 1, reason });
        let c = parse_close(&b).unwrap();
        assert_eq!(c.reason, "a".repeat(255));
        let reason = "€".repeat(100); // 300 bytes, 3 per char
        let c = parse_close(&encode_close(&Close { code: 1, reason })).unwrap();
        assert_eq!(c.reason, "€".repeat(85));
    }

    #[test]
    fn rejects_truncated_close() {
        let b = encode_close(&Close {
            code: 9,
            reason: "abc".to_owned(),
        });
        for n in 0..CLOSE_HEAD_LEN {
            assert!(matches!(
                parse_close(&b[..n]),
                Err(WireError::Truncated {
                    what: "close body",
                    ..
                })
            ));
        }
        assert_eq!(
            parse_close(&b[..6]),
            Err(WireError::Truncated {
                what: "close reason",
                need: 3,
                have: 2
            })
        );
    }

    #[test]
    fn rejects_long_reason_and_trailing_bytes() {
        let mut b = vec![0, 0, 0x01, 0x01];
        b.extend_from_slice(&[b'a'; 257]);
        assert_eq!(
            parse_close(&b),
            Err(WireError::BadClose("reason longer than 256 bytes"))
        );
        let mut b = encode_close(&Close {
            code: 0,
            reason: "x".to_owned(),
        });
        b.push(b'y');
        assert_eq!(
            parse_close(&b),
            Err(WireError::BadClose("trailing bytes after reason"))
        );
    }

    #[test]
    fn rejects_non_utf8_reason() {
        let b = [0, 0, 2, 0, 0xC3, 0x28];
        assert_eq!(
            parse_close(&b),
            Err(WireError::BadClose("reason is not UTF-8"))
        );
    }

    proptest! {
        #[test]
        fn prop_round_trip(code in any::<u16>(), reason in "\\PC{0,120}") {
            let c = Close { code, reason };
            let b = encode_close(&c);
            let back = parse_close(&b).unwrap();
            prop_assert_eq!(back.code, c.code);
            prop_assert!(back.reason.len() <= MAX_CLOSE_REASON);
            prop_assert!(c.reason.starts_with(&back.reason));
            if c.reason.len() <= MAX_CLOSE_REASON {
                prop_assert_eq!(back, c);
            } else {
                // Longest fitting prefix: adding the next char would overflow.
                let next = c.reason[back.reason.len()..].chars().next().map_or(0, char::len_utf8);
                prop_assert!(back.reason.len() + next > MAX_CLOSE_REASON);
            }
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(c) = parse_close(&buf) {
                prop_assert_eq!(encode_close(&c), buf);
            }
        }

        #[test]
        fn prop_consistent_header_arbitrary_text(
            code in any::<u16>(),
            text in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut buf = code.to_le_bytes().to_vec();
            buf.extend_from_slice(&(text.len() as u16).to_le_bytes());
            buf.extend_from_slice(&text);
            let ok = text.len() <= MAX_CLOSE_REASON && core::str::from_utf8(&text).is_ok();
            prop_assert_eq!(parse_close(&buf).is_ok(), ok);
        }
    }
}
