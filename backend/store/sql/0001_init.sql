-- Sessions and their append-only messages.
CREATE TABLE chat_sessions (
    id                uuid PRIMARY KEY,
    user_id           text NOT NULL,
    title             text,
    metadata          jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- The last allocated message sequence. Appends lock this row, so sequences are gap-free and unique.
    message_count     integer NOT NULL DEFAULT 0,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX chat_sessions_user_recent_idx ON chat_sessions (user_id, updated_at DESC, id DESC);

CREATE TABLE chat_messages (
    id                uuid PRIMARY KEY,
    session_id        uuid NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    sequence          integer NOT NULL,
    role              text NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    content           text,
    tool_calls        jsonb,
    tool_call_id      text,
    name              text,
    refusal           text,
    client_message_id text,
    token_count       integer NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT chat_messages_session_sequence_key UNIQUE (session_id, sequence),
    CONSTRAINT chat_messages_session_client_id_key UNIQUE (session_id, client_message_id)
);
