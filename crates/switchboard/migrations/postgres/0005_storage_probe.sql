-- One row that /readyz writes while writes are failing: only a write tells whether the
-- store can write again. `pad` is filled and emptied again, a write of the size of a group
-- commit: on a nearly full disk a write of a few bytes may still fit where messages do not.
CREATE TABLE storage_probe (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    checks BIGINT NOT NULL,
    pad    BYTEA
);
INSERT INTO storage_probe (id, checks) VALUES (1, 0);
