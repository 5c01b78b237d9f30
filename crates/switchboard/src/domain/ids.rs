//! The one id generator: 20 characters of `[A-Za-z0-9]`, like the source document's ids.
//! The first 8 are the creation time in milliseconds (base 62, digits before capitals before
//! small letters, so ids sort by time byte for byte); the other 12 are random (about 71 bits).
//! Ids made close in time are close in every index they key, so a commit writes a few index
//! pages rather than one per row.

use rand::distributions::Alphanumeric;
use rand::Rng;

pub const ID_LEN: usize = 20;

/// Base 62 in ASCII order.
const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const TIME_LEN: usize = 8;

pub fn new_id() -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    id_at(now_ms, &mut rand::thread_rng())
}

fn id_at(ms: u64, rng: &mut impl Rng) -> String {
    let mut id = String::with_capacity(ID_LEN);
    // 62^8 ms is about 6,900 years: the prefix never wraps.
    let mut time = [b'0'; TIME_LEN];
    let mut rest = ms;
    for slot in time.iter_mut().rev() {
        *slot = DIGITS[(rest % 62) as usize];
        rest /= 62;
    }
    id.extend(time.iter().map(|&b| char::from(b)));
    id.extend(
        rng.sample_iter(&Alphanumeric)
            .take(ID_LEN - TIME_LEN)
            .map(char::from),
    );
    id
}

/// Lower-case hexadecimal of `bytes` (digests, MACs, ids derived from them).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Whether `s` has the shape of an id this generator makes (cheap guard for path parameters).
pub fn looks_like_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_twenty_alphanumerics_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert!(looks_like_id(&a), "{a}");
        assert_ne!(a, b);
        assert!(!looks_like_id("short"));
        assert!(!looks_like_id("aaaaaaaaaaaaaaaaaaa-"));
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let mut rng = rand::thread_rng();
        let times = [
            0,
            1,
            61,
            62,
            3_843,
            1_764_000_000_000,
            1_764_000_000_001,
            62u64.pow(8) - 1,
        ];
        let ids: Vec<String> = times.iter().map(|&t| id_at(t, &mut rng)).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} < {}", pair[0], pair[1]);
        }
        assert!(ids.iter().all(|id| looks_like_id(id)), "{ids:?}");
        assert_eq!(&id_at(62, &mut rng)[..8], "00000010");
    }
}
