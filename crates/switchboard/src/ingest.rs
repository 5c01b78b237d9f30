//! The ingest service: from a provider request a channel reads to a stored message handed to
//! the dispatcher. Find the account the request claims, verify it with that account's secret,
//! turn it into facts, keep the media it asks for, store everything in one transaction, hand
//! the deliveries to the dispatcher, and only then give the caller the answer to acknowledge
//! with. The HTTP provider route calls it; anything else that receives provider traffic (an
//! SMTP listener, the live-chat API) calls it the same way, so acknowledgement means the same
//! everywhere: the answer exists only after the commit, and a storage fault is an error the
//! caller turns into "try again" (HTTP 503 with `Retry-After`).

use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;

use subtle::ConstantTimeEq;

use crate::channels::{Channel, ChannelAccount, ChannelError, ProviderRequest, RouteKey};
use crate::dispatcher::DispatchHandle;
use crate::domain::time::Clock;
use crate::domain::{Fact, NewMessage};
use crate::error::ApiError;
use crate::media::MediaStore;
use crate::metrics::Metrics;
use crate::store::{FaultKind, IngestContext, IngestOutcome, StorageFault, Store, StoreError};

/// Everything the path from a verified request to a stored message needs.
#[derive(Clone)]
pub struct Ingest {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub media: Arc<MediaStore>,
    pub metrics: Arc<Metrics>,
    pub dispatch: DispatchHandle,
    /// `appId` put in every event.
    pub app_id: Option<Arc<str>>,
    /// How long this node's lease on a new delivery lasts.
    pub lease: Duration,
    /// This node sends deliveries itself; otherwise it leaves them to the dispatchers.
    pub dispatch_here: bool,
    pub call_recording_wait: Duration,
    /// `max_mails_per_conversation_per_minute`; None: no cap.
    pub mail_flood_cap: Option<u32>,
}

/// Why a provider request was not stored.
pub enum Refusal {
    /// Answered as the error says (a malformed request, a storage fault).
    Answered(ApiError),
    /// Nothing is connected for the request, or its signature is wrong: answered alike, so
    /// that an unsigned request learns nothing of what is connected. `reason` is the metric's
    /// label (`not_connected`, `invalid_signature`), `detail` the log's.
    Unverified {
        reason: &'static str,
        detail: String,
    },
}

impl<E: Into<ApiError>> From<E> for Refusal {
    fn from(e: E) -> Self {
        Refusal::Answered(e.into())
    }
}

impl Ingest {
    /// A request `C` reads, from finding its account to the answer to give once it is stored.
    /// `base`: the public URL the provider called, without its path (signed media links
    /// start with it).
    pub async fn receive<C: Channel>(
        &self,
        request: &ProviderRequest,
        base: &str,
    ) -> Result<Response, Refusal> {
        let parsed = C::parse(request)?;
        let key = C::route(&parsed);
        let Some(account) = self.account(C::PROVIDER, &key).await? else {
            let address = key
                .address
                .as_deref()
                .or(key.account_id.as_deref())
                .unwrap_or("this request");
            // Mail for an address nobody claims: 404, which the mail services retry (for
            // hours to days), so mail sent before its address is connected is not lost. Which
            // addresses receive mail is public anyway (MX records, the addresses themselves),
            // unlike which phone numbers are connected.
            if C::MAIL {
                return Err(Refusal::Answered(ApiError::new(
                    axum::http::StatusCode::NOT_FOUND,
                    "unknown_recipient",
                    format!("no location receives mail for {address} (nor for its domain)"),
                )));
            }
            return Err(Refusal::Unverified {
                reason: "not_connected",
                detail: format!("no location has {} connected for {address}", C::PROVIDER),
            });
        };
        C::verify(request, &parsed, &account).map_err(|e| match e {
            ChannelError::BadSignature(detail) => Refusal::Unverified {
                reason: "invalid_signature",
                detail,
            },
            other => Refusal::Answered(other.into()),
        })?;
        let now = self.clock.now_ms();
        let handled = C::handle(request, parsed, &account, now)?;
        if let Some(nonce) = &handled.nonce {
            if self.store.nonce_seen(C::PROVIDER, nonce).await? {
                return Err(Refusal::Unverified {
                    reason: "replayed",
                    detail: format!("a request with this nonce ({nonce:.40}) was stored before"),
                });
            }
        }
        let nonce = handled.nonce.map(|n| (C::PROVIDER, n));
        let mut parts = vec![(account.location_id.clone(), handled.facts)];
        for (key, fact) in handled.routed {
            let Some(location) = self.route::<C>(&key, &account.secret).await? else {
                continue;
            };
            match parts.iter_mut().find(|(l, _)| *l == location) {
                Some((_, facts)) => facts.push(fact),
                None => parts.push((location, vec![fact])),
            }
        }
        self.file_parts_once(C::PROVIDER, parts, base, now, nonce)
            .await?;
        Ok(handled.reply)
    }

    /// The account `key` finds: by its address and the rest of its key, else by each of its
    /// other addresses in order.
    pub async fn account(
        &self,
        provider: &str,
        key: &RouteKey,
    ) -> Result<Option<ChannelAccount>, StoreError> {
        if let Some(account) = self.store.find_channel_account(provider, key).await? {
            return Ok(Some(account));
        }
        for address in &key.also {
            let by_address = RouteKey {
                address: Some(address.clone()),
                ..RouteKey::default()
            };
            if let Some(account) = self
                .store
                .find_channel_account(provider, &by_address)
                .await?
            {
                return Ok(Some(account));
            }
        }
        Ok(None)
    }

    /// The location of a fact the request carries for another account: found by `key`, and
    /// only when that account holds `secret`, the one that verified the request (compared in
    /// constant time). Otherwise the fact is skipped: counted, and logged within a budget.
    async fn route<C: Channel>(
        &self,
        key: &RouteKey,
        secret: &str,
    ) -> Result<Option<String>, StoreError> {
        let why = match self.account(C::PROVIDER, key).await? {
            Some(other) if bool::from(other.secret.as_bytes().ct_eq(secret.as_bytes())) => {
                return Ok(Some(other.location_id));
            }
            Some(_) => "its account holds another secret than the one that verified the request",
            None => "no location claims it",
        };
        let second = u64::try_from(self.clock.now_ms() / 1000).unwrap_or_default();
        if let Some(not_logged) = self.metrics.fact_skipped(C::PROVIDER, second) {
            let address = key
                .address
                .as_deref()
                .or(key.account_id.as_deref())
                .unwrap_or("(none)");
            let shown: String = address.chars().take(100).collect();
            tracing::warn!(
                provider = C::PROVIDER,
                not_logged,
                "a fact for {shown:?} skipped: {why}"
            );
        }
        Ok(None)
    }

    /// Verified facts of `provider` for one location, as of `now` (when they were received):
    /// their media kept, stored in one transaction, the deliveries handed to the dispatcher.
    /// Returns once committed.
    pub async fn file(
        &self,
        provider: &'static str,
        location_id: &str,
        facts: Vec<Fact>,
        base: &str,
        now: i64,
    ) -> Result<IngestOutcome, StoreError> {
        self.file_parts(provider, vec![(location_id.to_owned(), facts)], base, now)
            .await
    }

    /// As [`Ingest::file`], for facts of several locations from one request: all of them
    /// commit together, or none does.
    pub async fn file_parts(
        &self,
        provider: &'static str,
        parts: Vec<(String, Vec<Fact>)>,
        base: &str,
        now: i64,
    ) -> Result<IngestOutcome, StoreError> {
        self.file_parts_once(provider, parts, base, now, None).await
    }

    /// As [`Ingest::file_parts`], storing `nonce` (provider, value) with the facts.
    async fn file_parts_once(
        &self,
        provider: &'static str,
        mut parts: Vec<(String, Vec<Fact>)>,
        base: &str,
        now: i64,
        nonce: Option<(&'static str, String)>,
    ) -> Result<IngestOutcome, StoreError> {
        for (_, facts) in &mut parts {
            self.keep_media(facts, base, now).await?;
        }
        let context = IngestContext {
            app_id: self.app_id.clone(),
            now,
            lease_until: self
                .dispatch_here
                .then(|| now + self.lease.as_millis() as i64),
            handoffs: Some(self.dispatch.handoffs()),
            call_recording_wait_ms: self.call_recording_wait.as_millis() as i64,
            nonce,
            mail_flood_cap: self.mail_flood_cap,
        };
        let locations: Vec<String> = parts.iter().map(|(l, _)| l.clone()).collect();
        let mut outcome = self.store.ingest_parts(parts, &context).await?;
        tracing::info!(
            provider,
            locations = ?locations,
            messages = ?outcome.message_ids,
            deliveries = outcome.jobs.len() + outcome.handed_off,
            "provider request stored"
        );
        self.metrics.provider_request();
        if !outcome.suppressed.is_empty() {
            self.suppressed(provider, &outcome.suppressed);
        }
        self.dispatch.hand_off(std::mem::take(&mut outcome.jobs));
        Ok(outcome)
    }

    /// Mails stored over their conversation's flood cap: counted, and logged within a budget.
    fn suppressed(&self, provider: &'static str, suppressed: &[(String, String)]) {
        let second = u64::try_from(self.clock.now_ms() / 1000).unwrap_or_default();
        for (message_id, conversation_id) in suppressed {
            if let Some(not_logged) = self.metrics.mail_suppressed(second) {
                tracing::warn!(
                    provider,
                    message_id,
                    conversation_id,
                    not_logged,
                    cap = self.mail_flood_cap,
                    "mail stored but not delivered: its conversation is over max_mails_per_conversation_per_minute (an auto-reply loop?)"
                );
            }
        }
    }

    /// Keep the files a request carried (a mail's attachments): each becomes a signed link in
    /// the message's `attachments`, in order, and the HTML's `cid:` references point to it; a
    /// file over `max_attachment_bytes` is listed in `omittedAttachments` instead. A file that
    /// cannot be written fails the request as a storage fault: nothing is acknowledged
    /// without its attachments.
    async fn keep_files(
        &self,
        message: &mut NewMessage,
        base: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let Some(email) = message.email.as_mut() else {
            return Ok(());
        };
        for file in std::mem::take(&mut email.files) {
            if file.bytes.len() > self.media.max_bytes() {
                email
                    .omitted_attachments
                    .push(switchboard_events::OmittedAttachment {
                        name: file.name,
                        content_type: file.content_type,
                        size: file.bytes.len() as u64,
                    });
                continue;
            }
            let kept = self
                .media
                .keep(&file.bytes, &file.content_type)
                .await
                .map_err(|e| {
                    let kind = match e.raw_os_error() {
                        Some(28) => FaultKind::DiskFull,
                        Some(30) => FaultKind::ReadOnly,
                        _ => FaultKind::Io,
                    };
                    StoreError::Unavailable(StorageFault {
                        kind,
                        source: anyhow::Error::new(e).context("keeping an attachment"),
                    })
                })?;
            let url = self
                .media
                .signed_url_named(base, &kept, &file.name, now_ms / 1000);
            if let (Some(id), Some(body)) = (&file.content_id, message.body.as_mut()) {
                *body = body.replace(&format!("cid:{id}"), &url.replace('&', "&amp;"));
            }
            message.attachments.push(url);
        }
        Ok(())
    }

    /// Download the media a channel asked to keep and point the facts at signed links to the
    /// copies; keep the files a request carried ([`Ingest::keep_files`]). A failed download
    /// keeps the provider's URL (logged), so the message is not lost.
    async fn keep_media(
        &self,
        facts: &mut [Fact],
        base: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        for fact in facts {
            let update = match fact {
                Fact::Message(message) => {
                    self.keep_files(message, base, now_ms).await?;
                    continue;
                }
                Fact::Call(update) => update,
            };
            let Some(recording) = update.recording.as_mut() else {
                continue;
            };
            let Some(fetch) = recording.download.take() else {
                continue;
            };
            match self.media.download(&fetch).await {
                Ok(file) => recording.url = self.media.signed_url(base, &file, now_ms / 1000),
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    call_sid = %update.call_sid,
                    "keeping the recording failed; the event carries the provider's URL"
                ),
            }
        }
        Ok(())
    }
}
