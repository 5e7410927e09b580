"""The one validation layer for what comes in: annotated types used by every body, frame, parameter and header.

A value that passes these types can be written to Postgres and used in a Redis key without the database being
the first to object (which answered 500, or aborted a stream after its 200). Why each rule exists:

- NUL (U+0000): Postgres refuses it in `text` and `jsonb`, so it is refused in every string that is stored, used
  as a key, or put in a prompt. So is a lone surrogate (`"\\ud800"` is valid JSON but not UTF-8): pydantic's
  `str` refuses it, free-form metadata is checked here.
- Ids: a useChat message id becomes the `client_message_id`, a btree-indexed column (rows above ~2.7 KB fail);
  every id is at most `ID_MAX_CHARS`.
- Session metadata is jsonb and rides along with every cached session row: at most `METADATA_MAX_BYTES`
  serialised, `METADATA_MAX_DEPTH` levels, integers within ±2^53 (what a JavaScript client reads back exactly;
  beyond 64 bits the JSON encoder failed) and finite floats (NaN would have been stored as null).
- Paging: message sequences are Postgres `integer`s (`PG_INT_MAX`).
- Stream cursors are Redis stream ids, two unsigned 64-bit integers; XREAD refused larger ones mid-stream.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, StringConstraints

ID_MAX_CHARS = 200
TITLE_MAX_CHARS = 200
PG_INT_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1
JSON_SAFE_INT = 2**53
METADATA_MAX_BYTES = 16 * 1024
METADATA_MAX_DEPTH = 8


def no_nul(value: str) -> str:
    """`value` unchanged; `ValueError` if it holds a NUL character."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


Text = Annotated[str, AfterValidator(no_nul)]
"""Any text that is stored or shown to the model: NUL-free (lengths are set where it is used)."""

ClientId = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX_CHARS), AfterValidator(no_nul)]
"""An id a client chooses (`client_message_id`): 1 to `ID_MAX_CHARS` characters, NUL-free."""

OptionalId = Annotated[str, StringConstraints(max_length=ID_MAX_CHARS), AfterValidator(no_nul)]
"""An id a client may leave empty (useChat's chat and message ids): at most `ID_MAX_CHARS`, NUL-free."""

Title = Annotated[str, StringConstraints(max_length=TITLE_MAX_CHARS), AfterValidator(no_nul)]


def check_stream_cursor(value: str) -> str:
    """A `<ms>-<seq>` stream id whose parts each fit in an unsigned 64-bit integer."""
    ms, _, seq = value.partition("-")
    if int(ms) > UINT64_MAX or int(seq) > UINT64_MAX:
        raise ValueError(f"each part of a stream cursor must be at most {UINT64_MAX}")
    return value


StreamCursor = Annotated[str, StringConstraints(pattern=r"^\d{1,20}-\d{1,20}$"), AfterValidator(check_stream_cursor)]
"""The `id` of a stream frame (`Last-Event-ID`, `?after=`, a WebSocket `resume`): `<ms>-<seq>`, both ≤ 2^64-1."""


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """`value` unchanged if it is plain JSON within the metadata bounds; `ValueError` naming where it is not."""
    _check_json(value, "metadata", 1)
    size = len(orjson.dumps(value))
    if size > METADATA_MAX_BYTES:
        raise ValueError(f"is {size} bytes as JSON; at most {METADATA_MAX_BYTES}")
    return value


def _check_json(value: Any, path: str, depth: int, *, max_depth: int = METADATA_MAX_DEPTH) -> None:
    if isinstance(value, dict | list) and depth > max_depth:
        raise ValueError(f"{path} nests deeper than {max_depth} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _text_problem(key) if isinstance(key, str) else "is not a string"
            if problem:
                raise ValueError(f"a key in {path} {problem}")
            _check_json(item, f"{path}.{key[:40]}", depth + 1, max_depth=max_depth)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]", depth + 1, max_depth=max_depth)
    elif isinstance(value, str):
        if problem := _text_problem(value):
            raise ValueError(f"{path} {problem}")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not -JSON_SAFE_INT <= value <= JSON_SAFE_INT:
            raise ValueError(f"{path} is outside ±2^53")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path} is not a finite number")
    else:
        raise ValueError(f"{path} is not JSON")


def _text_problem(value: str) -> str | None:
    # Typed fields get this from pydantic's `str`; free-form JSON (`Any`) keeps what the JSON parser made.
    if "\x00" in value:
        return "must not contain NUL (\\u0000) characters"
    try:
        value.encode()
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    return None


Metadata = Annotated[dict[str, Any], AfterValidator(check_metadata)]
"""Free-form JSON of the host app, bounded in bytes, depth and number range, NUL-free in keys and values."""


TOOL_OUTPUT_MAX_BYTES = 1024 * 1024
TOOL_OUTPUT_MAX_DEPTH = 32


def check_tool_output(value: Any) -> Any:
    """`value` unchanged if it is plain JSON of at most `TOOL_OUTPUT_MAX_BYTES` (a frontend tool's output or an
    answer, stored as the call's result); `ValueError` naming where it is not."""
    _check_json(value, "output", 1, max_depth=TOOL_OUTPUT_MAX_DEPTH)
    size = len(orjson.dumps(value))
    if size > TOOL_OUTPUT_MAX_BYTES:
        raise ValueError(f"is {size} bytes as JSON; at most {TOOL_OUTPUT_MAX_BYTES}")
    return value


ToolOutputValue = Annotated[Any, AfterValidator(check_tool_output)]
"""What a browser sends back as a tool's result: any JSON, bounded, NUL-free and valid Unicode."""
