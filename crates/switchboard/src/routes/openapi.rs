//! The OpenAPI 3.1 description of the management API and the provider routes, served at
//! `/openapi.json`. Written by hand next to the routes it describes; a test checks that every
//! route the router serves is in it.

use serde_json::{json, Value};

pub(crate) fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn json_body(schema: Value) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema } } })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn path_param(name: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } })
}

/// The document.
pub fn document() -> Value {
    let webhook_settings = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "url": { "type": "string", "format": "uri" },
            "events": { "type": "array", "items": { "enum": ["InboundMessage", "OutboundMessage", "WebhookDisabled"] } },
            "locationId": { "type": ["string", "null"] },
            "messageTypes": { "type": ["array", "null"], "items": { "enum": ["SMS", "CALL", "Email", "GMB", "FB", "IG", "Live Chat", "WhatsApp"] } },
            "direction": { "enum": ["inbound", "outbound", null] },
            "ordering": { "enum": ["none", "conversation"] },
            "maxInFlight": { "type": ["integer", "null"], "minimum": 1 },
            "maxPerSecond": { "type": ["number", "null"], "minimum": 0.01, "maximum": 100000 },
            "retrySchedule": { "type": ["array", "null"], "items": { "type": "string", "examples": ["5s", "10m"] }, "maxItems": 50 },
            "allowedNetworks": { "type": ["array", "null"], "items": { "type": "string", "examples": ["10.0.0.0/8"] } },
            "legacySignature": { "type": "boolean" }
        }
    });
    let errors = |codes: &[(&str, &str)]| -> Value {
        let mut map = serde_json::Map::new();
        for (code, description) in codes {
            map.insert((*code).to_owned(), error_response(description));
        }
        map.insert(
            "401".into(),
            error_response("Missing or wrong bearer token"),
        );
        Value::Object(map)
    };
    let with = |mut responses: Value, extra: Value| -> Value {
        if let (Some(r), Some(e)) = (responses.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                r.insert(k.clone(), v.clone());
            }
        }
        responses
    };
    let any = json!({ "type": "object" });
    // The channel-configuration API: one route, each channel's settings.
    let names: Vec<&str> = crate::channels::CHANNELS.iter().map(|c| c.name()).collect();
    let provider_param =
        json!({ "name": "provider", "in": "path", "required": true, "schema": { "enum": names } });
    let settings_schemas: Vec<Value> = crate::channels::CHANNELS
        .iter()
        .map(|c| {
            let mut schema = c.settings_schema();
            schema["title"] = json!(c.name());
            schema
        })
        .collect();
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Switchboard",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Inbound messaging gateway: provider webhooks in, signed InboundMessage / OutboundMessage events out."
        },
        "security": [{ "bearer": [] }],
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "description": "The admin token" } },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": { "error": { "type": "object", "required": ["code", "message"],
                        "properties": { "code": { "type": "string" }, "message": { "type": "string" } } } }
                },
                "WebhookSettings": webhook_settings
            }
        },
        "paths": {
            "/v1/locations": {
                "post": {
                    "summary": "Create a location", "tags": ["locations"],
                    "requestBody": json_body(json!({ "type": "object", "required": ["name"], "properties": { "name": { "type": "string" } } })),
                    "responses": with(errors(&[("422", "Invalid name")]), json!({ "201": ok("Created", any.clone()) }))
                },
                "get": {
                    "summary": "Every location, oldest first: {\"data\":[…]}", "tags": ["locations"],
                    "responses": with(errors(&[]), json!({ "200": ok("The locations", any.clone()) }))
                }
            },
            "/v1/locations/{locationId}": { "get": {
                "summary": "A location", "tags": ["locations"], "parameters": [path_param("locationId")],
                "responses": with(errors(&[("404", "No such location")]), json!({ "200": ok("The location", any.clone()) }))
            }},
            "/v1/locations/{locationId}/channels": { "get": {
                "summary": "Every channel the location has configured, as each channel's GET shows it: {\"data\":[…]}", "tags": ["locations"],
                "parameters": [path_param("locationId")],
                "responses": with(errors(&[("404", "No such location")]), json!({ "200": ok("The channels", any.clone()) }))
            }},
            "/v1/locations/{locationId}/channels/{provider}": { "put": {
                "summary": "Configure a channel: its account, the addresses it claims and its settings (secrets are write-only)", "tags": ["locations"],
                "parameters": [path_param("locationId"), provider_param.clone()],
                "requestBody": json_body(json!({ "oneOf": settings_schemas })),
                "responses": with(errors(&[("404", "No such location or channel"), ("409", "An address belongs to another location"), ("422", "Invalid settings (the error names the field)")]),
                    json!({ "200": ok("Configured", any.clone()) }))
            },
            "get": {
                "summary": "The channel's configuration: secrets masked (set, last 4 characters)", "tags": ["locations"],
                "parameters": [path_param("locationId"), provider_param.clone()],
                "responses": with(errors(&[("404", "No such channel, or not configured")]), json!({ "200": ok("The configuration", any.clone()) }))
            },
            "delete": {
                "summary": "Remove the channel: its addresses are freed; what was stored stays", "tags": ["locations"],
                "parameters": [path_param("locationId"), provider_param],
                "responses": with(errors(&[("404", "No such channel, or not configured")]), json!({ "204": { "description": "Removed" } }))
            }},
            "/v1/webhooks": {
                "post": {
                    "summary": "Create a webhook (the answer holds its secret)", "tags": ["webhooks"],
                    "requestBody": json_body(json!({ "$ref": "#/components/schemas/WebhookSettings" })),
                    "responses": with(errors(&[("422", "Invalid settings or a forbidden target")]), json!({ "201": ok("Created", any.clone()) }))
                },
                "get": { "summary": "Webhooks", "tags": ["webhooks"], "responses": with(errors(&[]), json!({ "200": ok("Webhooks", any.clone()) })) }
            },
            "/v1/webhooks/{webhookId}": {
                "get": { "summary": "A webhook", "tags": ["webhooks"], "parameters": [path_param("webhookId")],
                    "responses": with(errors(&[("404", "No such webhook")]), json!({ "200": ok("The webhook", any.clone()) })) },
                "patch": { "summary": "Change a webhook's settings", "tags": ["webhooks"], "parameters": [path_param("webhookId")],
                    "requestBody": json_body(json!({ "$ref": "#/components/schemas/WebhookSettings" })),
                    "responses": with(errors(&[("404", "No such webhook"), ("422", "Invalid settings")]), json!({ "200": ok("The webhook", any.clone()) })) },
                "delete": { "summary": "Delete a webhook (unfinished deliveries are cancelled)", "tags": ["webhooks"], "parameters": [path_param("webhookId")],
                    "responses": with(errors(&[("404", "No such webhook")]), json!({ "204": { "description": "Deleted" } })) }
            },
            "/v1/webhooks/{webhookId}/secret": { "get": { "summary": "The signing secret(s)", "tags": ["webhooks"], "parameters": [path_param("webhookId")],
                "responses": with(errors(&[("404", "No such webhook")]), json!({ "200": ok("Secrets", any.clone()) })) } },
            "/v1/webhooks/{webhookId}/rotate-secret": { "post": { "summary": "A new secret; both sign during the overlap", "tags": ["webhooks"], "parameters": [path_param("webhookId")],
                "requestBody": { "required": false, "content": { "application/json": { "schema": { "type": "object", "properties": { "overlapSeconds": { "type": "integer", "maximum": 2_592_000 } } } } } },
                "responses": with(errors(&[("404", "No such webhook"), ("422", "Overlap too long")]), json!({ "200": ok("The new secret", any.clone()) })) } },
            "/v1/webhooks/{webhookId}/enable": { "post": { "summary": "Enable (sends the backlog)", "tags": ["webhooks"], "parameters": [path_param("webhookId")],
                "responses": with(errors(&[("404", "No such webhook")]), json!({ "200": ok("The webhook", any.clone()) })) } },
            "/v1/webhooks/{webhookId}/disable": { "post": { "summary": "Disable (sends WebhookDisabled)", "tags": ["webhooks"], "parameters": [path_param("webhookId")],
                "responses": with(errors(&[("404", "No such webhook")]), json!({ "200": ok("The webhook", any.clone()) })) } },
            "/v1/webhooks/{webhookId}/replay": { "post": { "summary": "Send again the deliveries of events in a time range", "tags": ["webhooks"], "parameters": [path_param("webhookId")],
                "requestBody": json_body(json!({ "type": "object", "required": ["since"], "properties": {
                    "since": { "type": "string", "format": "date-time" }, "until": { "type": "string", "format": "date-time" },
                    "status": { "enum": ["failed", "all"], "default": "failed" } } })),
                "responses": with(errors(&[("404", "No such webhook"), ("422", "Bad time or status")]), json!({ "202": ok("{\"replayed\",\"alreadyPending\"}", any.clone()) })) } },
            "/v1/deliveries/{deliveryId}/retry": { "post": { "summary": "Send a delivery again now", "tags": ["webhooks"], "parameters": [path_param("deliveryId")],
                "responses": with(errors(&[("404", "No such delivery"), ("409", "Being sent right now")]), json!({ "202": ok("Queued", any.clone()) })) } },
            "/v1/events": { "get": { "summary": "Every event in order, after a cursor", "tags": ["events"],
                "parameters": [
                    { "name": "after", "in": "query", "schema": { "type": "string" } },
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } }
                ],
                "responses": with(errors(&[("400", "Bad cursor or limit")]), json!({ "200": ok("A page of events", any.clone()) })) } },
            "/v1/signing-keys": { "get": { "summary": "Public keys of x-ghl-signature (Ed25519) and x-wh-signature (RSA)", "tags": ["events"],
                "responses": with(errors(&[]), json!({ "200": ok("SPKI PEM keys", any.clone()) })) } },
            "/v1/messages/{messageId}": { "get": { "summary": "A message in event shape (the bytes sent)", "tags": ["messages"], "parameters": [path_param("messageId")],
                "responses": with(errors(&[("404", "No such message")]), json!({ "200": ok("The event", any.clone()) })) } },
            "/v1/messages/{messageId}/deliveries": { "get": { "summary": "Each delivery of a message with every attempt", "tags": ["messages"], "parameters": [path_param("messageId")],
                "responses": with(errors(&[("404", "No such message")]), json!({ "200": ok("Deliveries", any.clone()) })) } },
            "/attachments/{file}": { "get": { "summary": "A stored recording by its signed link", "tags": ["providers"], "security": [],
                "parameters": [path_param("file"),
                    { "name": "expires", "in": "query", "required": true, "schema": { "type": "integer" } },
                    { "name": "signature", "in": "query", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": { "description": "The file" }, "403": error_response("Bad signature"), "404": error_response("No such file"), "410": error_response("Expired") } } },
            "/healthz": { "get": { "summary": "The process answers", "tags": ["operations"], "security": [], "responses": { "200": ok("ok", any.clone()) } } },
            "/readyz": { "get": { "summary": "The database answers", "tags": ["operations"], "security": [], "responses": { "200": ok("ready", any.clone()), "503": error_response("Not ready") } } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "tags": ["operations"], "security": [], "responses": { "200": { "description": "Text exposition format", "content": { "text/plain": { "schema": { "type": "string" } } } } } } },
            "/openapi.json": { "get": { "summary": "This document", "tags": ["operations"], "security": [], "responses": { "200": ok("OpenAPI 3.1", any) } } }
        }
    });
    // Each channel's endpoints, from the registry.
    for channel in crate::channels::CHANNELS {
        for endpoint in channel.endpoints() {
            let mut operation = channel.operation(endpoint);
            operation["summary"] = json!(endpoint.summary);
            operation["tags"] = json!(["providers"]);
            // Providers sign their requests; no bearer token.
            operation["security"] = json!([]);
            document["paths"][endpoint.path] = json!({ "post": operation });
        }
    }
    document
}
