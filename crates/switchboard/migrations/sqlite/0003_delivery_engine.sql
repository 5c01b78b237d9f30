-- Webhook filters, ordering, limits, retry schedule, secret rotation, health.
ALTER TABLE webhooks ADD COLUMN message_types TEXT;          -- JSON array; NULL: every type
ALTER TABLE webhooks ADD COLUMN direction TEXT;              -- NULL: both
ALTER TABLE webhooks ADD COLUMN ordering TEXT NOT NULL DEFAULT 'none';
ALTER TABLE webhooks ADD COLUMN max_in_flight INTEGER;
ALTER TABLE webhooks ADD COLUMN max_per_second REAL;
ALTER TABLE webhooks ADD COLUMN retry_schedule TEXT;         -- JSON array of milliseconds
ALTER TABLE webhooks ADD COLUMN allowed_networks TEXT;       -- JSON array of CIDRs
ALTER TABLE webhooks ADD COLUMN legacy_signature INTEGER NOT NULL DEFAULT 0;
ALTER TABLE webhooks ADD COLUMN previous_secret TEXT;
ALTER TABLE webhooks ADD COLUMN previous_secret_until INTEGER;
ALTER TABLE webhooks ADD COLUMN disabled_at INTEGER;
ALTER TABLE webhooks ADD COLUMN disabled_reason TEXT;
ALTER TABLE webhooks ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE webhooks ADD COLUMN failing_since INTEGER;
ALTER TABLE webhooks ADD COLUMN breaker_open_until INTEGER;

-- Ordering per conversation; a replay starts a new retry cycle after `retry_offset` attempts.
ALTER TABLE deliveries ADD COLUMN conversation_id TEXT;
ALTER TABLE deliveries ADD COLUMN event_seq INTEGER;
ALTER TABLE deliveries ADD COLUMN retry_offset INTEGER NOT NULL DEFAULT 0;
CREATE INDEX deliveries_conversation_head ON deliveries (webhook_id, conversation_id, event_seq)
    WHERE status = 'pending';

CREATE INDEX events_by_time ON events (created_at);
CREATE INDEX attempts_by_time ON attempts (started_at);

-- Server secrets shared by every node (signing keys, the generated admin token).
CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
