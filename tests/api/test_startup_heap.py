"""The cyclic GC and the startup heap: a full collection held the event loop for ~200 ms per pass over the ~250,000
objects startup builds (every stream and every new turn waited), twice in two rounds of 100 streams."""

from __future__ import annotations

import gc

from backend.config import Settings
from tests.conftest import LiveServer


async def test_a_full_collection_leaves_the_startup_heap_alone_while_the_app_serves(settings: Settings) -> None:
    async with LiveServer(settings):
        frozen = gc.get_freeze_count()
        assert frozen > 100_000, frozen  # what startup built, modules and all
        assert len(gc.get_objects(generation=2)) < frozen / 10  # what a full collection still walks
    assert gc.get_freeze_count() == 0  # given back on shutdown: a process that builds apps again keeps none
