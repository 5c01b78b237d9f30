-- A provider's message id is unique across locations: Twilio signatures carry no timestamp,
-- so after a number moves to another location an old captured request would otherwise be
-- stored there again as a new message. Messages stored twice before this migration keep
-- their rows; the later copies get their id suffixed, so the index can be unique.
UPDATE messages
SET provider_message_id = provider_message_id || '#' || id
WHERE id NOT IN (
    SELECT MIN(id) FROM messages GROUP BY provider, provider_message_id
);
ALTER TABLE messages DROP CONSTRAINT messages_location_id_provider_provider_message_id_key;
CREATE UNIQUE INDEX messages_by_provider_id ON messages (provider, provider_message_id);
