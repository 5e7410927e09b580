-- What must survive a Redis flush is anchored here (Redis stays the fast path in front of it).
--
-- The session's active turn: an opaque id and the deadline of its owner's lease. It is claimed in the transaction
-- that stores the user message (compare-and-set: only when free or when the lease lapsed), renewed by the owner,
-- and cleared by the turn's end or by whoever reaps a turn whose owner died.
ALTER TABLE chat_sessions
    ADD COLUMN active_turn_id    text,
    ADD COLUMN active_turn_until timestamptz;

-- Finding the turns whose owner stopped renewing is a range query over the few sessions that have one.
CREATE INDEX chat_sessions_active_turn_until_idx ON chat_sessions (active_turn_until)
    WHERE active_turn_until IS NOT NULL;

-- Long-running operations. An operation is open (pending or completing) until settled_at is set. lock_until is the
-- lease of the "one operation per session, tool and arguments" lock: renewed while the work runs, cleared when the
-- operation settles; the partial unique index below is that lock.
CREATE TABLE chat_operations (
    id               text PRIMARY KEY,
    session_id       uuid NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    user_id          text NOT NULL,
    tool_call_id     text NOT NULL,
    tool_name        text NOT NULL,
    arguments_digest text NOT NULL,
    task_id          text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'completing', 'completed', 'failed')),
    claimed_at       timestamptz,
    deadline         timestamptz NOT NULL,
    lock_until       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    settled_at       timestamptz
);

CREATE UNIQUE INDEX chat_operations_lock_key ON chat_operations (session_id, tool_name, arguments_digest)
    WHERE lock_until IS NOT NULL;
CREATE INDEX chat_operations_open_deadline_idx ON chat_operations (deadline) WHERE settled_at IS NULL;
