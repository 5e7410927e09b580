"""The demo model's few plain-word skills: what an unmarked message asks for, and how a tool's result is told back.

With no model configured, `copilot serve` answers with the mock model, and a new user types plain words, not
markers. So an unmarked message that asks for arithmetic calls `calculate`, one that asks the time calls
`get_current_time`, "write a report on X" calls `generate_report`, "ask me something" calls `ask_user` (the panel
shows the question with its choices), "show me markdown" streams a Markdown showcase, and the model answers from the
tool's result once it has run. A skill that needs a tool only fires when the request offers that tool, so title and
summary calls (which offer none) never get a tool call. Anything else gets a short reply that says what the demo
can do. A session title asked of the demo is the start of the user's first message.
"""

from __future__ import annotations

import ast
import json
import re
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any


@dataclass(frozen=True)
class DemoReply:
    """Text to stream, or one tool call to make."""

    text: str = ""
    tool_name: str | None = None
    tool_args: dict[str, Any] = field(default_factory=dict)


SUGGESTIONS = (
    'Try "What is 6*7?", "What time is it in Tokyo?", "Write a report on solar power", "Ask me something" or '
    '"Show me some Markdown".'
)

ASK_QUESTION = "Which would you like to try next?"
ASK_CHOICES = ("What is 6*7?", "What time is it in Tokyo?", "Write a report on solar power")

MARKDOWN_SHOWCASE = """\
## What the panel renders

Replies stream in as **Markdown**: *emphasis*, `inline code`, [links](https://github.com/) and lists.

1. Numbered steps
2. With **bold** words
   - and nested bullets

> A quote, for the important bits.

| Tool | What it does |
|---|---|
| `calculate` | Exact arithmetic |
| `get_current_time` | The time in any time zone |
| `generate_report` | A long-running report |

```python
def answer() -> int:
    return 6 * 7
```

Model and tool text only ever becomes text, never HTML: <b>this</b> stays as typed."""

_TITLE_WORDS = 6
_ARITHMETIC_WORDS = (
    (re.compile(r"\bdivided by\b", re.I), "/"),
    (re.compile(r"\b(?:times|multiplied by)\b", re.I), "*"),
    (re.compile(r"\bplus\b", re.I), "+"),
    (re.compile(r"\bminus\b", re.I), "-"),
    (re.compile(r"(?<=\d)\s*[x\u00d7]\s*(?=\d)"), "*"),
    (re.compile("\u00f7"), "/"),
    (re.compile(r"\^"), "**"),
)
_EXPRESSION = re.compile(r"(?:sqrt|abs|round|min|max|log|sin|cos|pi|\d+(?:\.\d+)?|[-+*/%(),.]|\s)+")
_OPERATOR = re.compile(r"\d\s*(?:\*\*|[-+*/%])\s*[\d(]|(?:sqrt|abs|round|log|sin|cos)\s*\(")
_TIME = re.compile(
    r"\bwhat(?:'s|\s+is)?\s+the\s+(?:time|date)\b|\bwhat\s+time\b|\btime\s+is\s+it\b|\bcurrent\s+(?:time|date)\b"
    r"|\bwhat\s+day\b|\btoday'?s\s+date\b",
    re.I,
)
_PLACE = re.compile(r"\bin\s+([A-Za-z][A-Za-z_ /-]{1,40}?)\s*(?:[?.!,]|$|\bright now\b|\bnow\b)", re.I)
_REPORT = re.compile(
    r"\b(?:write|make|create|generate|draft|prepare)\b(?:\s+\w+){0,3}?\s+report\b"
    r"(?:\s+(?:on|about|of|for|regarding)\s+(?P<topic>.+))?",
    re.I,
)
_MARKDOWN = re.compile(r"\bmarkdown\b|\bformatting\b", re.I)
_ASK = re.compile(r"\bask me\b", re.I)
_GREETING = re.compile(r"^\s*(?:hi|hello|hey|help)[\s!.?]*$|\bwhat can you do\b", re.I)
_OPERATION_STARTED = ("operation_started", "operation_pending", "operation_in_progress")
_OPERATION_NOTE = re.compile(r'^<operation_finished tool="(?P<tool>[^"]+)"')


def title_for(first_message: str) -> str:
    """A session title from the user's first message: its first sentence, at most six words."""
    sentence = re.split(r"(?<=[.!?])\s|\n", first_message.strip(), maxsplit=1)[0]
    words = sentence.rstrip(".!?:;, ").split()[:_TITLE_WORDS]
    title = " ".join(words)
    return title[:1].upper() + title[1:] if title else "New chat"


def reply_to(user_text: str, offered_tools: Iterable[str]) -> DemoReply:
    """What the demo answers to a user message that has no marker."""
    tools = set(offered_tools)
    if "generate_report" in tools and (report := _REPORT.search(user_text)):
        topic = (report["topic"] or "").strip().rstrip(".!?") or "the copilot-chat demo"
        return DemoReply(tool_name="generate_report", tool_args={"topic": topic[:200], "sections": 3})
    if "get_current_time" in tools and _TIME.search(user_text):
        return DemoReply(tool_name="get_current_time", tool_args={"timezone": _zone_named_in(user_text)})
    if "calculate" in tools and (expression := arithmetic_in(user_text)):
        return DemoReply(tool_name="calculate", tool_args={"expression": expression})
    if "ask_user" in tools and _ASK.search(user_text):
        return DemoReply(tool_name="ask_user", tool_args={"question": ASK_QUESTION, "choices": list(ASK_CHOICES)})
    if _MARKDOWN.search(user_text):
        return DemoReply(MARKDOWN_SHOWCASE)
    if _GREETING.search(user_text):
        return DemoReply(
            "Hi! I'm the copilot-chat demo model: no API key needed, and I understand only a few requests. "
            + SUGGESTIONS
        )
    echo = " ".join(user_text.split())
    echo = echo if len(echo) <= 80 else echo[:79] + "…"
    said = f'You said: "{echo}".' if echo else "Your message had no text."
    return DemoReply(
        f"I'm the copilot-chat demo model, so I only understand a few requests. {said} {SUGGESTIONS} "
        "Set OPENAI_API_KEY to talk to a real model."
    )


def arithmetic_in(text: str) -> str | None:
    """The arithmetic expression `text` asks about (`6*7`, `12 times 3`, `sqrt(2)^2`), or None."""
    for pattern, replacement in _ARITHMETIC_WORDS:
        text = pattern.sub(replacement, text)
    for match in _EXPRESSION.finditer(text):
        candidate = match.group().strip().rstrip(".,")
        if not _OPERATOR.search(candidate):
            continue
        try:
            ast.parse(candidate, mode="eval")
        except SyntaxError:
            continue
        return candidate
    return None


def _zone_named_in(text: str) -> str:
    """The IANA zone of a place named after "in" (`in Tokyo` → `Asia/Tokyo`), else UTC."""
    for match in _PLACE.finditer(text):
        zone = _zones_by_place().get(match.group(1).strip().lower().replace(" ", "_"))
        if zone:
            return zone
    return "UTC"


@cache
def _zones_by_place() -> dict[str, str]:
    """Lower-case place names (the last part of a zone name, and the zone name itself) → zone name."""
    by_place: dict[str, str] = {"utc": "UTC", "gmt": "UTC"}
    for zone in sorted(zoneinfo.available_timezones()):
        if zone.startswith(("Etc/", "SystemV/")):
            continue
        by_place.setdefault(zone.lower(), zone)
        by_place.setdefault(zone.rsplit("/", 1)[-1].lower(), zone)
    return by_place


def answer_from_results(messages: list[dict[str, Any]], message_text: Callable[[object], str]) -> str:
    """The reply once the demo's tools have run: each trailing tool result told in a sentence. After a long-running
    operation finished (the prompt ends with its `<operation_finished>` note), its result is told instead."""
    calls = {
        call.get("id"): call.get("function", {})
        for message in messages
        if message.get("role") == "assistant"
        for call in message.get("tool_calls") or []
        if isinstance(call, dict)
    }
    if messages and messages[-1].get("role") == "tool":
        results = []
        for message in reversed(messages):
            if message.get("role") != "tool":
                break
            results.append(message)
        results.reverse()
    else:
        note = _OPERATION_NOTE.match(message_text(messages[-1].get("content")) if messages else "")
        tool = note["tool"] if note else None
        results = [
            m
            for m in messages
            if m.get("role") == "tool" and (tool is None or calls.get(m.get("tool_call_id"), {}).get("name") == tool)
        ][-1:]
    sentences = []
    for result in results:
        call = calls.get(result.get("tool_call_id"), {})
        name = str(call.get("name") or "the tool")
        sentences.append(_tell(name, _arguments(call), _parsed(message_text(result.get("content")))))
    return "\n\n".join(sentences) or "The tools told me nothing."


def _tell(name: str, args: Mapping[str, Any], output: Any) -> str:
    error = output.get("error") if isinstance(output, dict) else None
    if error:
        message = error.get("message") if isinstance(error, dict) else error
        return f"`{name}` failed: {message}"
    if name == "calculate" and isinstance(output, dict) and "result" in output:
        return f"{output.get('expression', args.get('expression', ''))} = **{output['result']}**"
    if name == "get_current_time" and isinstance(output, dict) and "iso" in output:
        moment = datetime.fromisoformat(str(output["iso"]))
        zone = output.get("timezone", "UTC")
        return f"It is **{moment:%H:%M}** on {output.get('weekday', f'{moment:%A}')}, {moment:%-d %B %Y} in {zone}."
    if name == "ask_user":
        answer = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
        return f'You answered "{answer}". Send it as a message and I will do it.'
    if isinstance(output, dict) and output.get("type") in _OPERATION_STARTED:
        topic = args.get("topic", "your topic")
        return (
            f"I started the report on *{topic}*. It is written in the background and appears here when it is done "
            "(a few seconds); you may go on chatting meanwhile."
        )
    if isinstance(output, dict) and output.get("type") == "report":
        sections = output.get("sections") or []
        body = "\n\n".join(
            f"### {s.get('heading', '')}\n\n{s.get('text', '')}" for s in sections if isinstance(s, dict)
        )
        return f"Your report is ready.\n\n## Report: {output.get('topic', '')}\n\n{body}"
    shown = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
    return f"{name} returned: {shown}"


def _arguments(call: Mapping[str, Any]) -> dict[str, Any]:
    parsed = _parsed(str(call.get("arguments") or "{}"))
    return parsed if isinstance(parsed, dict) else {}


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
