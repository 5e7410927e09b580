import gzip
import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.chat import tokens
from backend.chat.tokens import TokenCounter, VocabularyError, encoding_for_model, truncate_middle

REPO_ROOT = Path(tokens.__file__).resolve().parents[2]

# Token ids published by tiktoken's own tests (cl100k_base) and by the OpenAI cookbook "How to count tokens
# with tiktoken" (both encodings).
KNOWN_IDS = [
    ("cl100k_base", "hello world", [15339, 1917]),
    ("o200k_base", "hello world", [24912, 2375]),
    ("cl100k_base", "rer", [38149]),
    ("cl100k_base", "'rer", [2351, 81]),
    ("cl100k_base", "today\n \n", [31213, 27907]),
    ("cl100k_base", "today\n  \n", [31213, 14211]),
    ("cl100k_base", " \x850", [220, 126, 227, 15]),
    ("cl100k_base", "👍", [9468, 239, 235]),
    ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
    ("o200k_base", "tiktoken is great!", [83, 8251, 2488, 382, 2212, 0]),
    ("cl100k_base", "antidisestablishmentarianism", [519, 85342, 34500, 479, 8997, 2191]),
    ("o200k_base", "antidisestablishmentarianism", [493, 129901, 376, 160388, 21203, 2367]),
    ("cl100k_base", "2 + 2 = 4", [17, 489, 220, 17, 284, 220, 19]),
    ("o200k_base", "2 + 2 = 4", [17, 659, 220, 17, 314, 220, 19]),
    ("cl100k_base", "お誕生日おめでとう", [33334, 45918, 243, 21990, 9080, 33334, 62004, 16556, 78699]),
    ("o200k_base", "お誕生日おめでとう", [8930, 9697, 243, 128225, 8930, 17693, 4344, 48669]),
]

# The cookbook's examples, with prompt_tokens as reported by the OpenAI API for gpt-4 and gpt-4o.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for "
        "increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]
COOKBOOK_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_TOOL_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant that can answer to questions about the weather."},
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(("encoding", "text", "ids"), KNOWN_IDS)
def test_encodes_to_published_token_ids(encoding: str, text: str, ids: list[int]) -> None:
    assert tokens.get_encoding(encoding).encode_ordinary(text) == ids


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_hello_world_is_two_tokens(model: str) -> None:
    assert TokenCounter(model).count_text("hello world") == 2


def test_special_tokens_are_registered() -> None:
    cl100k = tokens.get_encoding("cl100k_base")
    assert cl100k.encode("hello <|endoftext|>", allowed_special="all") == [15339, 220, 100257]
    assert cl100k.encode_single_token("<|fim_prefix|>") == 100258
    o200k = tokens.get_encoding("o200k_base")
    assert o200k.eot_token == 199999
    assert o200k.encode_single_token("<|endofprompt|>") == 200018


@pytest.mark.parametrize("name", tokens.ENCODING_NAMES)
def test_constants_match_installed_tiktoken(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our copies of pat_str, special tokens and hashes equal tiktoken's, read with its loader stubbed out."""
    # Imported by name: tiktoken_ext ships no type information.
    openai_public = importlib.import_module("tiktoken_ext.openai_public")
    requested: list[tuple[str, str | None]] = []

    def fake_load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        requested.append((url, expected_hash))
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", fake_load)
    theirs = openai_public.ENCODING_CONSTRUCTORS[name]()
    ours = tokens.get_encoding(name)
    assert ours.name == theirs["name"]
    assert ours._pat_str == theirs["pat_str"]
    assert ours._special_tokens == theirs["special_tokens"]
    assert [expected_hash for _, expected_hash in requested] == [tokens._SPECS[name].sha256]


def test_encoding_is_loaded_once_and_shared() -> None:
    tokens.warm()
    assert tokens.get_encoding("o200k_base") is TokenCounter("gpt-4o").encoding
    assert tokens.get_encoding("cl100k_base") is TokenCounter("gpt-4").encoding


def test_corrupted_vocabulary_is_rejected(tmp_path: Path) -> None:
    contents = bytearray(gzip.decompress((tokens.VOCAB_DIR / "cl100k_base.tiktoken.gz").read_bytes()))
    contents[-2] = ord("8") if contents[-2] != ord("8") else ord("9")  # change the last rank
    corrupted = tmp_path / "cl100k_base.tiktoken.gz"
    corrupted.write_bytes(gzip.compress(bytes(contents)))
    with pytest.raises(VocabularyError, match="sha256"):
        tokens.load_encoding("cl100k_base", corrupted)


def test_missing_or_unknown_vocabulary(tmp_path: Path) -> None:
    with pytest.raises(VocabularyError, match="cannot read"):
        tokens.load_encoding("o200k_base", tmp_path / "absent.gz")
    (tmp_path / "plain.gz").write_bytes(b"not gzip")
    with pytest.raises(VocabularyError, match="cannot read"):
        tokens.load_encoding("o200k_base", tmp_path / "plain.gz")
    with pytest.raises(ValueError, match="unknown encoding"):
        tokens.load_encoding("p50k_base")


def test_vendored_files_load_from_explicit_path() -> None:
    encoding = tokens.load_encoding("cl100k_base", tokens.VOCAB_DIR / "cl100k_base.tiktoken.gz")
    assert encoding.n_vocab == 100277


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
@pytest.mark.parametrize("text", ["<|endoftext|>", "a <|fim_prefix|> b <|endofprompt|> c", "<|start|>user<|message|>"])
def test_special_token_text_counts_as_ordinary_text(model: str, text: str) -> None:
    counter = TokenCounter(model)
    assert counter.count_text(text) == len(counter.encoding.encode(text, disallowed_special=()))
    assert counter.count_text(text) > 1
    assert counter.count_message({"role": "user", "content": text}) > 3


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5.1-codex", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("ft:gpt-4o-mini:acme::abc123", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("openai/gpt-4", "cl100k_base"),
        ("OpenAI/GPT-3.5-Turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("anthropic/claude-sonnet-4.5", "o200k_base"),
        ("meta-llama/llama-3.1-70b-instruct", "o200k_base"),
        ("mock-model", "o200k_base"),
        ("", "o200k_base"),
    ],
)
def test_model_to_encoding(model: str, encoding: str) -> None:
    assert encoding_for_model(model) == encoding
    assert TokenCounter(model).encoding_name == encoding


@pytest.mark.parametrize(("model", "expected"), [("gpt-4", 129), ("gpt-4o", 124)])
def test_messages_match_api_reported_usage(model: str, expected: int) -> None:
    assert TokenCounter(model).count_messages(COOKBOOK_MESSAGES) == expected


@pytest.mark.parametrize(("model", "expected"), [("gpt-4", 105), ("gpt-4o", 101)])
def test_tools_match_api_reported_usage(model: str, expected: int) -> None:
    counter = TokenCounter(model)
    total = counter.count_messages(COOKBOOK_TOOL_MESSAGES) + counter.count_tools(COOKBOOK_TOOLS)
    assert total == expected


def test_count_message_fields() -> None:
    counter = TokenCounter("gpt-4o")
    c = counter.count_text
    assert counter.count_message({"role": "user", "content": "hi there"}) == 3 + c("user") + c("hi there")
    assert (
        counter.count_message({"role": "user", "content": "hi", "name": "ann"})
        == 3 + c("user") + c("hi") + c("ann") + 1
    )
    parts = [{"type": "text", "text": "look at"}, {"type": "image_url", "image_url": {"url": "data:..."}}]
    assert counter.count_message({"role": "user", "content": parts}) == (
        3 + c("user") + c("look at") + tokens.NON_TEXT_PART_TOKENS
    )
    call = {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}
    assistant = {"role": "assistant", "content": None, "tool_calls": [call, call]}
    assert counter.count_message(assistant) == 3 + c("assistant") + 2 * (c("search") + c('{"q": "x"}'))
    tool = {"role": "tool", "tool_call_id": "call_1", "content": "result"}
    assert counter.count_message(tool) == 3 + c("tool") + c("call_1") + c("result")
    assert counter.count_messages([]) == 3
    assert counter.count_messages([tool, tool]) == 2 * counter.count_message(tool) + 3


def test_count_cached_memoizes_stable_text() -> None:
    counter = TokenCounter("gpt-4o")
    prompt = "You are a careful assistant. " * 500
    assert counter.count_cached(prompt) == counter.count_text(prompt)
    hits = tokens._count_text_memo.cache_info().hits
    assert counter.count_cached("".join(["You are a careful assistant. "] * 500)) == counter.count_text(prompt)
    assert tokens._count_text_memo.cache_info().hits == hits + 1
    # Memo entries are per encoding.
    assert TokenCounter("gpt-4").count_cached(prompt) == TokenCounter("gpt-4").count_text(prompt)


def test_count_tools() -> None:
    counter = TokenCounter("gpt-4o")
    assert counter.count_tools([]) == 0
    bare = [COOKBOOK_TOOLS[0]["function"]]
    assert counter.count_tools(bare) == counter.count_tools(COOKBOOK_TOOLS)
    nested = json.loads(json.dumps(COOKBOOK_TOOLS))
    nested[0]["function"]["parameters"]["properties"]["days"] = {
        "type": "array",
        "description": "Days to forecast",
        "items": {"type": "object", "properties": {"date": {"type": "string", "format": "date"}}},
    }
    assert counter.count_tools(nested) > counter.count_tools(COOKBOOK_TOOLS) + counter.count_text("date")
    no_params = [{"type": "function", "function": {"name": "now"}}]
    assert counter.count_tools(no_params) == 12 + 7 + counter.count_text("now:")
    hits = tokens._count_tools_memo.cache_info().hits
    counter.count_tools(json.loads(json.dumps(COOKBOOK_TOOLS)))
    assert tokens._count_tools_memo.cache_info().hits == hits + 1


def test_truncate_middle_keeps_head_and_tail() -> None:
    counter = TokenCounter("gpt-4o")
    text = "".join(f"line {i:05d}: some tool output\n" for i in range(5000))
    result = truncate_middle(text, 200, counter)
    assert counter.count_text(result) <= 200
    assert result.startswith("line 00000: some tool output\nline 00001")
    assert result.endswith("line 04999: some tool output\n")
    head, marker, tail = result.partition("\n…[")
    assert marker
    omitted = int(tail.split(" tokens omitted]…\n")[0])
    assert counter.count_text(head) + omitted + counter.count_text(tail) > counter.count_text(text) - 10


def test_truncate_middle_leaves_short_text_alone() -> None:
    counter = TokenCounter("gpt-4o")
    assert truncate_middle("hello world", 2, counter) == "hello world"
    assert truncate_middle("hello world", 0, counter) == ""
    assert truncate_middle("", 5, counter) == ""


def test_truncate_middle_with_a_tiny_budget_keeps_only_a_head() -> None:
    counter = TokenCounter("gpt-4o")
    text = "alpha beta gamma delta " * 100
    result = truncate_middle(text, 3, counter)
    assert result == "alpha beta gamma"


@settings(max_examples=200, deadline=None)
@given(text=st.text(min_size=0, max_size=400), max_tokens=st.integers(min_value=0, max_value=60))
def test_truncate_middle_never_exceeds_the_budget(text: str, max_tokens: int) -> None:
    counter = TokenCounter("gpt-4o")
    result = truncate_middle(text, max_tokens, counter)
    assert counter.count_text(result) <= max_tokens


def test_loading_never_touches_the_network(tmp_path: Path) -> None:
    """In a fresh interpreter with sockets blocked and an empty tiktoken cache, both encodings still load.

    The same interpreter then asks stock tiktoken for an encoding, which must fail: that proves the guard
    would have caught a download.
    """
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    script = textwrap.dedent(
        """
        import json, os, socket

        attempts = []

        def blocked(*args, **kwargs):
            attempts.append(repr(args[1:2]))
            raise OSError("network disabled by test")

        socket.socket.connect = blocked
        socket.socket.connect_ex = blocked
        socket.create_connection = blocked
        socket.getaddrinfo = blocked

        from tiktoken import registry
        from backend.chat import tokens

        tokens.warm()
        counts = {m: tokens.TokenCounter(m).count_text("hello world") for m in ("gpt-4o", "gpt-4")}
        ours = {"counts": counts, "attempts": list(attempts), "registry": sorted(registry.ENCODINGS)}
        try:
            registry.get_encoding("cl100k_base")
            stock = "loaded"
        except Exception as e:
            stock = type(e).__name__
        print(json.dumps({**ours, "stock": stock, "stock_attempts": len(attempts),
                          "cache": os.listdir(os.environ["TIKTOKEN_CACHE_DIR"])}))
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "TIKTOKEN_CACHE_DIR": str(cache),
        "DATA_GYM_CACHE_DIR": str(cache),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["counts"] == {"gpt-4o": 2, "gpt-4": 2}
    assert report["attempts"] == []
    assert report["registry"] == []  # tiktoken's own registry was never consulted
    assert report["stock"] != "loaded"
    assert report["stock_attempts"] > 0
    assert report["cache"] == []
