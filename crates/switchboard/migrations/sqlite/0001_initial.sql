-- Switchboard schema (SQLite). Times are milliseconds since the Unix epoch.

CREATE TABLE locations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

-- One account per provider per location (Twilio: account SID and auth token).
CREATE TABLE channel_accounts (
    location_id TEXT NOT NULL REFERENCES locations(id),
    provider    TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    secret      TEXT NOT NULL,
    settings    TEXT NOT NULL DEFAULT '{}',
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (location_id, provider)
);
CREATE INDEX channel_accounts_by_account ON channel_accounts (provider, account_id);

-- Addresses (phone numbers, page ids, mailboxes) routed to a location; one location each.
CREATE TABLE channel_addresses (
    provider    TEXT NOT NULL,
    address     TEXT NOT NULL,
    location_id TEXT NOT NULL REFERENCES locations(id),
    PRIMARY KEY (provider, address)
);

CREATE TABLE contacts (
    id            TEXT PRIMARY KEY,
    location_id   TEXT NOT NULL REFERENCES locations(id),
    identity_kind TEXT NOT NULL,
    identity      TEXT NOT NULL,
    name          TEXT,
    created_at    INTEGER NOT NULL,
    UNIQUE (location_id, identity_kind, identity)
);

-- One conversation per contact per location.
CREATE TABLE conversations (
    id              TEXT PRIMARY KEY,
    location_id     TEXT NOT NULL REFERENCES locations(id),
    contact_id      TEXT NOT NULL REFERENCES contacts(id),
    created_at      INTEGER NOT NULL,
    last_message_at INTEGER NOT NULL,
    UNIQUE (location_id, contact_id)
);

CREATE TABLE messages (
    id                  TEXT PRIMARY KEY,
    location_id         TEXT NOT NULL REFERENCES locations(id),
    conversation_id     TEXT NOT NULL REFERENCES conversations(id),
    contact_id          TEXT NOT NULL REFERENCES contacts(id),
    provider            TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    direction           TEXT NOT NULL,
    message_type        TEXT NOT NULL,
    status              TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    -- A provider's retry of the same message is a no-op.
    UNIQUE (location_id, provider, provider_message_id)
);

-- Emitted events, payload frozen as sent. seq orders them. Operational events
-- (WebhookDisabled) have no message and no location.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    message_id  TEXT REFERENCES messages(id),
    location_id TEXT,
    event_type  TEXT NOT NULL,
    payload     BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX events_by_message ON events (message_id);

CREATE TABLE webhooks (
    id          TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    events      TEXT NOT NULL,
    location_id TEXT REFERENCES locations(id),
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    deleted_at  INTEGER
);

-- The outbox: one row per (event, webhook). Retry state lives in the row.
CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL REFERENCES events(id),
    webhook_id      TEXT NOT NULL REFERENCES webhooks(id),
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    lease_until     INTEGER,
    created_at      INTEGER NOT NULL,
    finished_at     INTEGER
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_by_event ON deliveries (event_id);
CREATE INDEX deliveries_by_webhook ON deliveries (webhook_id) WHERE status = 'pending';

CREATE TABLE attempts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id   TEXT NOT NULL REFERENCES deliveries(id),
    attempt       INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    duration_ms   INTEGER NOT NULL,
    http_status   INTEGER,
    error         TEXT,
    response_body TEXT
);
CREATE INDEX attempts_by_delivery ON attempts (delivery_id);
