//! Webhooks under `/v1`: their settings checked, created, changed, read, deleted, enabled and
//! disabled. Their secrets and rotation are in `secrets`; replaying a range, retrying one
//! delivery and the ordered events feed in `deliveries`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use switchboard_events::standard::WebhookSecret;
use switchboard_events::{Direction, EventType, MessageType};

use super::JsonBody;
use crate::domain::ids::new_id;
use crate::domain::time::iso_millis;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::ssrf::TargetError;
use crate::startup::AppState;
use crate::store::{Ordering, Webhook};

mod deliveries;
mod secrets;

pub use deliveries::{list_events, replay, retry_delivery, Replay};
pub use secrets::{get_webhook_secret, rotate_secret, Rotate};

const MAX_URL_LEN: usize = 2048;
const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);
const MAX_OVERLAP_SECONDS: u64 = 30 * 24 * 3600;
const MIN_PER_SECOND: f64 = 0.01;
const MAX_PER_SECOND: f64 = 100_000.0;
const MAX_RETRY_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// `null` and absent differ in a PATCH: `Some(None)` clears, `None` leaves as is.
fn nullable<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A field that may be left out but has no "none": `null` is refused, not taken as "unchanged".
fn not_null<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The settings a webhook is created with or changed by.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookSettings {
    #[serde(default, deserialize_with = "not_null")]
    url: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    events: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    location_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    message_types: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    direction: Option<Option<String>>,
    #[serde(default, deserialize_with = "not_null")]
    ordering: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    max_in_flight: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    max_per_second: Option<Option<f64>>,
    #[serde(default, deserialize_with = "nullable")]
    retry_schedule: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    allowed_networks: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "not_null")]
    legacy_signature: Option<bool>,
}

fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::unprocessable(code, message)
}

impl WebhookSettings {
    /// Check every given field and apply it to `w`; the target is checked last (it resolves).
    async fn apply(self, state: &AppState, w: &mut Webhook) -> Result<(), ApiError> {
        if let Some(events) = self.events {
            if events.is_empty() {
                return Err(invalid(
                    "invalid_events",
                    "events must name at least one event",
                ));
            }
            let mut parsed = Vec::new();
            for name in &events {
                let event = EventType::parse(name).ok_or_else(|| {
                    invalid(
                        "invalid_events",
                        format!("unknown event `{name}`; known: InboundMessage, OutboundMessage, WebhookDisabled"),
                    )
                })?;
                if !parsed.contains(&event) {
                    parsed.push(event);
                }
            }
            w.events = parsed;
        }
        if let Some(location_id) = self.location_id {
            if let Some(id) = &location_id {
                if state.store.get_location(id).await?.is_none() {
                    return Err(invalid("unknown_location", format!("no location {id}")));
                }
            }
            w.location_id = location_id;
        }
        if let Some(types) = self.message_types {
            if let Some(types) = &types {
                if types.is_empty() {
                    return Err(invalid(
                        "invalid_message_types",
                        "messageTypes must not be empty (null: every type)",
                    ));
                }
                for t in types {
                    if matches!(MessageType::parse(t), MessageType::Other(_)) {
                        return Err(invalid(
                            "invalid_message_types",
                            format!("unknown messageType `{t}`; known: SMS, CALL, Email, GMB, FB, IG, Live Chat, WhatsApp"),
                        ));
                    }
                }
            }
            w.message_types = types;
        }
        if let Some(direction) = self.direction {
            w.direction = match direction.as_deref() {
                None => None,
                Some("inbound") => Some(Direction::Inbound),
                Some("outbound") => Some(Direction::Outbound),
                Some(other) => {
                    return Err(invalid(
                        "invalid_direction",
                        format!("direction `{other}` is not inbound or outbound"),
                    ))
                }
            };
        }
        if let Some(ordering) = self.ordering {
            w.ordering = match ordering.as_str() {
                "none" => Ordering::None,
                "conversation" => Ordering::Conversation,
                other => {
                    return Err(invalid(
                        "invalid_ordering",
                        format!("ordering `{other}` is not none or conversation"),
                    ))
                }
            };
        }
        if let Some(max) = self.max_in_flight {
            if max == Some(0) {
                return Err(invalid(
                    "invalid_max_in_flight",
                    "maxInFlight must be at least 1",
                ));
            }
            w.max_in_flight = max;
        }
        if let Some(rate) = self.max_per_second {
            if rate.is_some_and(|r| !(MIN_PER_SECOND..=MAX_PER_SECOND).contains(&r)) {
                return Err(invalid(
                    "invalid_max_per_second",
                    format!("maxPerSecond must be from {MIN_PER_SECOND} to {MAX_PER_SECOND}"),
                ));
            }
            w.max_per_second = rate;
        }
        if let Some(schedule) = self.retry_schedule {
            w.retry_schedule = match schedule {
                None => None,
                Some(list) => {
                    let parsed = list
                        .iter()
                        .map(|s| crate::config::parse_duration(s))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| {
                            invalid("invalid_retry_schedule", format!("retrySchedule: {e}"))
                        })?;
                    if parsed.len() > 50 {
                        return Err(invalid(
                            "invalid_retry_schedule",
                            "retrySchedule has at most 50 delays",
                        ));
                    }
                    if parsed.iter().any(|d| *d > MAX_RETRY_DELAY) {
                        return Err(invalid(
                            "invalid_retry_schedule",
                            "retrySchedule delays are at most 7 days each",
                        ));
                    }
                    Some(parsed)
                }
            };
        }
        if let Some(networks) = self.allowed_networks {
            w.allowed_networks = networks
                .unwrap_or_default()
                .iter()
                .map(|n| {
                    n.parse::<ipnet::IpNet>().map_err(|_| {
                        invalid(
                            "invalid_allowed_networks",
                            format!("`{n}` is not a network like 10.0.0.0/8"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(legacy) = self.legacy_signature {
            if legacy {
                // Make sure the key exists before a delivery needs it.
                state.keys.ensure_rsa().await?;
            }
            w.legacy_signature = legacy;
        }
        if let Some(url) = self.url {
            if url.len() > MAX_URL_LEN {
                return Err(invalid(
                    "invalid_url",
                    format!("url is longer than {MAX_URL_LEN} characters"),
                ));
            }
            w.url = url;
        }
        state
            .targets
            .with_networks(&w.allowed_networks)
            .check_target(&w.url)
            .await
            .map_err(|e| match e {
                TargetError::Forbidden(m) => invalid("forbidden_target", m),
                TargetError::Unresolvable(m) => invalid("unresolvable_target", m),
            })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    id: String,
    url: String,
    events: Vec<&'static str>,
    location_id: Option<String>,
    message_types: Option<Vec<String>>,
    direction: Option<&'static str>,
    ordering: &'static str,
    max_in_flight: Option<u32>,
    max_per_second: Option<f64>,
    retry_schedule: Option<Vec<String>>,
    allowed_networks: Vec<String>,
    legacy_signature: bool,
    created_at: String,
    disabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_reason: Option<String>,
    health: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_secret_valid_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl WebhookView {
    /// `metrics`: where this node's dispatcher publishes each webhook's probation.
    fn of(w: &Webhook, with_secret: bool, metrics: &Metrics) -> Self {
        let probation = metrics.webhook_state(&w.id).map(|s| s.probation);
        WebhookView {
            id: w.id.clone(),
            url: w.url.clone(),
            events: w.events.iter().map(|e| e.as_str()).collect(),
            location_id: w.location_id.clone(),
            message_types: w.message_types.clone(),
            direction: w.direction.map(|d| d.as_str()),
            ordering: w.ordering.as_str(),
            max_in_flight: w.max_in_flight,
            max_per_second: w.max_per_second,
            retry_schedule: w.retry_schedule.as_ref().map(|s| {
                s.iter()
                    .map(|d| humantime::format_duration(*d).to_string())
                    .collect()
            }),
            allowed_networks: w.allowed_networks.iter().map(|n| n.to_string()).collect(),
            legacy_signature: w.legacy_signature,
            created_at: iso_millis(w.created_at),
            disabled: w.disabled_at.is_some(),
            disabled_at: w.disabled_at.map(iso_millis),
            disabled_reason: w.disabled_reason.clone(),
            health: json!({
                "consecutiveFailures": w.health.consecutive_failures,
                "failingSince": w.health.failing_since.map(iso_millis),
                "breakerOpenUntil": w.health.breaker_open_until.map(iso_millis),
                "probation": probation,
                "backlogHeldAfter": w.backlog_after_seq,
            }),
            previous_secret_valid_until: w
                .previous_secrets
                .iter()
                .map(|p| p.until)
                .max()
                .map(iso_millis),
            secret: with_secret.then(|| w.secret.clone()),
        }
    }
}

fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    WebhookSecret::from_key(&key).to_whsec()
}

pub async fn create_webhook(
    State(state): State<Arc<AppState>>,
    JsonBody(input): JsonBody<WebhookSettings>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    if input.url.is_none() {
        return Err(invalid("invalid_url", "url is required"));
    }
    if input.events.is_none() {
        return Err(invalid(
            "invalid_events",
            "events is required, e.g. [\"InboundMessage\"]",
        ));
    }
    let mut webhook = Webhook::new(
        new_id(),
        String::new(),
        vec![],
        new_secret(),
        state.clock.now_ms(),
    );
    input.apply(&state, &mut webhook).await?;
    state.store.create_webhook(&webhook).await?;
    state.dispatch.webhooks_changed();
    Ok((
        StatusCode::CREATED,
        Json(WebhookView::of(&webhook, true, &state.metrics)),
    ))
}

pub async fn update_webhook(
    State(state): State<Arc<AppState>>,
    Path(webhook_id): Path<String>,
    JsonBody(input): JsonBody<WebhookSettings>,
) -> Result<Json<WebhookView>, ApiError> {
    let mut webhook = find_webhook(&state, &webhook_id).await?;
    input.apply(&state, &mut webhook).await?;
    state.store.update_webhook(&webhook).await?;
    state.dispatch.webhooks_changed();
    Ok(Json(WebhookView::of(&webhook, false, &state.metrics)))
}

pub async fn list_webhooks(
    State(state): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let webhooks = state.store.list_webhooks().await?;
    let views: Vec<WebhookView> = webhooks
        .iter()
        .map(|w| WebhookView::of(w, false, &state.metrics))
        .collect();
    Ok(Json(json!({ "data": views })))
}

async fn find_webhook(state: &AppState, id: &str) -> Result<Webhook, ApiError> {
    state
        .store
        .get_webhook(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no webhook {id}")))
}

pub async fn get_webhook(
    State(state): State<Arc<AppState>>,
    Path(webhook_id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    Ok(Json(WebhookView::of(
        &find_webhook(&state, &webhook_id).await?,
        false,
        &state.metrics,
    )))
}

pub async fn delete_webhook(
    State(state): State<Arc<AppState>>,
    Path(webhook_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state
        .store
        .delete_webhook(&webhook_id, state.clock.now_ms())
        .await?
    {
        state.dispatch.webhooks_changed();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no webhook {webhook_id}")))
    }
}

/// Enable a disabled webhook: its health starts afresh and its backlog is sent.
pub async fn enable_webhook(
    State(state): State<Arc<AppState>>,
    Path(webhook_id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    find_webhook(&state, &webhook_id).await?;
    state.store.enable_webhook(&webhook_id).await?;
    state.dispatch.webhooks_changed();
    Ok(Json(WebhookView::of(
        &find_webhook(&state, &webhook_id).await?,
        false,
        &state.metrics,
    )))
}

/// Disable a webhook by hand (`WebhookDisabled` is sent with reason `manual`).
pub async fn disable_webhook(
    State(state): State<Arc<AppState>>,
    Path(webhook_id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    find_webhook(&state, &webhook_id).await?;
    let now = state.clock.now_ms();
    let jobs = state
        .store
        .disable_webhook(
            &webhook_id,
            "manual",
            now,
            now + state.lease.as_millis() as i64,
        )
        .await?;
    state.dispatch.webhooks_changed();
    state.dispatch.hand_off(jobs);
    Ok(Json(WebhookView::of(
        &find_webhook(&state, &webhook_id).await?,
        false,
        &state.metrics,
    )))
}
