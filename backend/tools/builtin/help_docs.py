"""`search_help_docs`: ranked keyword search over the markdown help pages bundled in `help_docs/`.

The pages are read once, on the first search, through `importlib.resources` (so they work from a wheel).
Scoring is deliberately simple: term frequency damped by a log, weighted by how rare the term is across
pages, with a boost for terms in the page title.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from pydantic import BaseModel, Field

from backend.tools.base import Tool, ToolContext

_TITLE_BOOST = 3.0
_SNIPPET_CHARS = 240
_TOKEN = re.compile(r"[a-z0-9]+")
# fmt: off
_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how", "i", "in", "is",
    "it", "its", "me", "my", "of", "on", "or", "the", "this", "to", "what", "when", "where", "which", "who", "why",
    "with", "you", "your",
})
# fmt: on


class HelpDocsArgs(BaseModel):
    query: str = Field(min_length=1, max_length=500, description="What to look for, in a few words.")
    limit: int = Field(default=3, ge=1, le=10, description="Most results to return.")


@dataclass(frozen=True)
class _Page:
    title: str
    path: str
    paragraphs: tuple[str, ...]
    terms: Counter[str]
    title_terms: frozenset[str]


class SearchHelpDocs(Tool[HelpDocsArgs]):
    name = "search_help_docs"
    description = (
        "Search the help pages of this copilot service (getting started, sessions, streaming and reconnecting, "
        "tools, configuration). Returns the best matching pages with a snippet."
    )
    args_model = HelpDocsArgs
    timeout_seconds = 5.0

    def __init__(self, directory: Traversable | None = None) -> None:
        """`directory` holds the `*.md` pages; the bundled `help_docs/` by default."""
        self._directory = directory
        self._pages: tuple[_Page, ...] | None = None

    async def execute(self, args: HelpDocsArgs, ctx: ToolContext) -> list[dict[str, Any]]:
        return self.search(args.query, args.limit)

    def search(self, query: str, limit: int = 3) -> list[dict[str, Any]]:
        """The pages matching `query`, best first: `[{title, path, snippet, score}]`."""
        pages = self._load()
        terms = set(tokenize(query))
        if not terms:
            return []
        document_frequency = {term: sum(1 for page in pages if term in page.terms) for term in terms}
        scored = []
        for page in pages:
            score = 0.0
            for term in terms:
                count = page.terms.get(term, 0)
                if not count:
                    continue
                idf = math.log(1 + len(pages) / document_frequency[term])
                boost = _TITLE_BOOST if term in page.title_terms else 0.0
                score += idf * (1 + math.log(count) + boost)
            if score > 0:
                scored.append((score, page))
        scored.sort(key=lambda item: (-item[0], item[1].path))
        return [
            {"title": page.title, "path": page.path, "snippet": _snippet(page, terms), "score": round(score, 3)}
            for score, page in scored[:limit]
        ]

    def _load(self) -> tuple[_Page, ...]:
        if self._pages is None:
            directory = self._directory or resources.files("backend.tools.builtin").joinpath("help_docs")
            files = sorted((f for f in directory.iterdir() if f.name.endswith(".md")), key=lambda f: f.name)
            self._pages = tuple(_parse(f"help_docs/{f.name}", f.read_text(encoding="utf-8")) for f in files)
        return self._pages


def tokenize(text: str) -> list[str]:
    """Lower-cased words without stop words, crudely stemmed so 'reconnecting' finds 'reconnect'."""
    return [_stem(word) for word in _TOKEN.findall(text.lower()) if word not in _STOPWORDS]


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "s"):
        if word.endswith(suffix) and not word.endswith("ss") and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def _parse(path: str, text: str) -> _Page:
    lines = text.splitlines()
    title = next((line[2:].strip() for line in lines if line.startswith("# ")), path)
    paragraphs = tuple(" ".join(block.split()) for block in re.split(r"\n\s*\n", text) if block.strip())
    return _Page(
        title=title,
        path=path,
        paragraphs=paragraphs,
        terms=Counter(tokenize(text)),
        title_terms=frozenset(tokenize(title)),
    )


def _snippet(page: _Page, terms: set[str]) -> str:
    """The paragraph with the most query terms (headings aside), cut around its first match."""

    def hits(paragraph: str) -> int:
        return sum(1 for word in tokenize(paragraph) if word in terms)

    body = [p for p in page.paragraphs if not p.startswith("#")] or list(page.paragraphs)
    if not body:
        return ""
    best = max(body, key=hits)
    if len(best) <= _SNIPPET_CHARS:
        return best
    first = next((m.start() for m in _TOKEN.finditer(best.lower()) if _stem(m.group()) in terms), 0)
    start = max(0, min(first - _SNIPPET_CHARS // 4, len(best) - _SNIPPET_CHARS))
    snippet = best[start : start + _SNIPPET_CHARS]
    return ("…" if start else "") + snippet + ("…" if start + _SNIPPET_CHARS < len(best) else "")
