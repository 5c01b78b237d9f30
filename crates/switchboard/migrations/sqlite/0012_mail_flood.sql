-- The conversation each stored mail was filed in: the flood cap counts a conversation's mail of
-- the last minute (an auto-reply loop between two robots is stored, but not delivered past it).
ALTER TABLE email_messages ADD COLUMN conversation_id TEXT;
CREATE INDEX email_messages_by_conversation ON email_messages (conversation_id, created_at);
