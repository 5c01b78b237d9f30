-- Switchboard schema (PostgreSQL). Times are milliseconds since the Unix epoch. The same
-- tables and columns as the SQLite schema, so one body of SQL serves both.

CREATE TABLE locations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE channel_accounts (
    location_id TEXT NOT NULL REFERENCES locations(id),
    provider    TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    secret      TEXT NOT NULL,
    settings    TEXT NOT NULL DEFAULT '{}',
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (location_id, provider)
);
CREATE INDEX channel_accounts_by_account ON channel_accounts (provider, account_id);

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
    created_at    BIGINT NOT NULL,
    UNIQUE (location_id, identity_kind, identity)
);

CREATE TABLE conversations (
    id              TEXT PRIMARY KEY,
    location_id     TEXT NOT NULL REFERENCES locations(id),
    contact_id      TEXT NOT NULL REFERENCES contacts(id),
    created_at      BIGINT NOT NULL,
    last_message_at BIGINT NOT NULL,
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
    created_at          BIGINT NOT NULL,
    UNIQUE (location_id, provider, provider_message_id)
);

-- Events are numbered in commit order: inserts take a transaction-level advisory lock, so
-- the feed's cursor never skips an event that commits late.
CREATE TABLE events (
    seq         BIGSERIAL PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    message_id  TEXT REFERENCES messages(id),
    location_id TEXT,
    event_type  TEXT NOT NULL,
    payload     BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX events_by_message ON events (message_id);
CREATE INDEX events_by_time ON events (created_at);

CREATE TABLE webhooks (
    id                    TEXT PRIMARY KEY,
    url                   TEXT NOT NULL,
    events                TEXT NOT NULL,
    location_id           TEXT REFERENCES locations(id),
    secret                TEXT NOT NULL,
    created_at            BIGINT NOT NULL,
    deleted_at            BIGINT,
    message_types         TEXT,
    direction             TEXT,
    ordering              TEXT NOT NULL DEFAULT 'none',
    max_in_flight         BIGINT,
    max_per_second        DOUBLE PRECISION,
    retry_schedule        TEXT,
    allowed_networks      TEXT,
    legacy_signature      BOOLEAN NOT NULL DEFAULT FALSE,
    previous_secret       TEXT,
    previous_secret_until BIGINT,
    disabled_at           BIGINT,
    disabled_reason       TEXT,
    consecutive_failures  BIGINT NOT NULL DEFAULT 0,
    failing_since         BIGINT,
    breaker_open_until    BIGINT
);

CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL REFERENCES events(id),
    webhook_id      TEXT NOT NULL REFERENCES webhooks(id),
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    lease_until     BIGINT,
    created_at      BIGINT NOT NULL,
    finished_at     BIGINT,
    conversation_id TEXT,
    event_seq       BIGINT,
    retry_offset    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_by_event ON deliveries (event_id);
CREATE INDEX deliveries_by_webhook ON deliveries (webhook_id) WHERE status = 'pending';
CREATE INDEX deliveries_conversation_head ON deliveries (webhook_id, conversation_id, event_seq)
    WHERE status = 'pending';

CREATE TABLE attempts (
    id            BIGSERIAL PRIMARY KEY,
    delivery_id   TEXT NOT NULL REFERENCES deliveries(id),
    attempt       BIGINT NOT NULL,
    started_at    BIGINT NOT NULL,
    duration_ms   BIGINT NOT NULL,
    http_status   BIGINT,
    error         TEXT,
    response_body TEXT
);
CREATE INDEX attempts_by_delivery ON attempts (delivery_id);
CREATE INDEX attempts_by_time ON attempts (started_at);

CREATE TABLE calls (
    location_id TEXT NOT NULL REFERENCES locations(id),
    provider    TEXT NOT NULL,
    call_sid    TEXT NOT NULL,
    state       TEXT NOT NULL,
    emit_at     BIGINT,
    message_id  TEXT,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (provider, call_sid)
);
CREATE INDEX calls_due ON calls (emit_at) WHERE emit_at IS NOT NULL;

-- Server secrets shared by every node (signing keys, the generated admin token).
CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
