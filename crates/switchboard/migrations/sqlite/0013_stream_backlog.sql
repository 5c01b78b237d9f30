-- A webhook whose subscriber has not answered keeps its backlog in the event stream: while this
-- is set, ingest writes no delivery rows for it, and a dispatcher writes those of the events
-- after this place in turn (then clears it), so a hanging subscriber costs ingest nothing.
ALTER TABLE webhooks ADD COLUMN backlog_after_seq INTEGER;
