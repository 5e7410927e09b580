-- A rolling summary per session: the prompt is built from the summary plus the messages after it, so its cost does
-- not grow with the session. live_tokens is the token total of the messages after summary_through, maintained by
-- every append and every summary commit.
ALTER TABLE chat_sessions
    ADD COLUMN summary         text,
    ADD COLUMN summary_tokens  integer NOT NULL DEFAULT 0,
    ADD COLUMN summary_through integer NOT NULL DEFAULT 0,
    ADD COLUMN live_tokens     bigint  NOT NULL DEFAULT 0;
