//! The one id generator: 20 characters of `[A-Za-z0-9]`, like the source document's ids
//! (about 119 bits of randomness).

use rand::distributions::Alphanumeric;
use rand::Rng;

pub const ID_LEN: usize = 20;

pub fn new_id() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(ID_LEN)
        .map(char::from)
        .collect()
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
}
