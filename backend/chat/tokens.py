"""Offline token counting: tiktoken encodings built from vocabularies vendored in `chat/vocab/`.

tiktoken normally downloads its BPE rank files on first use. This module never does: it reads the gzipped
rank files shipped with the package, checks them against the sha256 that tiktoken itself pins, and builds the
`tiktoken.Encoding` directly. The pattern strings and special tokens below are copied from tiktoken's
`tiktoken_ext/openai_public.py` (tiktoken 0.14), whose loader functions would fetch from the network.

Counts are estimates of what a provider will bill. Callers that need precision calibrate against the
provider's reported `usage.prompt_tokens` (see the compression design); this module stays deterministic.
"""

from __future__ import annotations

import binascii
import functools
import gzip
import hashlib
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiktoken

VOCAB_DIR = Path(__file__).with_name("vocab")
"""Where the gzipped `<name>.tiktoken.gz` rank files live."""


class VocabularyError(RuntimeError):
    """A vendored vocabulary file is missing, corrupt or unparsable: a broken install, not a bad request."""


@dataclass(frozen=True, slots=True)
class _EncodingSpec:
    name: str
    sha256: str
    """sha256 of the *decompressed* rank file, as pinned by tiktoken (`expected_hash`)."""
    pat_str: str
    special_tokens: Mapping[str, int]


_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"

_O200K_PAT_STR = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_CL100K_PAT_STR = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|"""
    r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

_SPECS: dict[str, _EncodingSpec] = {
    "o200k_base": _EncodingSpec(
        name="o200k_base",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str=_O200K_PAT_STR,
        special_tokens={_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
    "cl100k_base": _EncodingSpec(
        name="cl100k_base",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=_CL100K_PAT_STR,
        special_tokens={
            _ENDOFTEXT: 100257,
            _FIM_PREFIX: 100258,
            _FIM_MIDDLE: 100259,
            _FIM_SUFFIX: 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
}

ENCODING_NAMES: tuple[str, ...] = tuple(_SPECS)
"""Encodings this module can build offline."""

DEFAULT_ENCODING = "o200k_base"
"""Used for every model we cannot map. Every current OpenAI model uses o200k_base, and there is no offline
tokenizer for Claude, Llama, Gemini or the mock model; a modern 200k vocabulary is the closest generic
stand-in, and the systematic error is what calibration against provider usage corrects."""

# First matching prefix wins, so the o200k families must precede the bare "gpt-4" prefix.
_MODEL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("gpt-oss", "o200k_base"),  # o200k_harmony: same ranks, extra special tokens only
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),  # Azure spelling
    ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"),
)


def encoding_for_model(model: str) -> str:
    """Name of the encoding to count `model`'s tokens with.

    Provider prefixes (`openai/gpt-4o`, as OpenRouter spells it) and the fine-tune prefix
    (`ft:gpt-4o-mini:...`) are stripped before matching. Unknown models get `DEFAULT_ENCODING`.
    """
    name = model.strip().lower().rsplit("/", 1)[-1].removeprefix("ft:")
    for prefix, encoding in _MODEL_PREFIXES:
        if name.startswith(prefix):
            return encoding
    return DEFAULT_ENCODING


def load_encoding(name: str, path: Path | None = None) -> tiktoken.Encoding:
    """Build encoding `name` from its vendored rank file (or from `path`), without touching the network.

    Not cached: each call reads, verifies and parses the file (a fraction of a second). Use `get_encoding`.
    Raises `VocabularyError` if the file is missing, fails the sha256 check or cannot be parsed.
    """
    try:
        spec = _SPECS[name]
    except KeyError:
        raise ValueError(f"unknown encoding {name!r}; expected one of {ENCODING_NAMES}") from None
    if path is None:
        path = VOCAB_DIR / f"{name}.tiktoken.gz"
    try:
        contents = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise VocabularyError(f"cannot read vocabulary {path}: {e}") from e
    digest = hashlib.sha256(contents).hexdigest()
    if digest != spec.sha256:
        raise VocabularyError(f"vocabulary {path} has sha256 {digest}, expected {spec.sha256} for {name}")
    return tiktoken.Encoding(
        name=spec.name,
        pat_str=spec.pat_str,
        mergeable_ranks=_parse_ranks(contents, path),
        special_tokens=dict(spec.special_tokens),
    )


def _parse_ranks(contents: bytes, path: Path) -> dict[bytes, int]:
    # The .tiktoken format is one `<base64 token> <rank>` pair per line. The sha256 check has already vouched
    # for the content, so parse in bulk rather than line by line (about 40% faster).
    fields = contents.split()
    try:
        return dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]), strict=True))
    except ValueError as e:  # binascii.Error is a ValueError
        raise VocabularyError(f"malformed vocabulary {path}: {e}") from e


_load_lock = threading.Lock()


@functools.cache
def _cached_encoding(name: str) -> tiktoken.Encoding:
    return load_encoding(name)


def get_encoding(name: str) -> tiktoken.Encoding:
    """The process-wide encoding `name`, loaded on first use.

    The lock makes concurrent first calls load the file once instead of racing to build two copies.
    """
    with _load_lock:
        return _cached_encoding(name)


def warm(models: Iterable[str] = ()) -> None:
    """Load the encodings for `models` (every known encoding if none are given) ahead of the first request.

    Loading blocks for a fraction of a second per encoding; call this at startup, off the event loop
    (`await asyncio.to_thread(warm, [model])`).
    """
    names = {encoding_for_model(m) for m in models} or set(ENCODING_NAMES)
    for name in sorted(names):
        get_encoding(name)


TOKENS_PER_MESSAGE = 3
"""Framing around each chat message (`<|start|>{role}<|message|>...<|end|>`), per OpenAI's cookbook."""

TOKENS_PER_NAME = 1
"""Extra cost of a message's `name` field, on top of the name's own tokens."""

REPLY_PRIMING_TOKENS = 3
"""Every prompt ends primed with `<|start|>assistant<|message|>`; counted once by `count_messages`."""

NON_TEXT_PART_TOKENS = 85
"""Flat estimate for a content part without text (image, audio, file): the cost of a low-detail image."""

# Tool-definition overheads from the OpenAI cookbook ("Counting tokens for chat completions with tool
# calls"), whose totals match API-reported usage for gpt-4o and gpt-4. Only the per-function cost differs
# between encodings.
_TOOL_FUNC_INIT = {"o200k_base": 7, "cl100k_base": 10}
_TOOL_PROP_INIT = 3
_TOOL_PROP_KEY = 3
_TOOL_ENUM_INIT = -3
_TOOL_ENUM_ITEM = 3
_TOOL_FUNC_END = 12
_PLAIN_SCHEMA_KEYS = frozenset({"type", "description", "enum"})


class TokenCounter:
    """Counts tokens as `model` sees them. Cheap to construct: the encoding is shared by the process."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.encoding_name = encoding_for_model(model)
        self.encoding = get_encoding(self.encoding_name)

    def __repr__(self) -> str:
        return f"TokenCounter(model={self.model!r}, encoding={self.encoding_name!r})"

    def count_text(self, text: str) -> int:
        """Tokens in `text`. Special-token strings like `<|endoftext|>` count as plain text, never raise."""
        return len(self.encoding.encode_ordinary(text))

    def count_cached(self, text: str) -> int:
        """`count_text` through a small process-wide memo, for long strings that are counted again and again.

        Meant for the system prompt and similar per-version constants: a hit costs one hash and one string
        compare instead of re-tokenising. Don't use it for per-message text; it would only evict the entries
        worth keeping.
        """
        return _count_text_memo(self.encoding_name, text)

    def count_message(self, message: Mapping[str, Any]) -> int:
        """Tokens one OpenAI-format chat message adds to a prompt, framing included.

        Counts `role`, `content` (a string, or a list of parts whose `text` is counted; parts without text
        cost `NON_TEXT_PART_TOKENS`), `name` (+`TOKENS_PER_NAME`), each tool call's function name and
        arguments, and `tool_call_id`. The framing of individual tool calls is not published; it is left to
        calibration.
        """
        tokens = TOKENS_PER_MESSAGE + self.count_text(str(message.get("role", "")))
        content = message.get("content")
        if isinstance(content, str):
            tokens += self.count_text(content)
        elif isinstance(content, Sequence):
            for part in content:
                text = part.get("text") if isinstance(part, Mapping) else None
                tokens += self.count_text(text) if isinstance(text, str) else NON_TEXT_PART_TOKENS
        name = message.get("name")
        if isinstance(name, str):
            tokens += self.count_text(name) + TOKENS_PER_NAME
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            tokens += self.count_text(str(function.get("name", "")))
            tokens += self.count_text(str(function.get("arguments", "")))
        tool_call_id = message.get("tool_call_id")
        if isinstance(tool_call_id, str):
            tokens += self.count_text(tool_call_id)
        return tokens

    def count_messages(self, messages: Iterable[Mapping[str, Any]]) -> int:
        """Tokens of a whole prompt: every message plus the reply priming (`REPLY_PRIMING_TOKENS`)."""
        return sum(self.count_message(m) for m in messages) + REPLY_PRIMING_TOKENS

    def count_tools(self, tools: Sequence[Mapping[str, Any]]) -> int:
        """Approximate tokens the tool definitions add to a prompt. Memoized on the tools' JSON.

        Follows the OpenAI cookbook's method, which matches API-reported usage for flat schemas: per function
        its name and description, per top-level property its name, type, description and enum values, plus
        fixed overheads. Nested schema (`items`, `properties`, `anyOf`, defaults, ...) is counted as its
        compact JSON, an overestimate of how the provider renders it. Accepts `{"type": "function",
        "function": {...}}` entries and bare function objects.
        """
        if not tools:
            return 0
        key = json.dumps(tools, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return _count_tools_memo(self.encoding_name, key)


@functools.lru_cache(maxsize=64)
def _count_text_memo(encoding_name: str, text: str) -> int:
    return len(get_encoding(encoding_name).encode_ordinary(text))


@functools.lru_cache(maxsize=32)
def _count_tools_memo(encoding_name: str, tools_json: str) -> int:
    encoding = get_encoding(encoding_name)
    tools: list[Mapping[str, Any]] = json.loads(tools_json)
    tokens = _TOOL_FUNC_END
    for tool in tools:
        function: Mapping[str, Any] = tool.get("function", tool)
        description = str(function.get("description", "")).removesuffix(".")
        tokens += _TOOL_FUNC_INIT[encoding_name]
        tokens += len(encoding.encode_ordinary(f"{function.get('name', '')}:{description}"))
        properties: Mapping[str, Any] = (function.get("parameters") or {}).get("properties") or {}
        if properties:
            tokens += _TOOL_PROP_INIT
        for prop_name, schema in properties.items():
            tokens += _TOOL_PROP_KEY + _count_property(encoding, prop_name, schema)
    return tokens


def _count_property(encoding: tiktoken.Encoding, prop_name: str, schema: Mapping[str, Any]) -> int:
    tokens = 0
    enum = schema.get("enum")
    if isinstance(enum, list):
        tokens += _TOOL_ENUM_INIT
        tokens += sum(_TOOL_ENUM_ITEM + len(encoding.encode_ordinary(str(item))) for item in enum)
    prop_type = schema.get("type", "")
    if isinstance(prop_type, list):
        prop_type = " | ".join(map(str, prop_type))
    description = str(schema.get("description", "")).removesuffix(".")
    tokens += len(encoding.encode_ordinary(f"{prop_name}:{prop_type}:{description}"))
    nested = {k: v for k, v in schema.items() if k not in _PLAIN_SCHEMA_KEYS}
    if nested:
        tokens += len(encoding.encode_ordinary(json.dumps(nested, separators=(",", ":"), ensure_ascii=False)))
    return tokens


def truncate_middle(text: str, max_tokens: int, counter: TokenCounter) -> str:
    """`text` cut to at most `max_tokens` tokens by dropping its middle, e.g. to cap an oversized tool output.

    The head and tail are kept (the head gets the odd token) and joined by a marker,
    `\\n…[N tokens omitted]…\\n`, which counts against the budget. Text already within budget is returned
    unchanged. If the budget is too small even for the marker, only a head is kept.
    """
    if max_tokens <= 0:
        return ""
    encoding = counter.encoding
    tokens = encoding.encode_ordinary(text)
    if len(tokens) <= max_tokens:
        return text
    # The marker's own cost is known only once the omitted count is; the worst case (everything omitted)
    # has the most digits. Re-tokenising at the joins can shift the total by a token or two, so check and
    # shrink until the result fits.
    budget = max_tokens - counter.count_text(_omission_marker(len(tokens)))
    while budget > 0:
        head_len = budget - budget // 2
        tail_len = budget // 2
        head = encoding.decode_bytes(tokens[:head_len]).decode("utf-8", errors="ignore")
        tail = encoding.decode_bytes(tokens[len(tokens) - tail_len :]).decode("utf-8", errors="ignore")
        result = head + _omission_marker(len(tokens) - head_len - tail_len) + tail
        overshoot = counter.count_text(result) - max_tokens
        if overshoot <= 0:
            return result
        budget -= overshoot
    while max_tokens > 0:
        head = encoding.decode_bytes(tokens[:max_tokens]).decode("utf-8", errors="ignore")
        if counter.count_text(head) <= max_tokens:
            return head
        max_tokens -= 1
    return ""


def _omission_marker(omitted: int) -> str:
    return f"\n…[{omitted} tokens omitted]…\n"
