-- Tool calls that wait for a person: a frontend tool the browser runs, a question to the user (`ask_user`), a call
-- that needs the user's approval. The step that made the call stores, as the call's tool message, a placeholder that
-- already reads "not answered" to the model, so the history is valid whatever happens next; `awaiting` says what
-- kind of answer it waits for (it stays set: the record of what the call was) and `awaiting_state` where it stands:
-- waiting → answered | failed (an output or an error came back) | approved (the continuation runs the tool) |
-- denied | expired | unanswered (the user sent a new message instead). NULL on every other message.
ALTER TABLE chat_messages
    ADD COLUMN awaiting       text CHECK (awaiting IN ('frontend', 'ask_user', 'approval')),
    ADD COLUMN awaiting_state text CHECK (
        awaiting_state IN ('waiting', 'approved', 'answered', 'failed', 'denied', 'expired', 'unanswered')
    );

-- The open calls of a session (and, across sessions, those to expire) are the few rows of this index.
CREATE INDEX chat_messages_awaiting_idx ON chat_messages (session_id) WHERE awaiting_state IN ('waiting', 'approved');

-- The frontend tools the host app declared last for a session ([{name, description, inputSchema}]): a continuation
-- started by an answer that does not repeat them (the REST endpoints, the WebSocket) still offers them to the model.
ALTER TABLE chat_sessions ADD COLUMN frontend_tools jsonb;
