-- Whether the webhook's subscriber answered its last attempt (any HTTP status): after a
-- restart, a webhook that answered uses the shared delivery slots at once instead of starting
-- on probation among webhooks that never answered.
ALTER TABLE webhooks ADD COLUMN answered BOOLEAN NOT NULL DEFAULT FALSE;
