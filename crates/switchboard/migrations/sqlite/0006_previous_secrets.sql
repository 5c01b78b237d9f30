-- Every secret replaced by a rotation signs until its own overlap ends (a second rotation
-- during an overlap no longer ends the first one's at once): JSON [{"secret","until"}], newest
-- first.
ALTER TABLE webhooks ADD COLUMN previous_secrets TEXT NOT NULL DEFAULT '[]';
UPDATE webhooks
   SET previous_secrets = json_array(json_object('secret', previous_secret, 'until', previous_secret_until))
 WHERE previous_secret IS NOT NULL AND previous_secret_until IS NOT NULL;
ALTER TABLE webhooks DROP COLUMN previous_secret;
ALTER TABLE webhooks DROP COLUMN previous_secret_until;
