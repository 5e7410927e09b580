-- A key per message a turn writes (`<turn id>:<step>:<index>`): a step whose append is retried (its commit's reply
-- was lost, or it was kept in Redis while Postgres was down and stored later, perhaps by another pod) finds its key
-- and is not stored twice. NULL for user messages (they have client_message_id) and rows written before this.
ALTER TABLE chat_messages ADD COLUMN write_key text;

CREATE UNIQUE INDEX chat_messages_session_write_key_key ON chat_messages (session_id, write_key);
