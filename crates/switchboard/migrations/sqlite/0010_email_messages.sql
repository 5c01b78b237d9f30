-- Each stored mail's RFC 5322 Message-ID and the thread it was filed in, per location:
-- threading finds a reply's thread through any id of its References / In-Reply-To chain, and a
-- Message-ID stored before with other content marks the new mail `messageIdReused`.
CREATE TABLE email_messages (
    location_id      TEXT NOT NULL REFERENCES locations(id),
    email_message_id TEXT NOT NULL,
    message_id       TEXT NOT NULL REFERENCES messages(id),
    thread_id        TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    PRIMARY KEY (location_id, email_message_id, message_id)
);
CREATE INDEX email_messages_by_thread ON email_messages (location_id, thread_id);
