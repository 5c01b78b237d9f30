//! `PhoneNumber`: a number in E.164 (`+` and 8 to 15 digits, no leading zero).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Accepts `+14155550100`, and the same with spaces, dashes, dots or parentheses between
    /// the digits. Anything else (no `+`, letters, too short or long) is refused.
    pub fn parse(raw: &str) -> Result<PhoneNumber, String> {
        let trimmed = raw.trim();
        let Some(rest) = trimmed.strip_prefix('+') else {
            return Err(format!(
                "`{raw}` is not an E.164 number (it must start with +)"
            ));
        };
        let mut digits = String::with_capacity(16);
        digits.push('+');
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '.' | '(' | ')' => {}
                _ => return Err(format!("`{raw}` is not an E.164 number")),
            }
        }
        let count = digits.len() - 1;
        if !(8..=15).contains(&count) || digits.as_bytes()[1] == b'0' {
            return Err(format!(
                "`{raw}` is not an E.164 number (8 to 15 digits, not starting with 0)"
            ));
        }
        Ok(PhoneNumber(digits))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_e164_and_formatting() {
        assert_eq!(
            PhoneNumber::parse("+14155550100").unwrap().as_str(),
            "+14155550100"
        );
        assert_eq!(
            PhoneNumber::parse(" +1 (415) 555-0100 ").unwrap().as_str(),
            "+14155550100"
        );
        assert_eq!(
            PhoneNumber::parse("+5215512345678").unwrap().as_str(),
            "+5215512345678"
        );
    }

    #[test]
    fn refuses_what_is_not_e164() {
        for bad in [
            "14155550100",
            "+1415",
            "+0123456789",
            "+1415555010012345",
            "+1415abc0100",
            "",
            "whatsapp:+14155550100",
        ] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad}");
        }
    }
}
