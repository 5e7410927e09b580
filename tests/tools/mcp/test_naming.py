from __future__ import annotations

import re

from backend.tools.mcp.naming import tool_names

OPENAI_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def test_names_are_namespaced_by_server() -> None:
    assert tool_names("search", ["query", "get-doc"]) == {"query": "search__query", "get-doc": "search__get-doc"}


def test_characters_providers_refuse_become_underscores() -> None:
    assert tool_names("kb", ["docs.search", "a/b c", "é"]) == {
        "docs.search": "kb__docs_search",
        "a/b c": "kb__a_b_c",
        "é": "kb___",
    }


def test_long_names_are_cut_with_a_hash_and_stay_stable_and_distinct() -> None:
    long_a, long_b = "x" * 80 + "a", "x" * 80 + "b"
    names = tool_names("s", [long_a, long_b])
    assert all(OPENAI_NAME.fullmatch(n) for n in names.values())
    assert names[long_a] != names[long_b]
    assert tool_names("s", [long_b]) == {long_b: names[long_b]}  # the same name in every listing


def test_tools_that_sanitise_alike_get_distinct_names() -> None:
    names = tool_names("s", ["a.b", "a_b", "a/b"])
    assert names["a.b"] == "s__a_b"
    assert len(set(names.values())) == 3
    assert all(OPENAI_NAME.fullmatch(n) for n in names.values())
