-- MCP servers a session's owner added (docs/mcp.md, "Servers of a session"): streamable HTTP only. The headers
-- (tokens, API keys) are stored encrypted with COPILOT_MCP_HEADERS_KEY; the API never returns them.
CREATE TABLE chat_session_mcp_servers (
    session_id uuid        NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    name       text        NOT NULL,
    url        text        NOT NULL,
    headers    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, name)
);
