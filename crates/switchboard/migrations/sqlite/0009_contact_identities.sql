-- A contact is found by any of its identities: a phone number (E.164), an e-mail address
-- (lower-cased), a channel-scoped id. Each belongs to one contact of a location. The contacts'
-- own identity columns keep what they held; contacts created from now on hold ('contact', their
-- id) there, and are found only through this table.
CREATE TABLE contact_identities (
    location_id TEXT NOT NULL REFERENCES locations(id),
    kind        TEXT NOT NULL,
    value       TEXT NOT NULL,
    contact_id  TEXT NOT NULL REFERENCES contacts(id),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (location_id, kind, value)
);
CREATE INDEX contact_identities_by_contact ON contact_identities (contact_id);
INSERT INTO contact_identities (location_id, kind, value, contact_id, created_at)
    SELECT location_id, identity_kind, identity, id, created_at FROM contacts;
