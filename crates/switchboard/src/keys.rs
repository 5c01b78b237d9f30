//! Secrets kept in the data directory: the server's Ed25519 signing key (for `x-ghl-signature`)
//! and the generated admin token. Created on first start with owner-only permissions; parsed once.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey};
use rand::distributions::Alphanumeric;
use rand::Rng;

const ED25519_FILE: &str = "ed25519-private-key.pem";
const RSA_FILE: &str = "rsa-private-key.pem";
/// RSA key size for the legacy `x-wh-signature` (HighLevel's own key is 4096 bits; 2048 is
/// what every RSA verifier accepts and keeps signing fast).
const RSA_BITS: usize = 2048;
const ADMIN_TOKEN_FILE: &str = "admin-token";
const ATTACHMENT_KEY_FILE: &str = "attachment-url-key";

pub struct SigningKeys {
    ed25519: SigningKey,
    ed25519_public_pem: String,
    dir: std::path::PathBuf,
    /// Loaded or generated on first use: most servers never need it.
    rsa: std::sync::OnceLock<Result<RsaKeys, String>>,
}

struct RsaKeys {
    signing: rsa::pkcs1v15::SigningKey<sha2::Sha256>,
    public_pem: String,
}

impl RsaKeys {
    fn load_or_create(dir: &Path) -> anyhow::Result<RsaKeys> {
        use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
        let path = dir.join(RSA_FILE);
        let key = if path.exists() {
            let pem =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
                .map_err(|e| anyhow::anyhow!("{}: not an RSA PKCS#8 key: {e}", path.display()))?
        } else {
            let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, RSA_BITS)?;
            let pem = key
                .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .map_err(|e| anyhow::anyhow!("encoding the RSA key: {e}"))?;
            write_private(&path, pem.as_bytes())?;
            tracing::info!(path = %path.display(), "generated the RSA signing key");
            key
        };
        let public_pem = key
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding the RSA public key: {e}"))?;
        Ok(RsaKeys {
            signing: rsa::pkcs1v15::SigningKey::new(key),
            public_pem,
        })
    }
}

impl SigningKeys {
    /// Load the key from `dir`, or create and save one.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<SigningKeys> {
        let path = dir.join(ED25519_FILE);
        let key = if path.exists() {
            let pem =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
                anyhow::anyhow!("{}: not an Ed25519 PKCS#8 key: {e}", path.display())
            })?
        } else {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| anyhow::anyhow!("encoding the signing key: {e}"))?;
            write_private(&path, pem.as_bytes())?;
            tracing::info!(path = %path.display(), "generated the Ed25519 signing key");
            key
        };
        let ed25519_public_pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))?;
        Ok(SigningKeys {
            ed25519: key,
            ed25519_public_pem,
            dir: dir.to_path_buf(),
            rsa: std::sync::OnceLock::new(),
        })
    }

    /// `x-ghl-signature`: base64 Ed25519 over the exact body bytes.
    pub fn ed25519_signature(&self, body: &[u8]) -> String {
        B64.encode(self.ed25519.sign(body).to_bytes())
    }

    /// SPKI PEM of the public key.
    pub fn ed25519_public_pem(&self) -> &str {
        &self.ed25519_public_pem
    }

    fn rsa(&self) -> Result<&RsaKeys, String> {
        self.rsa
            .get_or_init(|| RsaKeys::load_or_create(&self.dir).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The legacy `x-wh-signature`: base64 RSASSA-PKCS1-v1_5 with SHA-256 over the exact body.
    pub fn rsa_signature(&self, body: &[u8]) -> Result<String, String> {
        use rsa::signature::{SignatureEncoding, Signer};
        Ok(B64.encode(self.rsa()?.signing.sign(body).to_bytes()))
    }

    /// SPKI PEM of the RSA public key (generated on first use).
    pub fn rsa_public_pem(&self) -> Result<&str, String> {
        Ok(&self.rsa()?.public_pem)
    }
}

/// The key that signs attachment URLs, kept in `dir` (generated on first start).
pub fn attachment_url_key(dir: &Path) -> anyhow::Result<[u8; 32]> {
    let path = dir.join(ATTACHMENT_KEY_FILE);
    if path.exists() {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let bytes = B64
            .decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                anyhow::anyhow!("{} does not hold a 32-byte base64 key", path.display())
            })?;
        return Ok(bytes);
    }
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
    write_private(&path, B64.encode(key).as_bytes())?;
    Ok(key)
}

/// The configured token, or the one kept in `dir` (generated and printed once if missing).
pub fn admin_token(dir: &Path, configured: Option<&str>) -> anyhow::Result<String> {
    if let Some(token) = configured {
        return Ok(token.to_owned());
    }
    let path = dir.join(ADMIN_TOKEN_FILE);
    if path.exists() {
        let token = fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned();
        anyhow::ensure!(
            token.len() >= 16,
            "{} holds no usable token",
            path.display()
        );
        return Ok(token);
    }
    let token: String = std::iter::once("sb_".to_owned())
        .chain(
            rand::rngs::OsRng
                .sample_iter(&Alphanumeric)
                .take(40)
                .map(|b| char::from(b).to_string()),
        )
        .collect();
    write_private(&path, token.as_bytes())?;
    println!(
        "Generated the admin token (kept in {}). Send it as `Authorization: Bearer <token>` to /v1:\n\n    {token}\n",
        path.display()
    );
    Ok(token)
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_survives_a_restart_and_signs_verifiably() {
        let dir = tempfile::tempdir().unwrap();
        let first = SigningKeys::load_or_create(dir.path()).unwrap();
        let second = SigningKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(first.ed25519_public_pem(), second.ed25519_public_pem());
        let key =
            switchboard_events::ed25519::public_key_from_pem(second.ed25519_public_pem()).unwrap();
        let sig = first.ed25519_signature(b"{\"a\":1}");
        assert_eq!(
            switchboard_events::ed25519::verify(&key, b"{\"a\":1}", &sig),
            Ok(())
        );
    }

    #[test]
    fn rsa_key_is_kept_and_signs_pkcs1v15_sha256() {
        use rsa::pkcs8::DecodePublicKey;
        use rsa::signature::Verifier;
        let dir = tempfile::tempdir().unwrap();
        let keys = SigningKeys::load_or_create(dir.path()).unwrap();
        let sig = keys.rsa_signature(b"{\"a\":1}").unwrap();
        let again = SigningKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(
            keys.rsa_public_pem().unwrap(),
            again.rsa_public_pem().unwrap()
        );
        let public =
            rsa::RsaPublicKey::from_public_key_pem(again.rsa_public_pem().unwrap()).unwrap();
        let verifier = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(public);
        let raw = B64.decode(sig).unwrap();
        let signature = rsa::pkcs1v15::Signature::try_from(raw.as_slice()).unwrap();
        assert!(verifier.verify(b"{\"a\":1}", &signature).is_ok());
        assert!(verifier.verify(b"{\"a\":2}", &signature).is_err());
    }

    #[test]
    fn attachment_key_is_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            attachment_url_key(dir.path()).unwrap(),
            attachment_url_key(dir.path()).unwrap()
        );
    }

    #[test]
    fn admin_token_is_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = admin_token(dir.path(), None).unwrap();
        let b = admin_token(dir.path(), None).unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("sb_") && a.len() == 43);
        assert_eq!(
            admin_token(dir.path(), Some("configured-token-123")).unwrap(),
            "configured-token-123"
        );
    }
}
