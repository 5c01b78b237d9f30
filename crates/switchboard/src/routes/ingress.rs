//! The one provider route, written once for every channel: read the body within its limit,
//! rebuild the URL the provider called, find the account, verify, normalize, store in one
//! transaction, hand the deliveries to the dispatcher, and only then acknowledge.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;

use super::read_body;
use crate::channels::{Channel, ProviderRequest};
use crate::domain::Fact;
use crate::error::ApiError;
use crate::startup::AppState;
use crate::store::IngestContext;

pub async fn ingest<C: Channel>(
    State(state): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let result = ingest_request::<C>(&state, &uri, headers, body).await;
    // A provider does not tell anyone when it is refused (Twilio does not retry a 403): a wrong
    // auth token or URL would lose every message without a trace. Counted, and logged within a
    // budget so that outsiders cannot flood the log.
    if let Err(ApiError::Client {
        status,
        code,
        message,
    }) = &result
    {
        let second = u64::try_from(state.clock.now_ms() / 1000).unwrap_or_default();
        if let Some(not_logged) = state.metrics.provider_rejected(C::PROVIDER, code, second) {
            // The message may quote what the request held: escaped, and cut short.
            let shown: String = message.chars().take(300).collect();
            tracing::warn!(
                provider = C::PROVIDER,
                path = uri.path(),
                status = status.as_u16(),
                code = *code,
                not_logged,
                "provider request refused: {shown:?}"
            );
        }
    }
    result
}

async fn ingest_request<C: Channel>(
    state: &AppState,
    uri: &axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(body, state.max_body_bytes).await?;
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = public_url(state.public_url.as_deref(), &headers, path_and_query)?;
    let request = ProviderRequest { url, headers, body };

    let parsed = C::parse(&request)?;
    let key = C::route(&parsed);
    let account = state
        .store
        .find_channel_account(C::PROVIDER, &key)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no location has {} connected for {}",
                C::PROVIDER,
                key.address
                    .as_deref()
                    .or(key.account_id.as_deref())
                    .unwrap_or("this request")
            ))
        })?;
    C::verify(&request, &parsed, &account)?;

    let now = state.clock.now_ms();
    let mut handled = C::handle(&request, parsed, &account, now)?;
    // The public base is the URL the provider called, without its path and query.
    let base = &request.url[..request.url.len() - path_and_query.len()];
    keep_media(state, &mut handled.facts, base, now).await;
    let context = IngestContext {
        app_id: state.app_id.clone(),
        now,
        lease_until: state
            .dispatch_here
            .then(|| now + state.lease.as_millis() as i64),
        call_recording_wait_ms: state.call_recording_wait.as_millis() as i64,
    };
    let outcome = state
        .store
        .ingest(&account.location_id, handled.facts, &context)
        .await?;
    tracing::info!(
        provider = C::PROVIDER,
        location_id = %account.location_id,
        messages = ?outcome.message_ids,
        deliveries = outcome.jobs.len(),
        "provider request stored"
    );
    state.metrics.provider_request();
    state.dispatch.hand_off(outcome.jobs);
    Ok(handled.reply)
}

/// Download the media a channel asked to keep and point the facts at signed links to the
/// copies. A failed download keeps the provider's URL (logged), so the message is not lost.
async fn keep_media(state: &AppState, facts: &mut [Fact], base: &str, now_ms: i64) {
    for fact in facts {
        let Fact::Call(update) = fact else { continue };
        let Some(recording) = update.recording.as_mut() else {
            continue;
        };
        let Some(fetch) = recording.download.take() else {
            continue;
        };
        match state.media.download(&fetch).await {
            Ok(file) => recording.url = state.media.signed_url(base, &file, now_ms / 1000),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                call_sid = %update.call_sid,
                "keeping the recording failed; the event carries the provider's URL"
            ),
        }
    }
}

/// The URL the provider called: the configured public URL, or one derived from `Host` and
/// `X-Forwarded-Proto`, followed by the path and query exactly as received.
fn public_url(
    configured: Option<&str>,
    headers: &HeaderMap,
    path_and_query: &str,
) -> Result<String, ApiError> {
    if let Some(base) = configured {
        return Ok(format!("{}{}", base.trim_end_matches('/'), path_and_query));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_host",
                "no Host header, and no public_url is configured to check signatures against",
            )
        })?;
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split(',').next())
        .map(str::trim)
        .filter(|p| matches!(*p, "http" | "https"))
        .unwrap_or("http");
    Ok(format!("{proto}://{host}{path_and_query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_comes_from_config_or_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "sb.example.com:8443".parse().unwrap());
        assert_eq!(
            public_url(Some("https://hooks.example.com/"), &headers, "/p?q=1").unwrap(),
            "https://hooks.example.com/p?q=1"
        );
        assert_eq!(
            public_url(None, &headers, "/p").unwrap(),
            "http://sb.example.com:8443/p"
        );
        headers.insert("x-forwarded-proto", "https, http".parse().unwrap());
        assert_eq!(
            public_url(None, &headers, "/p").unwrap(),
            "https://sb.example.com:8443/p"
        );
        assert!(public_url(None, &HeaderMap::new(), "/p").is_err());
    }
}
