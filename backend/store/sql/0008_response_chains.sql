-- The last Responses API response of each session (COPILOT_RESPONSES_STATE=server, docs/providers.md): the next
-- model call sends only the input items after `covered` with `previous_response_id`, when the first `covered` items
-- of its input still hash to `digest` (a compaction, a changed system prompt: the full input again).
CREATE TABLE chat_response_chains (
    session_id  uuid        PRIMARY KEY REFERENCES chat_sessions (id) ON DELETE CASCADE,
    response_id text        NOT NULL,
    covered     integer     NOT NULL,
    digest      text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
