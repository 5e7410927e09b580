"""The README's shell blocks do what the README says: each curl block runs, in order and in one shell, against a live
server as `./scripts/serve.sh` starts it (the demo model, development auth, the report worker in process), and
prints the lines of the `text output` block that follows it (`…` stands for any text, lines match in order).

Every `bash` block of the README is either run here or listed in `NOT_RUN` with the reason, so a new block cannot
slip past this test unnoticed."""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from backend.config import Settings
from tests.conftest import LiveServer

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```$", re.M | re.S)
_END = "@@readme-block-end@@"

NOT_RUN = {
    "./scripts/serve.sh": "starts the server these blocks talk to, and test.sh runs this suite (tests/test_scripts.py)",
    "docker compose up -d": "no Docker engine in the tests; tests/test_compose.py checks the compose file",
}
"""Blocks recognised by a command they hold, which this test does not run, and why."""


@dataclass
class Block:
    commands: str
    expected: list[str]
    """The lines of the `text output` block after it (none: the block's output is not described)."""


def readme_blocks() -> tuple[list[Block], list[str]]:
    """The `bash` blocks to run (with their described output), and those not run."""
    run: list[Block] = []
    skipped: list[str] = []
    for match in _BLOCK.finditer(README.read_text()):
        info, body = match["info"].split(), match["body"]
        if info[:1] == ["bash"]:
            if any(command in body for command in NOT_RUN):
                skipped.append(body)
            else:
                run.append(Block(body, []))
        elif info == ["text", "output"]:
            assert run and not run[-1].expected, "a `text output` block must follow the bash block it describes"
            run[-1].expected = [line for line in body.splitlines() if line.strip()]
    return run, skipped


def line_pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*?".join(re.escape(part) for part in expected.split("…")))


def missing_lines(expected: list[str], output: str) -> list[str]:
    """The expected lines not found, in order, among the output's lines (each must match a whole line)."""
    lines = [line.strip() for line in output.splitlines()]
    position, missing = 0, []
    for want in expected:
        pattern = line_pattern(want.strip())
        found = next((i for i in range(position, len(lines)) if pattern.fullmatch(lines[i])), None)
        if found is None:
            missing.append(want)
        else:
            position = found + 1
    return missing


def test_every_bash_block_is_run_or_excused() -> None:
    run, skipped = readme_blocks()
    assert len(skipped) == len(NOT_RUN), "each excused command should excuse exactly one block"
    assert run and all(block.expected for block in run), "every block that is run says what it prints"
    assert any("/stream" in block.commands for block in run)


def test_the_matcher_matches_in_order_and_whole_lines() -> None:
    output = 'data: {"a":1}\nid: 5\n\ndata: {"b":2}\n'
    assert missing_lines(['data: {"a":…}', 'data: {"b":2}'], output) == []
    assert missing_lines(['data: {"b":2}', 'data: {"a":1}'], output) == ['data: {"a":1}']
    assert missing_lines(['{"b":2}'], output) == ['{"b":2}']


@pytest.mark.slow
async def test_the_curl_walkthrough_prints_what_the_readme_says(settings: Settings) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    blocks, _ = readme_blocks()
    # As `./scripts/serve.sh` runs it: no model configured (the demo), development auth.
    demo = settings.model_copy(update={"dev_auth": True})
    async with LiveServer(demo) as live:
        address = live.url.removeprefix("http://")
        script = "".join(
            f"{block.commands.replace('localhost:8000', address)}\nprintf '\\n{_END}\\n'\n" for block in blocks
        )
        shell = await asyncio.create_subprocess_exec(
            "bash", "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(120):
            stdout, stderr = await shell.communicate()
    assert shell.returncode == 0, stderr.decode()
    outputs = stdout.decode().split(_END)
    assert len(outputs) == len(blocks) + 1, stdout.decode()
    for block, output in zip(blocks, outputs, strict=False):
        assert missing_lines(block.expected, output) == [], f"README block:\n{block.commands}\nprinted:\n{output}"
