-- A conversation row is written once, when it is created: a new message no longer updates it
-- (its last message is the newest of its messages), so concurrent writers share no rows.
-- The column is no longer written; it stays (nullable) for nodes of the previous version
-- during a rolling upgrade, which still set it, and goes in a later release.
ALTER TABLE conversations ALTER COLUMN last_message_at DROP NOT NULL;
