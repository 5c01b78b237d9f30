//! The server's secrets: the Ed25519 key (for `x-ghl-signature`), the RSA key (legacy
//! `x-wh-signature`, made on first use), the key that signs attachment links, and the
//! generated admin token. Embedded, they are files in the data directory (owner-only); with a
//! shared database they are rows in it, so every node signs with the same keys. Each is
//! created once — the first writer wins — and parsed once.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey};
use rand::distributions::Alphanumeric;
use rand::Rng;

use crate::store::Store;

const ED25519: &str = "ed25519-private-key.pem";
const RSA: &str = "rsa-private-key.pem";
const ADMIN_TOKEN: &str = "admin-token";
const ATTACHMENT_KEY: &str = "attachment-url-key";
/// RSA key size for the legacy `x-wh-signature` (HighLevel's own key is 4096 bits; 2048 is
/// what every RSA verifier accepts and keeps signing fast).
const RSA_BITS: usize = 2048;

/// Where secrets live.
#[derive(Clone)]
pub enum SecretSource {
    /// Files in the data directory (one node).
    Dir(PathBuf),
    /// Rows of the shared database (many nodes).
    Database(Arc<dyn Store>),
}

impl SecretSource {
    async fn get(&self, name: &str) -> anyhow::Result<Option<String>> {
        match self {
            SecretSource::Dir(dir) => {
                let path = dir.join(name);
                if !path.exists() {
                    return Ok(None);
                }
                let text = fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Ok(Some(text))
            }
            SecretSource::Database(store) => Ok(store.secret(name).await?),
        }
    }

    /// Keep `value` unless another writer was first; returns what is kept and whether it is ours.
    async fn put_new(&self, name: &str, value: &str) -> anyhow::Result<(String, bool)> {
        match self {
            SecretSource::Dir(dir) => {
                let path = dir.join(name);
                match write_private(&path, value.as_bytes()) {
                    Ok(()) => Ok((value.to_owned(), true)),
                    Err(e) if path.exists() => {
                        tracing::debug!(error = %e, "secret written meanwhile");
                        Ok((fs::read_to_string(&path)?, false))
                    }
                    Err(e) => Err(e),
                }
            }
            SecretSource::Database(store) => {
                let kept = store.put_secret_if_absent(name, value).await?;
                let ours = kept == value;
                Ok((kept, ours))
            }
        }
    }

    /// The secret `name`, made with `make` when there is none yet.
    async fn get_or_create(
        &self,
        name: &str,
        make: impl FnOnce() -> anyhow::Result<String>,
    ) -> anyhow::Result<(String, bool)> {
        if let Some(value) = self.get(name).await? {
            return Ok((value, false));
        }
        self.put_new(name, &make()?).await
    }

    fn describe(&self, name: &str) -> String {
        match self {
            SecretSource::Dir(dir) => dir.join(name).display().to_string(),
            SecretSource::Database(_) => format!("the database (secret `{name}`)"),
        }
    }
}

pub struct SigningKeys {
    ed25519: SigningKey,
    ed25519_public_pem: String,
    source: SecretSource,
    /// Loaded or generated on first need: most servers never use it.
    rsa: tokio::sync::OnceCell<RsaKeys>,
}

struct RsaKeys {
    /// Signs with ring: blinded and constant-time (the `rsa` crate's private-key operation is
    /// not, RUSTSEC-2023-0071). The `rsa` crate only generates and reads the key.
    signing: ring::signature::RsaKeyPair,
    public_pem: String,
}

impl RsaKeys {
    fn parse(pem: &str) -> anyhow::Result<RsaKeys> {
        use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
            .map_err(|e| anyhow::anyhow!("not an RSA PKCS#8 key: {e}"))?;
        let public_pem = key
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding the RSA public key: {e}"))?;
        let der = key
            .to_pkcs8_der()
            .map_err(|e| anyhow::anyhow!("encoding the RSA key: {e}"))?;
        let signing = ring::signature::RsaKeyPair::from_pkcs8(der.as_bytes())
            .map_err(|e| anyhow::anyhow!("the RSA key is not one ring signs with: {e}"))?;
        Ok(RsaKeys {
            signing,
            public_pem,
        })
    }

    fn generate() -> anyhow::Result<String> {
        use rsa::pkcs8::EncodePrivateKey;
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, RSA_BITS)?;
        Ok(key
            .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding the RSA key: {e}"))?
            .to_string())
    }
}

impl SigningKeys {
    /// Load the Ed25519 key, or create and keep one.
    pub async fn load_or_create(source: SecretSource) -> anyhow::Result<SigningKeys> {
        let (pem, created) = source
            .get_or_create(ED25519, || {
                let key = SigningKey::generate(&mut rand::rngs::OsRng);
                Ok(key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| anyhow::anyhow!("encoding the signing key: {e}"))?
                    .to_string())
            })
            .await?;
        if created {
            tracing::info!(at = %source.describe(ED25519), "generated the Ed25519 signing key");
        }
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
            anyhow::anyhow!(
                "{}: not an Ed25519 PKCS#8 key: {e}",
                source.describe(ED25519)
            )
        })?;
        let ed25519_public_pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))?;
        Ok(SigningKeys {
            ed25519: key,
            ed25519_public_pem,
            source,
            rsa: tokio::sync::OnceCell::new(),
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

    /// Load the RSA key, or generate and keep one (slow: done off the async threads).
    pub async fn ensure_rsa(&self) -> anyhow::Result<&str> {
        let keys = self
            .rsa
            .get_or_try_init(|| async {
                let (pem, created) = match self.source.get(RSA).await? {
                    Some(pem) => (pem, false),
                    None => {
                        let fresh = tokio::task::spawn_blocking(RsaKeys::generate).await??;
                        self.source.put_new(RSA, &fresh).await?
                    }
                };
                if created {
                    tracing::info!(at = %self.source.describe(RSA), "generated the RSA signing key");
                }
                tokio::task::spawn_blocking(move || RsaKeys::parse(&pem)).await?
            })
            .await?;
        Ok(&keys.public_pem)
    }

    /// The legacy `x-wh-signature`: base64 RSASSA-PKCS1-v1_5 with SHA-256 over the exact body.
    /// Needs [`Self::ensure_rsa`] first.
    pub fn rsa_signature(&self, body: &[u8]) -> Result<String, String> {
        let keys = self
            .rsa
            .get()
            .ok_or_else(|| "the RSA key is not loaded yet".to_owned())?;
        let mut signature = vec![0; keys.signing.public().modulus_len()];
        keys.signing
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                body,
                &mut signature,
            )
            .map_err(|_| "RSA signing failed".to_owned())?;
        Ok(B64.encode(signature))
    }
}

/// The key that signs attachment URLs (generated on first start).
pub async fn attachment_url_key(source: &SecretSource) -> anyhow::Result<[u8; 32]> {
    let (text, _) = source
        .get_or_create(ATTACHMENT_KEY, || {
            let mut key = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
            Ok(B64.encode(key))
        })
        .await?;
    B64.decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} does not hold a 32-byte base64 key",
                source.describe(ATTACHMENT_KEY)
            )
        })
}

/// The configured token, or the kept one (generated and printed once if there is none).
pub async fn admin_token(
    source: &SecretSource,
    configured: Option<&str>,
) -> anyhow::Result<String> {
    if let Some(token) = configured {
        return Ok(token.to_owned());
    }
    let (token, created) = source
        .get_or_create(ADMIN_TOKEN, || {
            Ok(std::iter::once("sb_".to_owned())
                .chain(
                    rand::rngs::OsRng
                        .sample_iter(&Alphanumeric)
                        .take(40)
                        .map(|b| char::from(b).to_string()),
                )
                .collect())
        })
        .await?;
    let token = token.trim().to_owned();
    anyhow::ensure!(
        token.len() >= 16,
        "{} holds no usable token",
        source.describe(ADMIN_TOKEN)
    );
    if created {
        println!(
            "Generated the admin token (kept in {}). Send it as `Authorization: Bearer <token>` to /v1:\n\n    {token}\n",
            source.describe(ADMIN_TOKEN)
        );
    }
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

    fn dir_source(dir: &tempfile::TempDir) -> SecretSource {
        SecretSource::Dir(dir.path().to_path_buf())
    }

    #[tokio::test]
    async fn key_survives_a_restart_and_signs_verifiably() {
        let dir = tempfile::tempdir().unwrap();
        let first = SigningKeys::load_or_create(dir_source(&dir)).await.unwrap();
        let second = SigningKeys::load_or_create(dir_source(&dir)).await.unwrap();
        assert_eq!(first.ed25519_public_pem(), second.ed25519_public_pem());
        let key =
            switchboard_events::ed25519::public_key_from_pem(second.ed25519_public_pem()).unwrap();
        let sig = first.ed25519_signature(b"{\"a\":1}");
        assert_eq!(
            switchboard_events::ed25519::verify(&key, b"{\"a\":1}", &sig),
            Ok(())
        );
    }

    #[tokio::test]
    async fn rsa_key_is_kept_and_signs_pkcs1v15_sha256() {
        use rsa::pkcs8::DecodePublicKey;
        use rsa::signature::Verifier;
        let dir = tempfile::tempdir().unwrap();
        let keys = SigningKeys::load_or_create(dir_source(&dir)).await.unwrap();
        assert!(
            keys.rsa_signature(b"x").is_err(),
            "not loaded before ensure_rsa"
        );
        let pem = keys.ensure_rsa().await.unwrap().to_owned();
        let sig = keys.rsa_signature(b"{\"a\":1}").unwrap();
        let again = SigningKeys::load_or_create(dir_source(&dir)).await.unwrap();
        assert_eq!(again.ensure_rsa().await.unwrap(), pem);
        let public = rsa::RsaPublicKey::from_public_key_pem(&pem).unwrap();
        let verifier = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(public);
        let raw = B64.decode(sig).unwrap();
        let signature = rsa::pkcs1v15::Signature::try_from(raw.as_slice()).unwrap();
        assert!(verifier.verify(b"{\"a\":1}", &signature).is_ok());
        assert!(verifier.verify(b"{\"a\":2}", &signature).is_err());
        // PKCS#1 v1.5 is deterministic: ring's blinded signature is the one the textbook
        // operation gives.
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::signature::{SignatureEncoding, Signer};
        let private = std::fs::read_to_string(dir.path().join(RSA)).unwrap();
        let textbook = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(
            rsa::RsaPrivateKey::from_pkcs8_pem(&private).unwrap(),
        );
        assert_eq!(textbook.sign(b"{\"a\":1}").to_vec(), raw);
    }

    #[tokio::test]
    async fn attachment_key_is_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir_source(&dir);
        assert_eq!(
            attachment_url_key(&source).await.unwrap(),
            attachment_url_key(&source).await.unwrap()
        );
    }

    #[tokio::test]
    async fn admin_token_is_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir_source(&dir);
        let a = admin_token(&source, None).await.unwrap();
        let b = admin_token(&source, None).await.unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("sb_") && a.len() == 43);
        assert_eq!(
            admin_token(&source, Some("configured-token-123"))
                .await
                .unwrap(),
            "configured-token-123"
        );
    }
}
