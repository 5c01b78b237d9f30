//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): `webhook-signature` is
//! `v1,<base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>`, keyed by the
//! bytes behind a `whsec_<base64>` secret. Several signatures are space-separated.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const SECRET_PREFIX: &str = "whsec_";

/// Why a delivery did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// The secret is not `whsec_<base64>`.
    BadSecret,
    /// `webhook-timestamp` is not a whole number of seconds.
    BadTimestamp,
    /// `webhook-timestamp` is further from now than the tolerance.
    TimestampOutOfTolerance,
    /// No `v1` signature in the header matches.
    NoMatchingSignature,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VerifyError::BadSecret => "secret is not whsec_<base64>",
            VerifyError::BadTimestamp => "webhook-timestamp is not an integer",
            VerifyError::TimestampOutOfTolerance => "webhook-timestamp is outside the tolerance",
            VerifyError::NoMatchingSignature => "no matching v1 signature",
        })
    }
}

impl std::error::Error for VerifyError {}

/// A subscription's signing secret, decoded once.
#[derive(Clone)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(…)")
    }
}

impl WebhookSecret {
    /// Parse `whsec_<base64>`.
    pub fn parse(secret: &str) -> Result<Self, VerifyError> {
        let encoded = secret
            .strip_prefix(SECRET_PREFIX)
            .ok_or(VerifyError::BadSecret)?;
        let key = B64.decode(encoded).map_err(|_| VerifyError::BadSecret)?;
        if key.is_empty() {
            return Err(VerifyError::BadSecret);
        }
        Ok(WebhookSecret { key })
    }

    /// A secret over the given key bytes.
    pub fn from_key(key: &[u8]) -> Self {
        WebhookSecret { key: key.to_vec() }
    }

    /// The `whsec_…` form.
    pub fn to_whsec(&self) -> String {
        format!("{SECRET_PREFIX}{}", B64.encode(&self.key))
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// One `v1,<base64>` signature.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(msg_id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", B64.encode(tag))
    }

    /// Whether `signature` (one `v1,<base64>` entry) is this secret's, in constant time.
    fn matches(&self, msg_id: &str, timestamp: i64, body: &[u8], signature: &str) -> bool {
        let Some(encoded) = signature.strip_prefix("v1,") else {
            return false;
        };
        let Ok(tag) = B64.decode(encoded) else {
            return false;
        };
        self.mac(msg_id, timestamp, body).verify_slice(&tag).is_ok()
    }
}

/// The `webhook-signature` value for a delivery signed by every secret in `secrets`
/// (more than one during a rotation's overlap).
pub fn signature_header(
    secrets: &[WebhookSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| s.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Verify a delivery: `now` and `timestamp` are Unix seconds; `tolerance_secs` bounds replays
/// (the spec suggests 300).
pub fn verify(
    secret: &WebhookSecret,
    msg_id: &str,
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let timestamp: i64 = timestamp_header
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    if (now - timestamp).abs() > tolerance_secs {
        return Err(VerifyError::TimestampOutOfTolerance);
    }
    if signature_header
        .split(' ')
        .any(|sig| secret.matches(msg_id, timestamp, body, sig))
    {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Computed with the Standard Webhooks reference library (PyPI `standardwebhooks`):
    // Webhook(SECRET).sign("evt_abc123", datetime.fromtimestamp(1700000000, utc), BODY).
    const SECRET: &str = "whsec_c3dpdGNoYm9hcmQtdGVzdC1zZWNyZXQtMzItYnl0ZXM=";
    const BODY: &str = "{\"type\":\"InboundMessage\",\"body\":\"h\u{e9}llo\"}";
    const EXPECTED: &str = "v1,/36aexxRg2VFfTX0hTbcZtjcWO22ibJHl9fb2DSvJTw=";

    #[test]
    fn signs_like_the_reference_library() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        assert_eq!(
            secret.sign("evt_abc123", 1_700_000_000, BODY.as_bytes()),
            EXPECTED
        );
        assert_eq!(secret.to_whsec(), SECRET);
    }

    #[test]
    fn verifies_and_rejects() {
        let secret = WebhookSecret::parse(SECRET).unwrap();
        let body = BODY.as_bytes();
        let ok = verify(
            &secret,
            "evt_abc123",
            "1700000000",
            EXPECTED,
            body,
            1_700_000_100,
            300,
        );
        assert_eq!(ok, Ok(()));
        let other = WebhookSecret::from_key(b"another key");
        let both = format!(
            "{} {}",
            other.sign("evt_abc123", 1_700_000_000, body),
            EXPECTED
        );
        assert_eq!(
            verify(
                &secret,
                "evt_abc123",
                "1700000000",
                &both,
                body,
                1_700_000_000,
                300
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                &secret,
                "evt_abc124",
                "1700000000",
                EXPECTED,
                body,
                1_700_000_000,
                300
            ),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify(
                &secret,
                "evt_abc123",
                "1700000000",
                EXPECTED,
                b"{}",
                1_700_000_000,
                300
            ),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify(
                &secret,
                "evt_abc123",
                "1700000000",
                EXPECTED,
                body,
                1_700_001_000,
                300
            ),
            Err(VerifyError::TimestampOutOfTolerance)
        );
        assert_eq!(
            verify(
                &secret,
                "evt_abc123",
                "soon",
                EXPECTED,
                body,
                1_700_000_000,
                300
            ),
            Err(VerifyError::BadTimestamp)
        );
        assert!(WebhookSecret::parse("not-a-secret").is_err());
        assert!(WebhookSecret::parse("whsec_!!!").is_err());
    }
}
