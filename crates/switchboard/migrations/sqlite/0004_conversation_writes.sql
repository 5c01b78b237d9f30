-- A conversation row is written once, when it is created: a new message no longer updates it
-- (its last message is the newest of its messages). Concurrent writers then share no rows.
ALTER TABLE conversations DROP COLUMN last_message_at;
