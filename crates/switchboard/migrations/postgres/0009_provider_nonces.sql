-- Values a provider sends once (Mailgun's `token`), stored with the request's messages: a
-- request that carries one already stored is a replay and is refused. Pruned with the events.
CREATE TABLE provider_nonces (
    provider   TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (provider, nonce)
);
CREATE INDEX provider_nonces_by_age ON provider_nonces (created_at);
