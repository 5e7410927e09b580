"""docs/api.md against the service: every row of its table of example requests is sent to a live server (with the
mock model) and must answer the documented status and code, and every status the examples use must be one the
error table documents with that code. A change of behaviour or of the page without the other fails here."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, auth

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
EXAMPLES_HEADER = "| Caller | Request | Body | Status | Code |"


@dataclass(frozen=True)
class Example:
    caller: str
    method: str
    path: str
    body: str
    status: int
    code: str

    def __str__(self) -> str:
        return f"{self.caller}: {self.method} {self.path} {self.body[:60]}"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _unquote(cell: str) -> str:
    return cell[1:-1] if len(cell) >= 2 and cell[0] == cell[-1] == "`" else cell


def documented_examples() -> list[Example]:
    lines = API_DOC.read_text().splitlines()
    start = lines.index(EXAMPLES_HEADER) + 2
    examples = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        caller, request, body, status, code = _cells(line)
        method, path = _unquote(request).split(" ", 1)
        examples.append(Example(caller, method, path, _unquote(body), int(status), _unquote(code)))
    return examples


def documented_errors() -> set[tuple[int, str]]:
    """(status, code) of each row of the Errors table."""
    text = API_DOC.read_text()
    table = text[text.index("| Status | Code | When |") :].split("\n\n", 1)[0]
    return {(int(m[0]), m[1]) for m in re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", table, flags=re.M)}


EXAMPLES = documented_examples()


def test_the_page_has_examples_of_every_cheap_error() -> None:
    # 409, 429 and 503 need a running turn, a spent limit or a broken server: tested in their own files.
    assert {e.status for e in EXAMPLES} >= {400, 401, 403, 404, 413, 422, 431}
    errors = documented_errors()
    for e in EXAMPLES:
        if e.status >= 400:
            assert (e.status, e.code) in errors, f"{e} answers a status the error table does not list"


@pytest.mark.parametrize("example", EXAMPLES, ids=str)
async def test_documented_answer(example: Example, chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, server = chat
    alice, bob = auth("alice"), auth("bob")
    made = await client.post("/api/chat/sessions", json={}, headers=alice)
    assert made.status_code == 201, made.text
    path = example.path.replace("{id}", made.json()["id"]).replace("{missing}", str(uuid.uuid4()))

    headers: dict[str, str] = {}
    if example.caller.startswith("alice"):
        headers = dict(alice)
    elif example.caller == "bob":
        headers = dict(bob)
    elif example.caller == "bad token":
        headers = {"Authorization": "Bearer not.a.token"}
    else:
        assert example.caller == "no token", f"unknown caller {example.caller!r} in docs/api.md"
    if example.caller.endswith("20 KB of headers"):
        headers["x-padding"] = "a" * 20_000

    content: bytes | None = None
    if example.body.startswith("over "):
        limit = server.app.state.runtime.settings.max_body_bytes
        content = json.dumps({"message": "a" * (limit + 1)}).encode()
    elif example.body:
        json.loads(example.body)  # the page shows valid JSON
        content = example.body.encode()
    if content is not None:
        headers["content-type"] = "application/json"

    r = await client.request(example.method, path, content=content, headers=headers)
    assert r.status_code == example.status, f"{example}: {r.status_code} {r.text[:300]}"
    if example.code:
        assert r.json()["error"]["code"] == example.code, r.text[:300]


def test_each_refused_trigger_is_described_under_the_status_it_gets() -> None:
    """The error table's `When` column names `trigger` only in the row of the status a refused trigger answers."""
    text = API_DOC.read_text()
    table = text[text.index("| Status | Code | When |") :].split("\n\n", 1)[0]
    rows = {int(m[0]): m[1] for m in re.findall(r"^\| (\d{3}) \| `[a-z_]+` \| (.*) \|$", table, flags=re.M)}
    statuses = {e.status for e in EXAMPLES if '"trigger": "regenerate-message"' in e.body}
    assert statuses, "docs/api.md has no example of a refused trigger"
    assert {status for status, when in rows.items() if "`trigger`" in when} == statuses
