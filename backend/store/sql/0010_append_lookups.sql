-- `copilot_append_messages` (0009) looked up the rows an append's client ids, write keys and sequences name with
-- joins the planner ran as one scan of the whole session (its generic plan guesses two rows per session), filtered
-- in memory: three scans per append, ~0.9 ms at 2,000 messages and growing with every message, while the session's
-- row is locked. Each lookup is now a lateral subquery with LIMIT, which is not flattened into a join: one probe of
-- the unique index on (session_id, client_message_id), (session_id, write_key) or (session_id, sequence) per message.
-- Same signature, same results.
CREATE OR REPLACE FUNCTION copilot_append_messages(
    p_session           uuid,
    p_role              text[],
    p_content           text[],
    p_tool_calls        text[],  -- JSON text: a list of lists would read as a two-dimensional array
    p_tool_call_id      text[],
    p_name              text[],
    p_refusal           text[],
    p_client_message_id text[],
    p_token_count       integer[],
    p_write_key         text[],
    p_reasoning         text[],
    p_model             text[],
    p_usage             text[],  -- JSON text
    p_awaiting          text[],
    p_prompt_tokens     bigint,
    p_completion_tokens bigint,
    p_claim_turn        text,    -- NULL: no claim
    p_claim_seconds     float8,
    p_settle_awaiting   boolean,
    p_release_turn      text     -- NULL, or a turn whose claim to free if it holds the session (its last append)
) RETURNS TABLE (
    kind                text,
    found_client        boolean,
    found_key           boolean,
    settled             bigint,
    -- the session (kind 'session')
    s_id                uuid,
    s_user_id           text,
    s_title             text,
    s_metadata          jsonb,
    s_message_count     integer,
    s_prompt_tokens     bigint,
    s_completion_tokens bigint,
    s_created_at        timestamptz,
    s_updated_at        timestamptz,
    s_summary           text,
    s_summary_tokens    integer,
    s_summary_through   integer,
    s_live_tokens       bigint,
    -- a message (kind 'message')
    m_id                uuid,
    m_session_id        uuid,
    m_sequence          integer,
    m_role              text,
    m_content           text,
    m_tool_calls        jsonb,
    m_tool_call_id      text,
    m_name              text,
    m_refusal           text,
    m_client_message_id text,
    m_token_count       integer,
    m_created_at        timestamptz,
    m_reasoning         text,
    m_model             text,
    m_usage             jsonb,
    m_awaiting          text,
    m_awaiting_state    text
)
LANGUAGE plpgsql AS $$
DECLARE
    v_holder       text;
    v_holder_live  boolean;
    v_last         integer;
    v_seq          integer[];
    v_client       boolean[];
    v_key          boolean[];
    v_fresh        integer;
    v_fresh_tokens bigint;
    v_repeated     boolean;
    v_wrote        boolean;
BEGIN
    -- The row lock serialises the appends to this session: the reads below cannot race an insert.
    SELECT s.id, s.user_id, s.title, s.metadata, s.message_count, s.prompt_tokens, s.completion_tokens, s.created_at,
           s.updated_at, s.summary, s.summary_tokens, s.summary_through, s.live_tokens, s.active_turn_id,
           s.active_turn_until > now()
      INTO s_id, s_user_id, s_title, s_metadata, s_message_count, s_prompt_tokens, s_completion_tokens, s_created_at,
           s_updated_at, s_summary, s_summary_tokens, s_summary_through, s_live_tokens, v_holder, v_holder_live
      FROM chat_sessions s WHERE s.id = p_session FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'session % does not exist', p_session USING ERRCODE = 'CP001';
    END IF;
    IF p_claim_turn IS NOT NULL AND v_holder IS NOT NULL AND v_holder_live THEN
        RAISE EXCEPTION 'the session''s active turn is held' USING ERRCODE = 'CP002', DETAIL = v_holder;
    END IF;
    v_last := s_message_count;

    -- Per message: the stored row its client id or write key matches, else the next free sequence (a new row).
    SELECT coalesce(array_agg(c.seq ORDER BY c.ord), '{}'), coalesce(array_agg(c.client ORDER BY c.ord), '{}'),
           coalesce(array_agg(c.key ORDER BY c.ord), '{}'), count(*) FILTER (WHERE c.fresh),
           coalesce(sum(c.tokens) FILTER (WHERE c.fresh), 0), coalesce(bool_or(c.key), false)
      INTO v_seq, v_client, v_key, v_fresh, v_fresh_tokens, v_repeated
      FROM (
          SELECT u.ord, d.sequence IS NOT NULL AS client, r.sequence IS NOT NULL AS key,
                 d.sequence IS NULL AND r.sequence IS NULL AS fresh, u.tokens,
                 coalesce(d.sequence, r.sequence,
                          v_last + count(*) FILTER (WHERE d.sequence IS NULL AND r.sequence IS NULL)
                                   OVER (ORDER BY u.ord)) AS seq
            FROM unnest(p_client_message_id, p_write_key, p_token_count) WITH ORDINALITY AS u(cid, wkey, tokens, ord)
            -- Each a lookup of one row by its unique key (LIMIT keeps the planner from joining the whole session).
            LEFT JOIN LATERAL (
                SELECT m.sequence FROM chat_messages m
                 WHERE m.session_id = p_session AND m.client_message_id = u.cid LIMIT 1
            ) d ON true
            LEFT JOIN LATERAL (
                SELECT m.sequence FROM chat_messages m WHERE m.session_id = p_session AND m.write_key = u.wkey LIMIT 1
            ) r ON true
      ) c;

    IF v_fresh > 0 THEN
        INSERT INTO chat_messages (
            id, session_id, sequence, role, content, tool_calls, tool_call_id, name, refusal, client_message_id,
            token_count, write_key, reasoning, model, usage, awaiting, awaiting_state
        )
        SELECT gen_random_uuid(), p_session, u.seq, u.role, u.content, u.tool_calls::jsonb, u.tool_call_id, u.name,
               u.refusal, u.client_message_id, u.token_count, u.write_key, u.reasoning, u.model, u.usage::jsonb,
               u.awaiting, CASE WHEN u.awaiting IS NULL THEN NULL ELSE 'waiting' END
          FROM unnest(v_seq, v_client, v_key, p_role, p_content, p_tool_calls, p_tool_call_id, p_name, p_refusal,
                      p_client_message_id, p_token_count, p_write_key, p_reasoning, p_model, p_usage, p_awaiting)
               AS u(seq, client, key, role, content, tool_calls, tool_call_id, name, refusal, client_message_id,
                    token_count, write_key, reasoning, model, usage, awaiting)
         WHERE NOT u.client AND NOT u.key
         ORDER BY u.seq;
    END IF;

    -- The messages as stored (before the waiting calls are settled below), in the order given.
    RETURN QUERY
        SELECT 'message'::text, u.client, u.key, NULL::bigint,
               NULL::uuid, NULL::text, NULL::text, NULL::jsonb, NULL::integer, NULL::bigint, NULL::bigint,
               NULL::timestamptz, NULL::timestamptz, NULL::text, NULL::integer, NULL::integer, NULL::bigint,
               m.id, m.session_id, m.sequence, m.role, m.content, m.tool_calls, m.tool_call_id, m.name, m.refusal,
               m.client_message_id, m.token_count, m.created_at, m.reasoning, m.model, m.usage, m.awaiting,
               m.awaiting_state
          FROM unnest(v_seq, v_client, v_key) WITH ORDINALITY AS u(seq, client, key, ord)
          JOIN LATERAL (
              SELECT * FROM chat_messages x WHERE x.session_id = p_session AND x.sequence = u.seq LIMIT 1
          ) m ON true
         ORDER BY u.ord;

    IF v_repeated THEN
        -- An earlier attempt of this append committed: it added the usage.
        p_prompt_tokens := 0;
        p_completion_tokens := 0;
    END IF;
    v_wrote := v_fresh > 0 OR p_prompt_tokens <> 0 OR p_completion_tokens <> 0;
    settled := 0;
    IF v_wrote OR p_claim_turn IS NOT NULL OR v_holder = p_release_turn THEN
        WITH closed AS (
            UPDATE chat_messages SET awaiting_state = 'unanswered'
             WHERE p_settle_awaiting AND v_fresh > 0 AND session_id = p_session
               AND awaiting_state IN ('waiting', 'approved')
            RETURNING 1
        )
        UPDATE chat_sessions s
           SET message_count = v_last + v_fresh,
               prompt_tokens = s.prompt_tokens + p_prompt_tokens,
               completion_tokens = s.completion_tokens + p_completion_tokens,
               live_tokens = s.live_tokens + v_fresh_tokens,
               updated_at = CASE WHEN v_wrote THEN now() ELSE s.updated_at END,
               active_turn_id = CASE WHEN s.active_turn_id = p_release_turn THEN NULL
                                     ELSE coalesce(p_claim_turn, s.active_turn_id) END,
               active_turn_until = CASE WHEN s.active_turn_id = p_release_turn THEN NULL
                                        ELSE coalesce(now() + make_interval(secs => p_claim_seconds),
                                                      s.active_turn_until) END
         WHERE s.id = p_session
        RETURNING s.id, s.user_id, s.title, s.metadata, s.message_count, s.prompt_tokens, s.completion_tokens,
                  s.created_at, s.updated_at, s.summary, s.summary_tokens, s.summary_through, s.live_tokens,
                  (SELECT count(*) FROM closed)
             INTO s_id, s_user_id, s_title, s_metadata, s_message_count, s_prompt_tokens, s_completion_tokens,
                  s_created_at, s_updated_at, s_summary, s_summary_tokens, s_summary_through, s_live_tokens,
                  settled;
    END IF;
    kind := 'session';
    found_client := NULL;
    found_key := NULL;
    RETURN NEXT;
END;
$$;
