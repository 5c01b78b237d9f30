//! Attachment storage: provider media (call recordings) downloaded with the provider's
//! credentials, and files a request carried (a mail's attachments), kept in
//! `<data_dir>/attachments/` and served from signed, expiring URLs, so subscribers never need
//! the provider's credentials.
//!
//! A URL is `<base>/attachments/<file>?expires=<unix seconds>&signature=<base64url HMAC-SHA256
//! over "<file>:<expires>">`, keyed by a secret kept in the data directory; a file with a name
//! adds `&name=<name>` and the signature covers `"<file>:<expires>:<name>"`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::credential_hosts::CredentialHosts;
use crate::domain::ids::{hex, looks_like_id, new_id};
use crate::ssrf::TargetPolicy;

/// Where to fetch a provider's media, with the credentials it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFetch {
    /// Whose credentials these are: they go only to that provider's hosts.
    pub provider: &'static str,
    pub url: String,
    pub username: String,
    pub password: String,
}

/// Why a signed URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlError {
    BadSignature,
    Expired,
}

pub struct MediaStore {
    dir: PathBuf,
    url_key: [u8; 32],
    ttl: Duration,
    max_bytes: usize,
    targets: TargetPolicy,
    credential_hosts: CredentialHosts,
    client: reqwest::Client,
}

/// The content types Switchboard serves as what they are, by file extension; anything else
/// is kept as `bin` and served as `application/octet-stream` (never HTML or script from this
/// origin).
const KINDS: [(&str, &str); 9] = [
    ("mp3", "audio/mpeg"),
    ("wav", "audio/wav"),
    ("pdf", "application/pdf"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("gif", "image/gif"),
    ("webp", "image/webp"),
    ("txt", "text/plain"),
    ("bin", "application/octet-stream"),
];

/// A `Content-Type` without its parameters, lower-cased: `text/plain` of
/// `Text/Plain; charset=utf-8`.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The extension a file of `content_type` is kept under.
fn extension(content_type: &str) -> &'static str {
    let essence = essence(content_type);
    KINDS
        .iter()
        .find(|(_, ct)| *ct == essence)
        .map_or("bin", |(ext, _)| *ext)
}

impl MediaStore {
    pub fn new(
        data_dir: &Path,
        url_key: [u8; 32],
        ttl: Duration,
        max_bytes: usize,
        targets: TargetPolicy,
        credential_hosts: CredentialHosts,
    ) -> anyhow::Result<Arc<MediaStore>> {
        // Provider media redirects to a CDN; every hop is checked like a webhook target.
        let hops = targets.clone();
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("too many redirects")
            } else if let Err(e) = hops.check_literal(attempt.url().as_str()) {
                attempt.error(e)
            } else {
                attempt.follow()
            }
        });
        let builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(redirect);
        Ok(Arc::new(MediaStore {
            dir: data_dir.join("attachments"),
            url_key,
            ttl,
            max_bytes,
            client: targets.client(builder)?,
            targets,
            credential_hosts,
        }))
    }

    /// Download `fetch` and keep it; returns the stored file name (`<id>.<ext>`). The id is
    /// derived from the URL, so a provider's repeated callback for the same media finds the
    /// copy already kept instead of downloading it again and leaving another file behind.
    pub async fn download(&self, fetch: &MediaFetch) -> anyhow::Result<String> {
        let id = self.id_for(fetch);
        for (ext, _) in KINDS {
            let file = format!("{id}.{ext}");
            if tokio::fs::try_exists(self.dir.join(&file)).await? {
                return Ok(file);
            }
        }
        // The credentials go to their owner's hosts only; any other URL stays a plain link.
        self.credential_hosts
            .check(fetch.provider, &fetch.url)
            .map_err(|e| anyhow::anyhow!("refused media URL: {e}"))?;
        // Host names are checked by the client's resolver, literal addresses here.
        self.targets
            .check_literal(&fetch.url)
            .map_err(|e| anyhow::anyhow!("refused media URL: {e}"))?;
        let mut response = self
            .client
            .get(&fetch.url)
            .basic_auth(&fetch.username, Some(&fetch.password))
            .send()
            .await
            .with_context(|| format!("fetching {}", fetch.url))?;
        if !response.status().is_success() {
            bail!("fetching {} answered {}", fetch.url, response.status());
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            body.extend_from_slice(&chunk);
            if body.len() > self.max_bytes {
                bail!("{} is larger than {} bytes", fetch.url, self.max_bytes);
            }
        }
        let ext = KINDS
            .iter()
            .find(|(_, ct)| content_type.starts_with(ct))
            .map(|(ext, _)| *ext)
            .or_else(|| fetch.url.ends_with(".mp3").then_some("mp3"))
            .unwrap_or("bin");
        let file = format!("{id}.{ext}");
        self.write(&file, &body).await?;
        Ok(file)
    }

    /// Write `bytes` as `file`: to a file of its own (two writers of the same file at once
    /// each write their own), synced, then renamed into place, so that a file name always
    /// names a whole file; the partial file is removed when writing fails.
    async fn write(&self, file: &str, bytes: &[u8]) -> std::io::Result<()> {
        crate::files::private_dir(&self.dir).map_err(std::io::Error::other)?;
        let tmp = self.dir.join(format!(".{file}.{}.part", new_id()));
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        let written = async {
            let mut out = options.open(&tmp).await?;
            tokio::io::AsyncWriteExt::write_all(&mut out, bytes).await?;
            out.sync_all().await?;
            tokio::fs::rename(&tmp, self.dir.join(file)).await
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        written
    }

    /// Largest file kept, in bytes (`max_attachment_bytes`).
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Keep `bytes` a request carried; returns the stored file name (`<id>.<ext>`). The id is
    /// a MAC of the content, so the same file kept twice (a mail delivered again) is one copy.
    pub async fn keep(&self, bytes: &[u8], content_type: &str) -> std::io::Result<String> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.url_key).expect("HMAC takes any key");
        mac.update(b"content id:");
        mac.update(bytes);
        let id = hex(&mac.finalize().into_bytes()[..10]);
        let file = format!("{id}.{}", extension(content_type));
        if tokio::fs::try_exists(self.dir.join(&file)).await? {
            return Ok(file);
        }
        self.write(&file, bytes).await?;
        Ok(file)
    }

    /// The stored id for `fetch`: 20 hex digits of a MAC of its URL and credentials, so ids
    /// cannot be guessed, and a kept copy is only found again by a request that carries the
    /// credentials it was fetched with.
    fn id_for(&self, fetch: &MediaFetch) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.url_key).expect("HMAC takes any key");
        mac.update(b"media id:");
        for part in [&fetch.url, &fetch.username, &fetch.password] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        let digest = mac.finalize().into_bytes();
        hex(&digest[..10])
    }

    fn mac(&self, file: &str, expires: i64, name: Option<&str>) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.url_key).expect("HMAC takes any key");
        mac.update(file.as_bytes());
        mac.update(b":");
        mac.update(expires.to_string().as_bytes());
        if let Some(name) = name {
            mac.update(b":");
            mac.update(name.as_bytes());
        }
        mac
    }

    /// A URL for `file` under `base`, valid for the configured time from `now_secs`.
    pub fn signed_url(&self, base: &str, file: &str, now_secs: i64) -> String {
        let expires = now_secs + self.ttl.as_secs() as i64;
        format!(
            "{}/attachments/{file}?expires={expires}&signature={}",
            base.trim_end_matches('/'),
            B64URL.encode(self.mac(file, expires, None).finalize().into_bytes())
        )
    }

    /// As [`MediaStore::signed_url`], for a file served under `name` (a mail attachment's
    /// file name, which the signature covers).
    pub fn signed_url_named(&self, base: &str, file: &str, name: &str, now_secs: i64) -> String {
        let expires = now_secs + self.ttl.as_secs() as i64;
        let name_param: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
        format!(
            "{}/attachments/{file}?expires={expires}&name={name_param}&signature={}",
            base.trim_end_matches('/'),
            B64URL.encode(self.mac(file, expires, Some(name)).finalize().into_bytes())
        )
    }

    /// Check a signed URL's parameters (the signature in constant time, then the expiry).
    pub fn verify(
        &self,
        file: &str,
        expires: i64,
        name: Option<&str>,
        signature: &str,
        now_secs: i64,
    ) -> Result<(), UrlError> {
        let given = B64URL
            .decode(signature)
            .map_err(|_| UrlError::BadSignature)?;
        self.mac(file, expires, name)
            .verify_slice(&given)
            .map_err(|_| UrlError::BadSignature)?;
        if now_secs > expires {
            return Err(UrlError::Expired);
        }
        Ok(())
    }

    /// `file` opened for reading, with its length and content type, if it is one of ours.
    pub async fn open(&self, file: &str) -> Option<(tokio::fs::File, u64, &'static str)> {
        let (id, ext) = file.split_once('.')?;
        let content_type = KINDS.iter().find(|(e, _)| *e == ext)?.1;
        if !looks_like_id(id) {
            return None;
        }
        let opened = tokio::fs::File::open(self.dir.join(file)).await.ok()?;
        let length = opened.metadata().await.ok()?.len();
        Some((opened, length, content_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Arc<MediaStore> {
        MediaStore::new(
            Path::new("/nonexistent"),
            [7; 32],
            Duration::from_secs(60),
            1024,
            TargetPolicy::default(),
            CredentialHosts::default(),
        )
        .unwrap()
    }

    #[test]
    fn signed_urls_verify_until_they_expire() {
        let media = store();
        let url = media.signed_url("https://sb.example.com/", "AAAAAAAAAAAAAAAAAAAA.mp3", 1_000);
        let query = url.split_once('?').unwrap().1;
        let params: std::collections::HashMap<_, _> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        assert!(url.starts_with("https://sb.example.com/attachments/AAAAAAAAAAAAAAAAAAAA.mp3?"));
        let expires: i64 = params["expires"].parse().unwrap();
        assert_eq!(expires, 1_060);
        let sig = &params["signature"];
        let file = "AAAAAAAAAAAAAAAAAAAA.mp3";
        assert_eq!(media.verify(file, expires, None, sig, 1_050), Ok(()));
        assert_eq!(
            media.verify(file, expires, None, sig, 1_061),
            Err(UrlError::Expired)
        );
        assert_eq!(
            media.verify(file, expires + 1, None, sig, 1_050),
            Err(UrlError::BadSignature)
        );
        assert_eq!(
            media.verify("BBBBBBBBBBBBBBBBBBBB.mp3", expires, None, sig, 1_050),
            Err(UrlError::BadSignature)
        );
        assert_eq!(
            media.verify(file, expires, None, "!!", 1_050),
            Err(UrlError::BadSignature)
        );
    }

    #[tokio::test]
    async fn only_our_file_names_are_read() {
        let media = store();
        assert!(media.open("../../etc/passwd").await.is_none());
        assert!(media.open("AAAAAAAAAAAAAAAAAAAA.exe").await.is_none());
        assert!(media.open("AAAAAAAAAAAAAAAAAAAA.mp3").await.is_none());
    }

    #[test]
    fn media_ids_follow_the_url_and_the_credentials() {
        let media = store();
        let fetch = |url: &str, username: &str, password: &str| MediaFetch {
            provider: "acme",
            url: url.into(),
            username: username.into(),
            password: password.into(),
        };
        let url = "https://api.acme.test/Accounts/AC1/Recordings/RE1";
        let a = media.id_for(&fetch(url, "AC1", "token"));
        assert!(looks_like_id(&a), "{a}");
        assert_eq!(a, media.id_for(&fetch(url, "AC1", "token")));
        for other in [
            fetch(
                "https://api.acme.test/Accounts/AC1/Recordings/RE2",
                "AC1",
                "token",
            ),
            fetch(url, "AC2", "token"),
            fetch(url, "AC1", "another token"),
            fetch(url, "AC1t", "oken"),
        ] {
            assert_ne!(a, media.id_for(&other), "{other:?}");
        }
    }
}
