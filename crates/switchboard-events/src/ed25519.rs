//! The HighLevel-style `x-ghl-signature`: base64 of a pure Ed25519 signature (RFC 8032, no
//! prehash) over the raw body, checked with the sender's public key (SPKI PEM, as Switchboard
//! serves it at `GET /v1/signing-keys`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};

/// Why an Ed25519 signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ed25519Error {
    BadPublicKey,
    BadSignatureEncoding,
    Mismatch,
}

impl std::fmt::Display for Ed25519Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ed25519Error::BadPublicKey => "public key is not an Ed25519 SPKI PEM",
            Ed25519Error::BadSignatureEncoding => "signature is not base64 of 64 bytes",
            Ed25519Error::Mismatch => "signature does not match the body",
        })
    }
}

impl std::error::Error for Ed25519Error {}

/// Parse an SPKI PEM public key (`-----BEGIN PUBLIC KEY-----`).
pub fn public_key_from_pem(pem: &str) -> Result<VerifyingKey, Ed25519Error> {
    VerifyingKey::from_public_key_pem(pem).map_err(|_| Ed25519Error::BadPublicKey)
}

/// Verify `x-ghl-signature` over the exact body bytes received.
pub fn verify(key: &VerifyingKey, body: &[u8], signature_b64: &str) -> Result<(), Ed25519Error> {
    let raw = B64
        .decode(signature_b64.trim())
        .map_err(|_| Ed25519Error::BadSignatureEncoding)?;
    let bytes: [u8; 64] = raw
        .try_into()
        .map_err(|_| Ed25519Error::BadSignatureEncoding)?;
    key.verify(body, &Signature::from_bytes(&bytes))
        .map_err(|_| Ed25519Error::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 §7.1 TEST 2: public key, one-byte message 0x72, and its signature.
    #[test]
    fn verifies_rfc8032_vector() {
        let pk = hex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c");
        let sig = hex("92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00");
        let key = VerifyingKey::from_bytes(&pk.try_into().unwrap()).unwrap();
        let sig_b64 = B64.encode(&sig);
        assert_eq!(verify(&key, &[0x72], &sig_b64), Ok(()));
        assert_eq!(verify(&key, &[0x73], &sig_b64), Err(Ed25519Error::Mismatch));
        assert_eq!(
            verify(&key, &[0x72], "AAAA"),
            Err(Ed25519Error::BadSignatureEncoding)
        );
    }

    /// HighLevel's published key parses from its SPKI PEM.
    #[test]
    fn parses_spki_pem() {
        let pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=\n-----END PUBLIC KEY-----\n";
        let key = public_key_from_pem(pem).unwrap();
        assert_eq!(
            key.to_bytes().to_vec(),
            hex("8b61d1d6cacbe28d7c3bc0516bb815258ec6edbba96cddc7f40c09ac708388e8")
        );
        assert_eq!(public_key_from_pem("nope"), Err(Ed25519Error::BadPublicKey));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
