"""Tools from Model Context Protocol servers, as plain registry tools (docs/mcp.md)."""
