-- Calls whose callbacks are still being merged (and, once emitted, what was merged).
CREATE TABLE calls (
    location_id TEXT NOT NULL REFERENCES locations(id),
    provider    TEXT NOT NULL,
    call_sid    TEXT NOT NULL,
    state       TEXT NOT NULL,
    -- When the call may be emitted (final status known, recording in or waited for); NULL
    -- while its final status is unknown or once emitted.
    emit_at     INTEGER,
    message_id  TEXT,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (provider, call_sid)
);
CREATE INDEX calls_due ON calls (emit_at) WHERE emit_at IS NOT NULL;
