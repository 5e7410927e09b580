import math
import time
import uuid
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from backend.tools.base import ToolContext, run_tool
from backend.tools.builtin import builtin_tools
from backend.tools.builtin.calculator import Calculate, evaluate
from backend.tools.builtin.clock import GetCurrentTime
from backend.tools.builtin.help_docs import SearchHelpDocs, tokenize

CTX = ToolContext(user_id="u1", session_id=uuid.uuid4(), tool_call_id="call_1", is_authenticated=False)


# --- schemas -----------------------------------------------------------------------------------------------

EXPECTED_PARAMETERS = {
    "get_current_time": ({"timezone"}, set()),
    "calculate": ({"expression"}, {"expression"}),
    "search_help_docs": ({"query", "limit"}, {"query"}),
    "generate_report": ({"topic", "sections"}, {"topic"}),
    "ask_user": ({"question", "choices"}, {"question"}),
}


def test_builtin_tools_and_their_schemas() -> None:
    tools = builtin_tools()
    assert [tool.name for tool in tools] == list(EXPECTED_PARAMETERS)
    for tool in tools:
        schema = tool.schema()
        assert schema["type"] == "function"
        function = schema["function"]
        assert function["name"] == tool.name
        assert len(function["description"]) > 20
        params = function["parameters"]
        assert params["type"] == "object"
        assert "$defs" not in params and "title" not in params
        properties, required = EXPECTED_PARAMETERS[tool.name]
        assert set(params["properties"]) == properties
        assert set(params.get("required", [])) == required
        assert all(prop.get("description") for prop in params["properties"].values())
        assert not tool.requires_auth
        assert tool.is_long_running == (tool.name == "generate_report")
        assert tool.answered_by_user == (tool.name == "ask_user")  # never run on the server
        assert not tool.requires_approval


def test_help_docs_limit_bounds_are_in_the_schema() -> None:
    limit = SearchHelpDocs().schema()["function"]["parameters"]["properties"]["limit"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 10, 3)


# --- clock -------------------------------------------------------------------------------------------------

FIXED = datetime(2024, 7, 1, 12, 30, tzinfo=UTC)  # a Monday


async def test_clock_in_a_zone() -> None:
    outcome = await run_tool(GetCurrentTime(lambda: FIXED), "get_current_time", '{"timezone": "Europe/Paris"}', CTX)
    assert outcome.ok
    assert outcome.output == {
        "iso": "2024-07-01T14:30:00+02:00",
        "weekday": "Monday",
        "timezone": "Europe/Paris",
        "utc_offset": "+0200",
    }


async def test_clock_defaults_to_utc() -> None:
    outcome = await run_tool(GetCurrentTime(lambda: FIXED), "get_current_time", "{}", CTX)
    assert outcome.output["iso"] == "2024-07-01T12:30:00+00:00"
    assert outcome.output["timezone"] == "UTC"


async def test_clock_zone_names_are_case_insensitive() -> None:
    outcome = await run_tool(GetCurrentTime(lambda: FIXED), "get_current_time", '{"timezone": "america/new_york"}', CTX)
    assert outcome.output["timezone"] == "America/New_York"
    assert outcome.output["iso"] == "2024-07-01T08:30:00-04:00"


async def test_clock_real_time_is_now() -> None:
    outcome = await run_tool(GetCurrentTime(), "get_current_time", '{"timezone": "Asia/Tokyo"}', CTX)
    reported = datetime.fromisoformat(outcome.output["iso"])
    assert abs((reported - datetime.now(UTC)).total_seconds()) < 5


@pytest.mark.parametrize("zone", ["Europe/Pariss", "Mars/Olympus", "../../etc/passwd", "/etc/localtime", ""])
async def test_clock_unknown_zone_is_a_helpful_tool_error(zone: str) -> None:
    outcome = await run_tool(GetCurrentTime(), "get_current_time", {"timezone": zone}, CTX)
    assert not outcome.ok
    assert outcome.output["error"]["type"] == "tool_error"
    assert "IANA name such as" in outcome.output["error"]["message"]


async def test_clock_suggests_a_close_zone() -> None:
    outcome = await run_tool(GetCurrentTime(), "get_current_time", {"timezone": "Europe/Pariss"}, CTX)
    assert "Did you mean 'Europe/Paris'" in outcome.output["error"]["message"]


# --- calculator --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 % 3", 2),
        ("2 ** 10", 1024),
        ("2 ** -1", 0.5),
        ("-(-3)", 3),
        ("+4", 4),
        ("sqrt(16) + abs(-2)", 6.0),
        ("round(2.567, 2)", 2.57),
        ("round(2.5)", 2),
        ("min(3, 1, 2) + max(4, 5)", 6),
        ("log(e)", 1.0),
        ("log(8, 2)", 3.0),
        ("sin(0) + cos(0)", 1.0),
        ("2 * pi", 2 * math.pi),
        ("1.5e3 + 0.25", 1500.25),
        ("10 ** 300", 10**300),
    ],
)
def test_calculator_is_correct(expression: str, expected: float) -> None:
    assert evaluate(expression) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os')", "Unknown function '__import__'"),
        ("__import__('os').system('true')", "Only these functions can be called"),
        ("(1).__class__", "Unsupported syntax: Attribute"),
        ("().__class__.__bases__[0].__subclasses__()", "Only these functions can be called"),
        ("(1).__class__.__name__", "Unsupported syntax: Attribute"),
        ("[1][0]", "Unsupported syntax: Subscript"),
        ("open('/etc/passwd')", "Unknown function 'open'"),
        ("x + 1", "Unknown name 'x'"),
        ("os", "Unknown name 'os'"),
        ("sqrt", "sqrt is a function"),
        ("'a' * 3", "Only numbers are allowed"),
        ("True + 1", "Only numbers are allowed"),
        ("1j * 2", "Only numbers are allowed"),
        ("[1, 2]", "Unsupported syntax: List"),
        ("lambda: 1", "Unsupported syntax: Lambda"),
        ("1 < 2", "Unsupported syntax: Compare"),
        ("1 << 3", "Unsupported operator: LShift"),
        ("~1", "Unsupported operator: Invert"),
        ("max(*[1, 2])", "Unsupported syntax: Starred"),
        ("abs(x=1)", "takes no keyword arguments"),
        ("sqrt(1, 2)", "sqrt() takes 1 argument(s), got 2"),
        ("min()", "min() takes at least 1 argument(s)"),
        ("1 +", "Invalid expression"),
        ("import os", "Invalid expression"),
        ("1 / 0", "Division by zero"),
        ("5 // 0", "Division by zero"),
        ("5 % 0", "Division by zero"),
        ("0 ** -1", "Division by zero"),
        ("sqrt(-1)", "sqrt() is not defined for -1"),
        ("log(0)", "log() is not defined for 0"),
        ("(-8) ** (1 / 3)", "complex number"),
        ("round(1.5, 1000)", "round() digits"),
    ],
)
def test_calculator_refuses(expression: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        evaluate(expression)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "expression",
    ["9 ** 9 ** 9", "2 ** 100000000", "10 ** 301", "0.5 ** -10000", "1e308 * 10", "1e999", "(10 ** 200) * (10 ** 200)"],
)
def test_calculator_refuses_huge_results_quickly(expression: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ValueError, match="Result too large"):
        evaluate(expression)
    assert time.perf_counter() - started < 0.5


def test_calculator_tiny_powers_are_fine() -> None:
    assert evaluate("2 ** -100000") == 0.0
    assert evaluate("1 ** 100000000") == 1


async def test_calculator_through_run_tool() -> None:
    outcome = await run_tool(Calculate(), "calculate", '{"expression": "6 * 7"}', CTX)
    assert outcome.output == {"expression": "6 * 7", "result": 42}

    failed = await run_tool(Calculate(), "calculate", '{"expression": "1/0"}', CTX)
    assert failed.output["error"] == {"type": "tool_error", "message": "Division by zero."}


async def test_calculator_expression_length_is_capped() -> None:
    outcome = await run_tool(Calculate(), "calculate", {"expression": "1+" * 100 + "1"}, CTX)
    assert outcome.output["error"]["type"] == "invalid_arguments"
    assert "at most 200 characters" in outcome.output["error"]["message"]


# --- help docs ---------------------------------------------------------------------------------------------


async def test_help_docs_reconnect_finds_the_streaming_doc() -> None:
    outcome = await run_tool(SearchHelpDocs(), "search_help_docs", '{"query": "reconnect"}', CTX)
    assert outcome.ok
    results = outcome.output
    assert results[0]["path"] == "help_docs/streaming.md"
    assert results[0]["title"] == "Streaming answers and reconnecting"
    assert "reconnect" in results[0]["snippet"].lower() or "resume" in results[0]["snippet"].lower()
    assert set(results[0]) == {"title", "path", "snippet", "score"}
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("how do I delete a session", "help_docs/sessions.md"),
        ("OPENAI_BASE_URL environment variable", "help_docs/configuration.md"),
        ("add my own tool", "help_docs/tools.md"),
        ("run it locally with --dev", "help_docs/getting-started.md"),
    ],
)
def test_help_docs_ranks_the_right_page_first(query: str, path: str) -> None:
    assert SearchHelpDocs().search(query)[0]["path"] == path


def test_help_docs_limit_and_no_match() -> None:
    tool = SearchHelpDocs()
    assert len(tool.search("the copilot", limit=1)) == 1
    assert len(tool.search("session stream tool configuration", limit=10)) == 5
    assert tool.search("xylophone") == []
    assert tool.search("the of and") == []


@pytest.mark.parametrize("arguments", ['{"query": "x", "limit": 0}', '{"query": "x", "limit": 11}', '{"query": ""}'])
async def test_help_docs_argument_bounds(arguments: str) -> None:
    outcome = await run_tool(SearchHelpDocs(), "search_help_docs", arguments, CTX)
    assert outcome.output["error"]["type"] == "invalid_arguments"


def test_help_docs_title_boost(tmp_path: Path) -> None:
    (tmp_path / "billing.md").write_text("# Billing\n\nInvoices are sent monthly.\n")
    (tmp_path / "faq.md").write_text("# FAQ\n\nQuestions about billing and more billing.\n")
    (tmp_path / "notes.txt").write_text("billing billing billing")  # not markdown: ignored
    results = SearchHelpDocs(tmp_path).search("billing", limit=10)
    assert [r["path"] for r in results] == ["help_docs/billing.md", "help_docs/faq.md"]


def test_help_docs_snippet_is_cut_around_the_match(tmp_path: Path) -> None:
    filler = "words " * 100
    (tmp_path / "long.md").write_text(f"# Long\n\n{filler}the needle is here {filler}\n")
    [result] = SearchHelpDocs(tmp_path).search("needle")
    assert "needle" in result["snippet"]
    assert result["snippet"].startswith("…") and result["snippet"].endswith("…")
    assert len(result["snippet"]) <= 242


def test_help_docs_are_loaded_once(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Alpha\n\nfirst\n")
    tool = SearchHelpDocs(tmp_path)
    assert tool.search("alpha")
    (tmp_path / "b.md").write_text("# Beta\n\nsecond\n")
    assert tool.search("beta") == []


def test_tokenize_stems_simple_suffixes() -> None:
    assert tokenize("Reconnecting streams") == tokenize("reconnect stream")
    assert tokenize("How do I reconnect?") == ["reconnect"]


def bundled_docs() -> list[Any]:
    directory = resources.files("backend.tools.builtin").joinpath("help_docs")
    return sorted((f for f in directory.iterdir() if f.name.endswith(".md")), key=lambda f: f.name)


def test_bundled_docs_are_short_and_titled() -> None:
    docs = bundled_docs()
    assert len(docs) == 5
    for doc in docs:
        text = doc.read_text(encoding="utf-8")
        assert text.startswith("# ")
        assert len(text.splitlines()) <= 60
