//! HTTP: provider ingress routes, the management API under `/v1`, and health checks.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::LengthLimitError;
use serde::de::DeserializeOwned;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::AsyncReadExt;

use crate::channels::{Channel, CHANNELS};
use crate::error::ApiError;
use crate::media::UrlError;
use crate::serve::{BodyBudgetSpent, BodyTimedOut};
use crate::startup::AppState;
use crate::store::StoreError;

pub(crate) mod admin;
mod channels;
pub mod host;
mod ingress;
pub mod openapi;
pub(crate) mod webhooks;

/// The route of a provider endpoint whose requests `C` reads: the one ingress handler.
pub fn provider_route<C: Channel>() -> axum::routing::MethodRouter<Arc<AppState>> {
    post(ingress::ingest::<C>)
}

/// Largest management API request body.
const MAX_JSON_BYTES: usize = 1 << 20;

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route(
            "/locations",
            post(admin::create_location).get(admin::list_locations),
        )
        .route("/locations/{location_id}", get(admin::get_location))
        .route(
            "/locations/{location_id}/channels",
            get(channels::list_channels),
        )
        .route(
            "/locations/{location_id}/channels/{provider}",
            put(channels::put_channel)
                .get(channels::get_channel)
                .delete(channels::delete_channel),
        )
        .route(
            "/webhooks",
            post(webhooks::create_webhook).get(webhooks::list_webhooks),
        )
        .route(
            "/webhooks/{webhook_id}",
            delete(webhooks::delete_webhook)
                .get(webhooks::get_webhook)
                .patch(webhooks::update_webhook),
        )
        .route(
            "/webhooks/{webhook_id}/secret",
            get(webhooks::get_webhook_secret),
        )
        .route(
            "/webhooks/{webhook_id}/rotate-secret",
            post(webhooks::rotate_secret),
        )
        .route(
            "/webhooks/{webhook_id}/enable",
            post(webhooks::enable_webhook),
        )
        .route(
            "/webhooks/{webhook_id}/disable",
            post(webhooks::disable_webhook),
        )
        .route("/webhooks/{webhook_id}/replay", post(webhooks::replay))
        .route(
            "/deliveries/{delivery_id}/retry",
            post(webhooks::retry_delivery),
        )
        .route("/events", get(webhooks::list_events))
        .route("/signing-keys", get(admin::signing_keys))
        .route("/messages/{message_id}", get(admin::get_message))
        .route(
            "/messages/{message_id}/deliveries",
            get(admin::get_message_deliveries),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));

    // Every channel's endpoints, from the registry.
    let mut providers = Router::new();
    for channel in CHANNELS {
        for endpoint in channel.endpoints() {
            providers = providers.route(endpoint.path, (endpoint.handler)());
        }
    }

    providers
        .route("/attachments/{file}", get(attachment))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::map_response(json_errors))
        .layer(middleware::from_fn(host::require_valid_host))
        .with_state(state)
}

/// A dispatcher-only node answers health checks and metrics, nothing else.
pub fn health_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::map_response(json_errors))
        .layer(middleware::from_fn(host::require_valid_host))
        .with_state(state)
}

/// Errors raised before a handler runs come as text: axum's extractor rejections (a path
/// segment that is not UTF-8, a body over axum's own limit). Give them the JSON error shape
/// every other error has, keeping their status, headers and message.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let code = match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "unprocessable",
        500..=599 => "internal",
        _ => "error",
    };
    let mut json = ApiError::new(status, code, message).into_response();
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    json.headers_mut().extend(parts.headers);
    json
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// How long `/readyz` waits for the store's answer: a probe must answer promptly, also while
/// every database connection waits for a database that is away.
const READINESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let Ok(health) = tokio::time::timeout(READINESS_TIMEOUT, state.store.health()).await else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the database did not answer within {READINESS_TIMEOUT:?}"),
        ));
    };
    health.map_err(|e| {
        let message = match &e {
            // Logged by the store, once per episode.
            StoreError::Unavailable(fault) => {
                format!("the store cannot write: {}", fault.kind.describe())
            }
            _ => {
                tracing::warn!(error = %e, "database not ready");
                "the database does not answer".to_owned()
            }
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
    })?;
    Ok(Json(json!({ "status": "ready" })))
}

/// A stored attachment, behind a signed, expiring URL (no bearer token: subscribers follow it).
async fn attachment(
    State(state): State<Arc<AppState>>,
    Path(file): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params: Vec<(String, String)> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let forbidden = |m: &str| ApiError::new(StatusCode::FORBIDDEN, "invalid_signature", m);
    let (Some(expires), Some(signature)) = (param("expires"), param("signature")) else {
        return Err(forbidden(
            "the URL needs its expires and signature parameters",
        ));
    };
    let expires: i64 = expires
        .parse()
        .map_err(|_| forbidden("expires is not a number"))?;
    let now_secs = state.clock.now_ms() / 1000;
    let name = param("name");
    match state
        .media
        .verify(&file, expires, name, signature, now_secs)
    {
        Ok(()) => {}
        Err(UrlError::BadSignature) => return Err(forbidden("the URL's signature does not match")),
        Err(UrlError::Expired) => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "expired",
                "this link has expired",
            ))
        }
    }
    let (opened, length, content_type) = state
        .media
        .open(&file)
        .await
        .ok_or_else(|| ApiError::not_found(format!("no attachment {file}")))?;
    // Streamed in 64 KiB pieces: a recording may be tens of megabytes.
    let chunks = futures_util::stream::unfold(Some(opened), |opened| async move {
        let mut opened = opened?;
        let mut chunk = bytes::BytesMut::with_capacity(64 << 10);
        match opened.read_buf(&mut chunk).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(chunk.freeze()), Some(opened))),
            Err(e) => Some((Err(e), None)),
        }
    });
    // Saved, never shown inline from this origin; its name as the sender gave it (RFC 6266).
    let disposition = match name {
        Some(name) => format!(
            "attachment; filename*=UTF-8''{}",
            percent_encode_filename(name)
        ),
        None => "inline".to_owned(),
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_LENGTH, length.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// A file name as RFC 5987 `attr-char`s (every other byte percent-encoded).
fn percent_encode_filename(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The OpenAPI document, rendered once.
async fn openapi_json() -> Response {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = DOCUMENT.get_or_init(|| openapi::document().to_string());
    ([(header::CONTENT_TYPE, "application/json")], text.as_str()).into_response()
}

/// Prometheus text format.
async fn metrics(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(expected) = &state.metrics_token_hash {
        if !bearer_matches(&headers, expected) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token in the Authorization header (metrics_token)",
            ));
        }
    }
    // Without the queue when the database does not answer: the other metrics (storage
    // faults among them) matter most then.
    let depth = state
        .metrics
        .queue_depth(state.store.as_ref(), state.clock.now_ms())
        .await;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(depth, state.store.faults()),
    )
        .into_response())
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// Bearer token check for `/v1`, in constant time (both sides hashed to equal length first).
async fn require_admin(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    // The scheme is case-insensitive (RFC 9110 §11.1).
    if bearer_matches(request.headers(), &state.admin_token_hash) {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

/// Whether `headers` carry `Authorization: Bearer <token>` for the token hashed as `expected`,
/// compared in constant time.
fn bearer_matches(headers: &axum::http::HeaderMap, expected: &[u8; 32]) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| Sha256::digest(t.trim().as_bytes()))
        .is_some_and(|hash| bool::from(hash.as_slice().ct_eq(expected)))
}

/// Read a body of at most `limit` bytes: larger is a 413, a body that does not arrive within
/// `request_timeout` a 408, one that cannot be read (the client left, broken chunking) a 400;
/// each with a JSON error.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let causes = std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |s| {
            s.source()
        });
        for cause in causes {
            if cause.is::<BodyBudgetSpent>() {
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_busy",
                    format!("{BodyBudgetSpent}; try again shortly"),
                );
            }
            if let Some(timed_out) = cause.downcast_ref::<BodyTimedOut>() {
                return ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    timed_out.to_string(),
                );
            }
            if cause.is::<LengthLimitError>() {
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the request body is larger than {limit} bytes"),
                );
            }
        }
        ApiError::bad_request(
            "unreadable_body",
            format!("the request body could not be read: {e}"),
        )
    })
}

/// Whether any string in the JSON document `bytes`, key or value, holds a NUL.
fn holds_nul(bytes: &[u8]) -> bool {
    fn walk(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(walk),
            serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || walk(v)),
            _ => false,
        }
    }
    serde_json::from_slice(bytes).is_ok_and(|value| walk(&value))
}

/// A JSON request body whose every rejection is an [`ApiError`] that says what is wrong.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        decode_json(&json_bytes(req).await?).map(JsonBody)
    }
}

/// The bytes of a JSON request body (415 unless it says it is JSON, 413 past the limit), to
/// decode with [`decode_json`].
pub async fn json_bytes(req: Request) -> Result<Bytes, ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ));
    }
    read_body(req.into_body(), MAX_JSON_BYTES).await
}

/// A JSON body as `T`, or the [`ApiError`] that says what is wrong with it.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // PostgreSQL text cannot hold NUL, which JSON can only carry as the escape `\u0000`.
    if bytes.windows(6).any(|w| w == b"\\u0000") && holds_nul(bytes) {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "a string in the body contains a NUL character (\\u0000)",
        ));
    }
    // Errors in the data name the field they are in (`events: invalid type: null, …`).
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let e = e.into_inner();
        if !e.is_data() {
            ApiError::bad_request("invalid_json", e.to_string())
        } else if path == "." {
            ApiError::unprocessable("invalid_body", e.to_string())
        } else {
            ApiError::unprocessable("invalid_body", format!("{path}: {e}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
    Ok(parsed)
}
