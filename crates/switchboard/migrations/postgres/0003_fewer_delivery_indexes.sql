-- A pending delivery's webhook is the first column of deliveries_conversation_head (the same
-- rows): this index was a second copy that every insert and every status change wrote.
DROP INDEX deliveries_by_webhook;
