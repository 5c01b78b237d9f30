//! The one provider route, written once for every channel: read the body within its limit,
//! rebuild the URL the provider called, and give the request to the ingest service (find the
//! account, verify, normalize, store in one transaction, hand the deliveries to the
//! dispatcher); acknowledge only with what it returns after the commit. A refusal is answered,
//! counted and logged here.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;

use super::host::public_url;
use super::read_body;
use crate::channels::{Channel, ProviderRequest};
use crate::error::ApiError;
use crate::ingest;
use crate::serve::ClientAddr;
use crate::startup::AppState;

/// Why a provider request was refused: what the provider is answered, and — for a request
/// that could not be verified — what only the log and the metric may say.
enum Refusal {
    Answered(ApiError),
    /// Answered 403 `invalid_signature` alike whether nothing is connected for the request or
    /// its signature is wrong, so that an unsigned request learns nothing of what is
    /// connected. `reason` is the metric's label, `detail` the log's.
    Unverified {
        reason: &'static str,
        detail: String,
        url: String,
        /// When the request's body had arrived: the answer waits until [`UNVERIFIED_FLOOR`]
        /// after it.
        since: tokio::time::Instant,
    },
}

/// How long after its body arrived a request that does not verify is answered, at the
/// earliest. Finding an account costs more when nothing is connected for the request (a cached
/// number is answered from memory, an unknown one after lookups in the database), and that
/// difference would tell an outsider which numbers are connected; this floor is far above
/// both, so the answer comes at the same time either way. It costs a refused caller a wait,
/// no work: providers whose requests verify never meet it.
pub const UNVERIFIED_FLOOR: std::time::Duration = std::time::Duration::from_millis(20);

impl<E: Into<ApiError>> From<E> for Refusal {
    fn from(e: E) -> Self {
        Refusal::Answered(e.into())
    }
}

pub async fn ingest<C: Channel>(
    State(state): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    peer: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let peer = peer.map(|Extension(p)| p);
    let refusal = match ingest_request::<C>(&state, &uri, peer.as_ref(), headers, body).await {
        Ok(response) => return Ok(response),
        Err(refusal) => refusal,
    };
    // A provider does not tell anyone when it is refused (most do not retry a 403): a wrong
    // auth token or URL would lose every message without a trace. Counted, and logged within a
    // budget so that outsiders cannot flood the log.
    let (answer, reason, detail) = match refusal {
        Refusal::Answered(e) => {
            let logged = match &e {
                ApiError::Client { code, message, .. } => Some((*code, message.clone())),
                _ => None,
            };
            match logged {
                Some((code, message)) => (e, code, message),
                None => return Err(e),
            }
        }
        Refusal::Unverified {
            reason,
            detail,
            url,
            since,
        } => {
            tokio::time::sleep_until(since + UNVERIFIED_FLOOR).await;
            let message = format!(
                "the request's signature does not verify; check the credentials connected for it and that the URL configured at the provider is {url}"
            );
            let answer = ApiError::new(StatusCode::FORBIDDEN, "invalid_signature", message);
            (answer, reason, detail)
        }
    };
    let second = u64::try_from(state.clock.now_ms() / 1000).unwrap_or_default();
    // `/metrics` may be read by anyone (without `metrics_token`): it must not tell a number
    // that is connected from one that is not, so both count as `invalid_signature` there. The
    // log, which only the operator reads, keeps the reason.
    let counted = if reason == "not_connected" {
        "invalid_signature"
    } else {
        reason
    };
    if let Some(not_logged) = state
        .metrics
        .provider_rejected(C::PROVIDER, counted, second)
    {
        // The message may quote what the request held: escaped, and cut short.
        let shown: String = detail.chars().take(300).collect();
        tracing::warn!(
            provider = C::PROVIDER,
            path = uri.path(),
            status = answer.status().as_u16(),
            reason,
            not_logged,
            "provider request refused: {shown:?}"
        );
    }
    Err(answer)
}

async fn ingest_request<C: Channel>(
    state: &AppState,
    uri: &axum::http::Uri,
    peer: Option<&ClientAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let limit = if C::MAIL {
        state.max_email_bytes
    } else {
        state.max_body_bytes
    };
    let body = read_body(body, limit).await?;
    let since = tokio::time::Instant::now();
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = public_url(
        state.public_url.as_deref(),
        &state.trusted_proxies,
        peer,
        &headers,
        path_and_query,
    )?;
    let request = ProviderRequest {
        url,
        headers,
        body,
        received_at_ms: state.clock.now_ms(),
    };
    // The public base is the URL the provider called, without its path and query.
    let base = &request.url[..request.url.len() - path_and_query.len()];
    state
        .ingest
        .receive::<C>(&request, base)
        .await
        .map_err(|refusal| match refusal {
            ingest::Refusal::Answered(e) => Refusal::Answered(e),
            ingest::Refusal::Unverified { reason, detail } => Refusal::Unverified {
                reason,
                detail,
                url: request.url.clone(),
                since,
            },
        })
}
