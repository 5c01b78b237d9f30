//! Twilio: Messaging (SMS, MMS, WhatsApp) "A message comes in" webhooks.
//! Accounts are found by the `To` number, else by `AccountSid`; requests are verified with
//! that account's auth token.

mod messaging;
pub mod signature;

pub use messaging::TwilioMessaging;

/// The provider name persisted with messages and channel accounts.
pub const PROVIDER: &str = "twilio";

/// An account SID: `AC` and 32 hexadecimal digits.
pub fn is_account_sid(s: &str) -> bool {
    s.len() == 34 && s.starts_with("AC") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    #[test]
    fn account_sid_shape() {
        assert!(super::is_account_sid("AC33333333333333333333333333333333"));
        assert!(!super::is_account_sid("AC3333"));
        assert!(!super::is_account_sid("XX33333333333333333333333333333333"));
    }
}
