"""The README's configuration table is generated from `Settings`; this fails when they drift apart."""

from pathlib import Path

from backend.config import settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_config_table_matches_settings() -> None:
    text = README.read_text()
    start, end = text.index("<!-- config:start -->\n"), text.index("\n<!-- config:end -->")
    table = text[start + len("<!-- config:start -->\n") : end]
    assert table == settings_table(), "README config table is stale: regenerate it from backend.config.settings_table()"


def test_readme_names_the_two_setup_commands() -> None:
    text = README.read_text()
    assert "./scripts/serve.sh" in text and "./scripts/test.sh" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
